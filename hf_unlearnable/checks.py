"""Checks of the user's input, once per kind: the data set, its caption column, each caption.

One error type per kind of mistake: a wrong type (not a `datasets.Dataset`, a caption column of
numbers, a caption that is not a string) is a TypeError; a wrong value (a missing column, too few
rows, an empty or missing caption) is a ValueError. Every message names the argument or the row
and says how to fix it.
"""

from __future__ import annotations

from typing import Any

import datasets


def check_dataset(ds: Any, image_column: str, caption_column: str, *, name: str = "ds", min_rows: int = 1) -> bool:
    """Check a data set and its two columns; return whether the caption column holds lists of captions.

    ``name`` is the argument's name in messages; ``min_rows`` the fewest rows allowed (0: any)."""
    check_is_dataset(ds, name)
    check_column(ds, image_column, "image_column", name)
    check_column(ds, caption_column, "caption_column", name)
    lists = caption_is_list(ds.features[caption_column], caption_column)
    if len(ds) < min_rows:
        if len(ds) == 0:
            raise ValueError(f"{name} is empty (0 rows); pass a data set with image-caption rows.")
        raise ValueError(
            f"{name} has {len(ds)} row(s); at least {min_rows} are needed (the contrastive loss needs negatives)."
        )
    return lists


def check_is_dataset(ds: Any, name: str = "ds") -> None:
    """TypeError unless ``ds`` is a `datasets.Dataset`, saying how to get one."""
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(
            f"{name} must be a datasets.Dataset, got {type(ds).__name__}. For a DatasetDict pick a split "
            f"({name}['train']); an IterableDataset must be materialised first (Dataset.from_generator)."
        )


def check_column(ds: datasets.Dataset, column: str, argument: str, name: str = "ds") -> None:
    """ValueError unless ``column`` (the value of ``argument``) is a column of ``ds``."""
    if column not in ds.column_names:
        raise ValueError(
            f"{argument}={column!r} is not a column of {name}; its columns are {ds.column_names}. "
            "Pass the right column name."
        )


def caption_is_list(feature: Any, column: str) -> bool:
    """True for a column of lists of strings, False for a column of strings; TypeError otherwise."""
    if isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        inner = feature.feature
        if isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string"):
            return True
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return False
    raise TypeError(
        f"Caption column {column!r} has feature {feature}; expected strings or lists of strings. "
        "Cast it (ds.cast_column) or choose another caption_column."
    )


def check_caption(caption: Any, row: int | None, column: str) -> str:
    """A caption must be a non-empty string; say which row and how to fix it otherwise."""
    where = f"row {row}" if row is not None else "a row"
    if caption is None:
        raise ValueError(
            f"Caption column {column!r} is None at {where}. Fill or drop it (e.g. ds.filter) before protecting."
        )
    if not isinstance(caption, str):
        raise TypeError(
            f"Caption column {column!r} holds a {type(caption).__name__} at {where}; expected a string "
            "(or a list of strings per image)."
        )
    if not caption.strip():
        raise ValueError(
            f"Caption column {column!r} is empty at {where}. An empty caption cannot carry a trigger; "
            "fill or drop that row (e.g. ds.filter)."
        )
    return caption


def row_captions(value: Any, row: int | None, column: str) -> list[str]:
    """A row's captions as a list (one element for a plain string), each checked."""
    if isinstance(value, (list, tuple)):
        if not value:
            where = f"row {row}" if row is not None else "a row"
            raise ValueError(f"Caption column {column!r} holds an empty list at {where}; fill or drop that row.")
        return [check_caption(text, row, column) for text in value]
    return [check_caption(value, row, column)]


def read_captions(ds: datasets.Dataset, column: str) -> list[list[str]]:
    """Every row's captions, checked (cheap: no image is decoded)."""
    values = ds.select_columns([column]).to_dict()[column]
    return [row_captions(value, row, column) for row, value in enumerate(values)]
