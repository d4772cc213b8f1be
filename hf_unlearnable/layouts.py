"""Image-caption layouts found on the Hub, turned into what `ProtectTransform` takes.

`ProtectTransform` wants one row per image: an image column and a caption column holding one string
or a list of strings. Hub data sets come in two shapes:

- one row per image, captions in a list (Flickr30K copies: ``caption`` = 5 strings; COCO
  Karpathy copies: ``sentences``/``captions`` lists) - use as is;
- one row per caption, the image repeated and an id column saying which rows share an image
  (COCO captions: ``image_id``, ``caption``) - `group_captions` folds them into one row per
  image, `ungroup_captions` unfolds the protected copy back.

    layout = detect_layout(ds)                      # {"image_column", "caption_column", "group_by"}
    if layout["group_by"]:
        ds = group_captions(ds, layout["group_by"], layout["caption_column"], layout["image_column"])

Both functions work on row indices and read only the columns they need, chunk by chunk, so a data
set larger than memory stays on disk.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import datasets

from .checks import check_column, check_is_dataset

__all__ = [
    "CAPTION_COLUMN_NAMES", "IMAGE_ID_COLUMN_NAMES", "detect_layout", "group_captions", "merge_caption_columns",
    "ungroup_captions",
]

# Caption column names seen on the Hub, most specific first.
CAPTION_COLUMN_NAMES = ("caption", "captions", "sentences", "sentences_raw", "raw", "text")
# Columns that say which per-caption rows share an image, most specific first ("id" is last: in
# COCO-style per-caption data it is often the caption's own id, unique per row, so it only counts
# when its values repeat).
IMAGE_ID_COLUMN_NAMES = ("image_id", "cocoid", "imgid", "img_id", "filename", "file_name", "filepath", "id")

_CHUNK = 1024
# One caption per column: caption_0 ... caption_4 (some Flickr8K copies), sentence1 ..., text_2 ...
_NUMBERED_CAPTION = re.compile(r"^(caption|captions|sentence|sentences|text|raw)_?\d+$")
_LIST_TYPES = tuple(t for t in (getattr(datasets, "List", None), datasets.Sequence, getattr(datasets, "LargeList", None)) if t)


def _list_feature(inner: Any) -> Any:
    return datasets.List(inner) if hasattr(datasets, "List") else datasets.Sequence(inner)


def _is_string(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_string_list(feature: Any) -> bool:
    return isinstance(feature, _LIST_TYPES) and _is_string(feature.feature)


def _describe(ds: datasets.Dataset) -> str:
    return ", ".join(f"{name} ({_feature_name(feature)})" for name, feature in ds.features.items())


def _feature_name(feature: Any) -> str:
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, _LIST_TYPES):
        return f"list of {_feature_name(feature.feature)}"
    if isinstance(feature, dict):
        return "struct"
    return type(feature).__name__


def _arrow_chunks(ds: datasets.Dataset, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, list]]]:
    """(first row, {column: python values}) for `columns`, _CHUNK rows at a time, images undecoded."""
    view = ds.select_columns(list(columns)).with_format("arrow")
    for start in range(0, len(view), _CHUNK):
        table = view[start : start + _CHUNK]
        yield start, {name: table.column(name).to_pylist() for name in columns}


def _column_values(ds: datasets.Dataset, column: str) -> list:
    values: list = []
    for _, chunk in _arrow_chunks(ds, [column]):
        values.extend(chunk[column])
    return values


def _image_key(value: Any) -> Any:
    """What identifies a stored image: a hash of its bytes, else its path."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return hashlib.blake2b(value["bytes"], digest_size=16).digest()
        return value.get("path")
    return value


def _same(first: Any, other: Any) -> bool:
    if first == other:
        return True
    return isinstance(first, float) and isinstance(other, float) and math.isnan(first) and math.isnan(other)


# --------------------------------------------------------------------------------------------------
# detect_layout
# --------------------------------------------------------------------------------------------------


