"""Column names seen on the Hub and helpers shared by layout detection and grouping."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import datasets

# Caption column names seen on the Hub, most specific first.
CAPTION_COLUMN_NAMES = ("caption", "captions", "sentences", "sentences_raw", "raw", "text")
# Columns that say which per-caption rows share an image, most specific first ("id" is last: in
# COCO-style per-caption data it is often the caption's own id, unique per row, so it only counts
# when its values repeat).
IMAGE_ID_COLUMN_NAMES = ("image_id", "cocoid", "imgid", "img_id", "filename", "file_name", "filepath", "id")

_CHUNK = 1024
# One caption per column: caption_0 ... caption_4 (some Flickr8K copies), sentence1 ..., text_2 ...
NUMBERED_CAPTION = re.compile(r"^(caption|captions|sentence|sentences|text|raw)_?\d+$")
#: The list features of the installed datasets (List, Sequence, LargeList; older releases lack some).
LIST_TYPES = tuple(
    t for t in (getattr(datasets, "List", None), datasets.Sequence, getattr(datasets, "LargeList", None)) if t
)


def list_feature(inner: Any) -> Any:
    """A list feature of ``inner`` (``datasets.List`` where the installed datasets has it, else ``Sequence``)."""
    return datasets.List(inner) if hasattr(datasets, "List") else datasets.Sequence(inner)


def is_string(feature: Any) -> bool:
    """Whether a feature holds one string per row."""
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def is_string_list(feature: Any) -> bool:
    """Whether a feature holds a list of strings per row."""
    return isinstance(feature, LIST_TYPES) and is_string(feature.feature)


def describe_columns(ds: datasets.Dataset) -> str:
    """The columns of ``ds`` with their kinds, for error messages: ``"image (image), caption (string)"``."""
    return ", ".join(f"{name} ({feature_name(feature)})" for name, feature in ds.features.items())


def feature_name(feature: Any) -> str:
    """A feature's kind in words (``image``, ``string``, ``list of string``, ``struct``)."""
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, LIST_TYPES):
        return f"list of {feature_name(feature.feature)}"
    if isinstance(feature, dict):
        return "struct"
    return type(feature).__name__


def arrow_chunks(ds: datasets.Dataset, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, list]]]:
    """(first row, {column: python values}) for `columns`, _CHUNK rows at a time, images undecoded."""
    view = ds.select_columns(list(columns)).with_format("arrow")
    for start in range(0, len(view), _CHUNK):
        table = view[start : start + _CHUNK]
        yield start, {name: table.column(name).to_pylist() for name in columns}


def column_values(ds: datasets.Dataset, column: str) -> list:
    """Every value of one column as python values, read chunk by chunk, images undecoded."""
    values: list = []
    for _, chunk in arrow_chunks(ds, [column]):
        values.extend(chunk[column])
    return values


def image_key(value: Any) -> Any:
    """What identifies a stored image: a hash of its bytes, else its path."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return hashlib.blake2b(value["bytes"], digest_size=16).digest()
        return value.get("path")
    return value


def same_value(first: Any, other: Any) -> bool:
    """Whether two cell values are equal, a float NaN equal to a float NaN."""
    if first == other:
        return True
    return isinstance(first, float) and isinstance(other, float) and math.isnan(first) and math.isnan(other)
