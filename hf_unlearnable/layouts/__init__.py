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

from .common import CAPTION_COLUMN_NAMES, IMAGE_ID_COLUMN_NAMES
from .detect import detect_layout, merge_caption_columns
from .grouping import group_captions, ungroup_captions

__all__ = [
    "CAPTION_COLUMN_NAMES",
    "IMAGE_ID_COLUMN_NAMES",
    "detect_layout",
    "group_captions",
    "merge_caption_columns",
    "ungroup_captions",
]
