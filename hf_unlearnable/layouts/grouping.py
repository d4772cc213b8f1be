"""`group_captions` / `ungroup_captions`: one row per caption <-> one row per image, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import datasets

from ..checks import check_column, check_is_dataset
from .common import (
    LIST_TYPES,
    arrow_chunks,
    column_values,
    feature_name,
    image_key,
    is_string,
    is_string_list,
    list_feature,
    same_value,
)

# --------------------------------------------------------------------------------------------------
# group / ungroup
# --------------------------------------------------------------------------------------------------


def group_captions(
    ds: datasets.Dataset,
    image_id_column: str,
    caption_column: str,
    image_column: str = "image",
    *,
    per_caption_columns: Iterable[str] = (),
    row_numbers_column: str | None = None,
    check_images: bool = True,
    max_images: int | None = None,
) -> datasets.Dataset:
    """One row per caption (COCO style) -> one row per image with a list of captions.

    Images appear in the order of their id's first row; each list keeps its captions in row order.
    Every other column is taken from the first row of the image's group and must be the same in
    all of them (a ValueError names the image id and column otherwise). Columns that do differ per
    caption (a caption's own id, say) go in ``per_caption_columns`` and become lists like the
    captions. ``row_numbers_column`` adds a list of each caption's original row number, so
    `ungroup_captions` can restore the exact original order. ``check_images`` compares the stored
    image bytes within each group too (one pass over the image column, nothing decoded).
    ``max_images`` keeps only the first images (a quick trial run); only their rows are read.

    Works on indices: the id column is read alone, then ``ds.select(first rows)``.
    """
    check_is_dataset(ds)
    check_column(ds, image_id_column, "image_id_column")
    check_column(ds, caption_column, "caption_column")
    per_caption = list(dict.fromkeys(per_caption_columns))
    for column in per_caption:
        check_column(ds, column, "per_caption_columns")
    if image_id_column in per_caption or caption_column in per_caption:
        raise ValueError("per_caption_columns must not name the image id or caption column.")
    if not is_string(ds.features[caption_column]):
        hint = (
            " It already holds a list per row: no grouping needed."
            if is_string_list(ds.features[caption_column])
            else ""
        )
        raise ValueError(
            f"group_captions needs one caption string per row; column {caption_column!r} holds "
            f"{feature_name(ds.features[caption_column])}.{hint}"
        )
    if row_numbers_column is not None and row_numbers_column in ds.column_names:
        raise ValueError(
            f"row_numbers_column={row_numbers_column!r} is already a column of the data set; pick another name."
        )
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ValueError(f"max_images must be a non-negative integer or None, got {max_images!r}.")

    groups: dict[Any, list[int]] = {}
    for row, value in enumerate(column_values(ds, image_id_column)):
        if value is None:
            raise ValueError(
                f"Image id column {image_id_column!r} is empty (null) at row {row}; fill or drop that row."
            )
        rows = groups.get(value)
        if rows is None:
            if max_images is not None and len(groups) >= max_images:
                continue
            groups[value] = rows = []
        rows.append(row)
    group_rows = list(groups.values())
    ids = list(groups)
    kept_rows = sorted(row for rows in group_rows for row in rows)
    group_of = {row: index for index, rows in enumerate(group_rows) for row in rows}

    # Read the kept rows once, column by column group: captions and per-caption values into lists,
    # shared columns compared with the group's first row.
    shared = [c for c in ds.column_names if c not in (caption_column, image_id_column, *per_caption)]
    if not check_images and image_column in shared:
        shared.remove(image_column)
    collected = {name: [[] for _ in group_rows] for name in (caption_column, *per_caption)}
    first_values: list[dict[str, Any] | None] = [None] * len(group_rows)
    subset = ds.select(kept_rows) if len(kept_rows) < len(ds) else ds
    read = [caption_column, *per_caption, *shared]
    for start, chunk in arrow_chunks(subset, read):
        for offset in range(len(chunk[caption_column])):
            row = kept_rows[start + offset]
            group = group_of[row]
            for name in collected:
                collected[name][group].append(chunk[name][offset])
            values = {
                name: (image_key(chunk[name][offset]) if name == image_column else chunk[name][offset])
                for name in shared
            }
            if first_values[group] is None:
                first_values[group] = values
                continue
            for name in shared:
                if not same_value(first_values[group][name], values[name]):
                    what = "image" if name == image_column else "value"
                    raise ValueError(
                        f"Rows {group_rows[group][0]} and {row} share {image_id_column}={ids[group]!r} but differ in "
                        f"column {name!r} (a different {what}), so they cannot become one row. If {name!r} is per "
                        f"caption, pass per_caption_columns=[{name!r}] (recipe: --per-caption-columns {name}); if it "
                        f"does not matter, drop it (ds.remove_columns); else {image_id_column!r} does not identify "
                        "the image: choose another image_id_column (--image-id-column)."
                    )

    grouped = ds.select([rows[0] for rows in group_rows])
    columns = list(ds.column_names)
    for name in collected:
        feature = list_feature(ds.features[name])
        grouped = grouped.remove_columns(name).add_column(name, collected[name], feature=feature)
    if row_numbers_column is not None:
        grouped = grouped.add_column(row_numbers_column, group_rows, feature=list_feature(datasets.Value("int64")))
        columns.append(row_numbers_column)
    return grouped.select_columns(columns)


def ungroup_captions(
    grouped: datasets.Dataset,
    caption_column: str,
    *,
    per_caption_columns: Iterable[str] = (),
    row_numbers_column: str | None = None,
) -> datasets.Dataset:
    """One row per image with a list of captions -> one row per caption (the inverse of `group_captions`).

    Rows come image by image, captions in list order, every other column repeated; with
    ``row_numbers_column`` (as given to `group_captions`) they come back in their original order
    and that column is dropped. ``per_caption_columns`` are unfolded alongside the captions.
    """
    check_is_dataset(grouped, "grouped")
    check_column(grouped, caption_column, "caption_column", "grouped")
    per_caption = list(dict.fromkeys(per_caption_columns))
    for column in per_caption:
        check_column(grouped, column, "per_caption_columns", "grouped")
    if row_numbers_column is not None:
        check_column(grouped, row_numbers_column, "row_numbers_column", "grouped")
    unfold = [caption_column, *per_caption] + ([row_numbers_column] if row_numbers_column else [])
    for name in unfold:
        if not isinstance(grouped.features[name], LIST_TYPES):
            raise ValueError(
                f"ungroup_captions needs a list per row in column {name!r}; it holds {feature_name(grouped.features[name])}."
            )

    source_rows: list[int] = []
    flat: dict[str, list] = {name: [] for name in unfold}
    for start, chunk in arrow_chunks(grouped, unfold):
        for offset, captions in enumerate(chunk[caption_column]):
            row = start + offset
            count = len(captions or [])
            for name in unfold:
                values = chunk[name][offset] or []
                if len(values) != count:
                    raise ValueError(
                        f"Row {row}: column {name!r} has {len(values)} values but {caption_column!r} has {count} "
                        "captions; per-caption columns must match the captions one to one."
                    )
                flat[name].extend(values)
            source_rows.extend([row] * count)

    order = list(range(len(source_rows)))
    if row_numbers_column is not None:
        numbers = flat.pop(row_numbers_column)
        if len(set(numbers)) != len(numbers):
            raise ValueError(
                f"Column {row_numbers_column!r} repeats a row number; it is not what group_captions wrote."
            )
        order.sort(key=numbers.__getitem__)
    columns = [name for name in grouped.column_names if name != row_numbers_column]
    result = grouped.select([source_rows[i] for i in order])
    for name in (caption_column, *per_caption):
        feature = grouped.features[name].feature
        result = result.remove_columns(name).add_column(name, [flat[name][i] for i in order], feature=feature)
    return result.select_columns(columns)
