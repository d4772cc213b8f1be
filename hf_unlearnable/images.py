"""Images in and out: any input -> RGB uint8 at the protect resolution; lossless PNG out.

The protect resolution is the surrogate's input size. Everything MEM optimises lives on the
8-bit grid at that resolution, so the saved PNG decodes to exactly ``clean + noise``.
"""

from __future__ import annotations

import io
import os
from typing import Any

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

# CLIP resizes with bicubic interpolation; so do we, so the clean base matches what CLIP sees.
_RESAMPLE = Image.Resampling.BICUBIC


def _where(row: int | None) -> str:
    return f"row {row}" if row is not None else "the image"


def load_image(value: Any, row: int | None = None) -> Image.Image:
    """Turn what a `datasets` image column may hold into a PIL image (not yet converted).

    Accepts a PIL image, a ``{"bytes": ..., "path": ...}`` dict (the `datasets.Image` storage
    form), raw encoded bytes, a file path, or an HxW / HxWxC uint8 array. A file that cannot be
    decoded, or that declares more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression
    bomb), raises a ValueError naming the row.
    """
    if isinstance(value, Image.Image):
        return value
    try:
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return _open_bytes(value["bytes"])
            if value.get("path"):
                return _open_path(value["path"])
            raise ValueError("the image dict has neither 'bytes' nor 'path'")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return _open_bytes(bytes(value))
        if isinstance(value, (str, os.PathLike)):
            return _open_path(value)
        if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
            array = np.asarray(value)
            if array.dtype != np.uint8:
                raise ValueError(f"an image array must be uint8 (got {array.dtype}); scale it to 0..255 first")
            return Image.fromarray(array)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"The image at {_where(row)} is too large to decode safely: {error} Drop or downscale that row "
            "(e.g. ds.filter) before protecting, or, if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS "
            "(None removes the limit); nothing was written."
        ) from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(
            f"Cannot decode the image at {_where(row)}: {error}. Fix or drop that row "
            "(e.g. ds.filter) before protecting; nothing was written."
        ) from error
    if value is None:
        raise ValueError(f"The image at {_where(row)} is None. Drop rows without an image before protecting.")
    raise TypeError(
        f"The image at {_where(row)} has type {type(value).__name__}; expected a PIL image, "
        "a datasets Image dict, encoded bytes, a path or a uint8 array."
    )


def _open_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # decode now, so a broken file fails here and not later
    return image


def _open_path(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "I" and array.max() <= 255:
            high = 255.0
        array = np.clip(np.round(array / high * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), centre crop to ``size`` x ``size``; RGB uint8 (H, W, 3).

    Images smaller than ``size`` (even 1x1) are upsampled, as CLIP's own preprocessing does.
    """
    image = to_rgb(image)
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError("an image has zero width or height")
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), _RESAMPLE)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).copy()


def prepare_image(value: Any, size: int, row: int | None = None) -> np.ndarray:
    """The clean base of one row: decode, convert to RGB, resize and crop; uint8 (size, size, 3)."""
    image = load_image(value, row)
    try:
        return resize_center_crop(image, size)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot convert the image at {_where(row)} to RGB {size}x{size}: {error}") from error


def undecoded(ds: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """``ds`` with its image column read as stored (bytes/paths), so that `prepare_image` decodes
    each row itself and a broken file is reported with its row number."""
    feature = ds.features[image_column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of an RGB uint8 array (JPEG would destroy the 1/255 perturbation)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of encode_png."""
    return np.asarray(to_rgb(_open_bytes(data)), dtype=np.uint8)
