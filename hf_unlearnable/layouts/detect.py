"""`detect_layout` and `merge_caption_columns`: find the image and caption columns of a Hub data set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from ..checks import check_column, check_is_dataset
from .common import (
    CAPTION_COLUMN_NAMES,
    IMAGE_ID_COLUMN_NAMES,
    NUMBERED_CAPTION,
    arrow_chunks,
    column_values,
    describe_columns,
    feature_name,
    is_string,
    is_string_list,
    list_feature,
)

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
                f"No image column found: no column has the datasets.Image feature. Columns: {describe_columns(ds)}. "
                "Pass image_column= (recipe: --image-column NAME) naming the column that holds the images; a data "
                "set that only has URLs or file names (e.g. a Karpathy-split COCO index) must first be joined with "
                "the images and cast with ds.cast_column(NAME, datasets.Image())."
            )
        image_column = images[0]

    if caption_column is not None:
        check_column(ds, caption_column, "caption_column (--caption-column)")
        feature = ds.features[caption_column]
        if not (is_string(feature) or is_string_list(feature)):
            raise ValueError(_caption_type_message(caption_column, feature, ds))
    else:
        caption_column = _guess_caption_column(ds, exclude={image_column})

    if image_id_column is not None:
        check_column(ds, image_id_column, "image_id_column (--image-id-column)")
        if is_string_list(ds.features[caption_column]):
            raise ValueError(
                f"caption_column={caption_column!r} already holds a list of captions per row, so rows need no "
                f"grouping by {image_id_column!r}; drop image_id_column (--image-id-column)."
            )
        group_by: str | None = image_id_column
    elif is_string_list(ds.features[caption_column]):
        group_by = None
    else:
        group_by = _guess_image_id_column(ds, exclude={image_column, caption_column})
    return {"image_column": image_column, "caption_column": caption_column, "group_by": group_by}


def _caption_type_message(column: str, feature: Any, ds: datasets.Dataset) -> str:
    return (
        f"Caption column {column!r} holds {feature_name(feature)}, not strings or lists of strings. Columns: "
        f"{describe_columns(ds)}. Pass caption_column= (recipe: --caption-column NAME) naming a text column, or build "
        f"one first, e.g. ds.map(lambda row: {{'captions': [s['raw'] for s in row[{column!r}]]}}) when it holds "
        "dicts with the text under 'raw'."
    )


def _guess_caption_column(ds: datasets.Dataset, exclude: set[str]) -> str:
    present = [name for name in CAPTION_COLUMN_NAMES if name in ds.column_names and name not in exclude]
    usable = [name for name in present if is_string(ds.features[name]) or is_string_list(ds.features[name])]
    if len(usable) == 1:
        return usable[0]
    if len(usable) > 1:
        raise ValueError(
            f"Several caption columns are possible: {usable}. Columns: {describe_columns(ds)}. Pass caption_column= "
            "(recipe: --caption-column NAME) naming the one to protect."
        )
    if present:
        raise ValueError(_caption_type_message(present[0], ds.features[present[0]], ds))
    numbered = [name for name in ds.column_names if NUMBERED_CAPTION.match(name) and is_string(ds.features[name])]
    if len(numbered) > 1:
        raise ValueError(
            f"The captions are spread over columns {numbered}. Merge them into one list column first: "
            f"merge_caption_columns(ds, {numbered}) (recipe: --caption-column {','.join(numbered)})."
        )
    raise ValueError(
        f"No caption column found (looked for {list(CAPTION_COLUMN_NAMES)}). Columns: {describe_columns(ds)}. Pass "
        "caption_column= (recipe: --caption-column NAME) naming the column of strings or lists of strings."
    )


def _guess_image_id_column(ds: datasets.Dataset, exclude: set[str]) -> str | None:
    for name in IMAGE_ID_COLUMN_NAMES:
        if name not in ds.column_names or name in exclude:
            continue
        feature = ds.features[name]
        if not isinstance(feature, datasets.Value):
            continue
        values = column_values(ds, name)
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
        if not is_string(ds.features[column]):
            raise ValueError(
                f"Column {column!r} holds {feature_name(ds.features[column])}; merging needs one string per row."
            )
    if into in ds.column_names and into not in columns:
        raise ValueError(f"into={into!r} is already a column of the data set; pick another name.")
    merged: list[list[str]] = []
    for _, chunk in arrow_chunks(ds, columns):
        for offset in range(len(chunk[columns[0]])):
            texts = [chunk[name][offset] for name in columns]
            merged.append([text for text in texts if text is not None and text.strip()])
    order = [into if name == columns[0] else name for name in ds.column_names if name not in columns[1:]]
    result = ds.remove_columns(columns).add_column(into, merged, feature=list_feature(datasets.Value("string")))
    return result.select_columns(order)