def detect_layout(
    ds: datasets.Dataset,
    image_column: str | None = None,
    caption_column: str | None = None,
    image_id_column: str | None = None,
) -> dict[str, str | None]:
    """Guess ``{"image_column", "caption_column", "group_by"}`` for `ProtectTransform`.

    - image column: the given one, else the first `datasets.Image` feature;
    - caption column: the given one, else the one column among `CAPTION_COLUMN_NAMES` holding
      strings or lists of strings;
    - group_by: the given ``image_id_column``; else None when captions are lists (one row per
      image); else the first of `IMAGE_ID_COLUMN_NAMES` whose values repeat (one row per
      caption, read from that column only); else None (one caption per image).

    Raises ValueError listing the columns, and the argument to pass, when it cannot tell.
    """
    check_is_dataset(ds)
    if image_column is not None:
        check_column(ds, image_column, "image_column (--image-column)")
    else:
        images = [name for name, feature in ds.features.items() if isinstance(feature, datasets.Image)]
        if not images:
            raise ValueError(
                f"No image column found: no column has the datasets.Image feature. Columns: {_describe(ds)}. "
                "Pass image_column= (recipe: --image-column NAME) naming the column that holds the images; a data "
                "set that only has URLs or file names (e.g. a Karpathy-split COCO index) must first be joined with "
                "the images and cast with ds.cast_column(NAME, datasets.Image())."
            )
        image_column = images[0]

    if caption_column is not None:
        check_column(ds, caption_column, "caption_column (--caption-column)")
        feature = ds.features[caption_column]
        if not (_is_string(feature) or _is_string_list(feature)):
            raise ValueError(_caption_type_message(caption_column, feature, ds))
    else:
        caption_column = _guess_caption_column(ds, exclude={image_column})

    if image_id_column is not None:
        check_column(ds, image_id_column, "image_id_column (--image-id-column)")
        if _is_string_list(ds.features[caption_column]):
            raise ValueError(
                f"caption_column={caption_column!r} already holds a list of captions per row, so rows need no "
                f"grouping by {image_id_column!r}; drop image_id_column (--image-id-column)."
            )
        group_by: str | None = image_id_column
    elif _is_string_list(ds.features[caption_column]):
        group_by = None
    else:
        group_by = _guess_image_id_column(ds, exclude={image_column, caption_column})
    return {"image_column": image_column, "caption_column": caption_column, "group_by": group_by}


def _caption_type_message(column: str, feature: Any, ds: datasets.Dataset) -> str:
    return (
        f"Caption column {column!r} holds {_feature_name(feature)}, not strings or lists of strings. Columns: "
        f"{_describe(ds)}. Pass caption_column= (recipe: --caption-column NAME) naming a text column, or build "
        f"one first, e.g. ds.map(lambda row: {{'captions': [s['raw'] for s in row[{column!r}]]}}) when it holds "
        "dicts with the text under 'raw'."
    )


def _guess_caption_column(ds: datasets.Dataset, exclude: set[str]) -> str:
    present = [name for name in CAPTION_COLUMN_NAMES if name in ds.column_names and name not in exclude]
    usable = [name for name in present if _is_string(ds.features[name]) or _is_string_list(ds.features[name])]
    if len(usable) == 1:
        return usable[0]
    if len(usable) > 1:
        raise ValueError(
            f"Several caption columns are possible: {usable}. Columns: {_describe(ds)}. Pass caption_column= "
            "(recipe: --caption-column NAME) naming the one to protect."
        )
    if present:
        raise ValueError(_caption_type_message(present[0], ds.features[present[0]], ds))
    numbered = [name for name in ds.column_names if _NUMBERED_CAPTION.match(name) and _is_string(ds.features[name])]
    if len(numbered) > 1:
        raise ValueError(
            f"The captions are spread over columns {numbered}. Merge them into one list column first: "
            f"merge_caption_columns(ds, {numbered}) (recipe: --caption-column {','.join(numbered)})."
        )
    raise ValueError(
        f"No caption column found (looked for {list(CAPTION_COLUMN_NAMES)}). Columns: {_describe(ds)}. Pass "
        "caption_column= (recipe: --caption-column NAME) naming the column of strings or lists of strings."
    )


def _guess_image_id_column(ds: datasets.Dataset, exclude: set[str]) -> str | None:
    for name in IMAGE_ID_COLUMN_NAMES:
        if name not in ds.column_names or name in exclude:
            continue
        feature = ds.features[name]
        if not isinstance(feature, datasets.Value):
            continue
        values = _column_values(ds, name)
        if len(set(values)) < len(values):
            return name
    return None


# --------------------------------------------------------------------------------------------------
# merge / group / ungroup
# --------------------------------------------------------------------------------------------------


def merge_caption_columns(ds: datasets.Dataset, columns: Sequence[str], into: str = "captions") -> datasets.Dataset:
    """One caption per column (``caption_0`` ... ``caption_4``) -> one list-of-strings column ``into``.

    Empty (null or blank) captions are left out of a row's list; the merged list column takes the
    place of the first merged column. Only the caption columns are read.
    """
    check_is_dataset(ds)
    columns = list(dict.fromkeys(columns))
    if len(columns) < 1:
        raise ValueError("merge_caption_columns needs at least one column.")
    for column in columns:
        check_column(ds, column, "caption column")
        if not _is_string(ds.features[column]):
            raise ValueError(f"Column {column!r} holds {_feature_name(ds.features[column])}; merging needs one string per row.")
    if into in ds.column_names and into not in columns:
        raise ValueError(f"into={into!r} is already a column of the data set; pick another name.")
    merged: list[list[str]] = []
    for _, chunk in _arrow_chunks(ds, columns):
        for offset in range(len(chunk[columns[0]])):
            texts = [chunk[name][offset] for name in columns]
            merged.append([text for text in texts if text is not None and text.strip()])
    order = [into if name == columns[0] else name for name in ds.column_names if name not in columns[1:]]
    result = ds.remove_columns(columns).add_column(into, merged, feature=_list_feature(datasets.Value("string")))
    return result.select_columns(order)


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
    if not _is_string(ds.features[caption_column]):
        hint = " It already holds a list per row: no grouping needed." if _is_string_list(ds.features[caption_column]) else ""
        raise ValueError(
            f"group_captions needs one caption string per row; column {caption_column!r} holds "
            f"{_feature_name(ds.features[caption_column])}.{hint}"
        )
    if row_numbers_column is not None and row_numbers_column in ds.column_names:
        raise ValueError(f"row_numbers_column={row_numbers_column!r} is already a column of the data set; pick another name.")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ValueError(f"max_images must be a non-negative integer or None, got {max_images!r}.")

    groups: dict[Any, list[int]] = {}
    for row, value in enumerate(_column_values(ds, image_id_column)):
        if value is None:
            raise ValueError(f"Image id column {image_id_column!r} is empty (null) at row {row}; fill or drop that row.")
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
    for start, chunk in _arrow_chunks(subset, read):
        for offset in range(len(chunk[caption_column])):
            row = kept_rows[start + offset]
            group = group_of[row]
            for name in collected:
                collected[name][group].append(chunk[name][offset])
            values = {name: (_image_key(chunk[name][offset]) if name == image_column else chunk[name][offset]) for name in shared}
            if first_values[group] is None:
                first_values[group] = values
                continue
            for name in shared:
                if not _same(first_values[group][name], values[name]):
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
        feature = _list_feature(ds.features[name])
        grouped = grouped.remove_columns(name).add_column(name, collected[name], feature=feature)
    if row_numbers_column is not None:
        grouped = grouped.add_column(row_numbers_column, group_rows, feature=_list_feature(datasets.Value("int64")))
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
        if not isinstance(grouped.features[name], _LIST_TYPES):
            raise ValueError(
                f"ungroup_captions needs a list per row in column {name!r}; it holds {_feature_name(grouped.features[name])}."
            )

    source_rows: list[int] = []
    flat: dict[str, list] = {name: [] for name in unfold}
    for start, chunk in _arrow_chunks(grouped, unfold):
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
            raise ValueError(f"Column {row_numbers_column!r} repeats a row number; it is not what group_captions wrote.")
        order.sort(key=numbers.__getitem__)
    columns = [name for name in grouped.column_names if name != row_numbers_column]
    result = grouped.select([source_rows[i] for i in order])
    for name in (caption_column, *per_caption):
        feature = grouped.features[name].feature
        result = result.remove_columns(name).add_column(name, [flat[name][i] for i in order], feature=feature)
    return result.select_columns(columns)
