"""The paper's baselines through the same API: random noise, EM (no trigger), trigger-only.

Each returns a `datasets.Dataset` shaped like `ProtectTransform.protect`'s output: same rows,
order and columns; the image column holds lossless PNGs at the surrogate's resolution.
"""

from __future__ import annotations

import os

import datasets
import numpy as np
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .config import MEMConfig
from .images import encode_png, prepare_image, undecoded
from .transform import ProtectTransform


def random_noise(
    ds: datasets.Dataset,
    image_size: int,
    *,
    epsilon: float = 8 / 255,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
) -> datasets.Dataset:
    """Uniform noise on the integer levels within +-epsilon, one draw per row (seeded by row index);
    captions unchanged. The control that shows MEM's effect is not just "any noise"."""
    levels = MEMConfig(epsilon=epsilon, trigger_length=0, shuffle_captions=False).epsilon_levels
    for column in (image_column, caption_column):
        if column not in ds.column_names:
            raise ValueError(f"Column {column!r} is not in the data set; its columns are {ds.column_names}.")

    def perturb(batch, indices):
        images = []
        for value, row in zip(batch[image_column], indices):
            clean = prepare_image(value, image_size, row).astype(np.int16)
            noise = np.random.default_rng([seed, row]).integers(-levels, levels + 1, size=clean.shape)
            images.append({"bytes": encode_png((clean + noise).clip(0, 255).astype(np.uint8)), "path": None})
        return {image_column: images}

    features = ds.features.copy()
    features[image_column] = datasets.Image()
    return undecoded(ds, image_column).map(
        perturb, batched=True, with_indices=True, features=features, desc="Random noise"
    )


def error_minimizing_noise(
    ds: datasets.Dataset,
    model: CLIPModel | CLIPConfig | str | os.PathLike,
    processor: CLIPProcessor | None = None,
    config: MEMConfig | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    progress: bool = True,
) -> datasets.Dataset:
    """EM (Huang et al., ICLR 2021) for image-text pairs: MEM with ``trigger_length=0``.

    PGD pulls each image toward its own caption (``shuffle_captions=False``), as in the reference
    EM: with no trigger, a shuffled caption would be another sample's, not a shortcut to learn.
    """
    config = (config or MEMConfig(method="mem", eot_transforms=())).replace(
        method="mem", trigger_length=0, image_noise=True, shuffle_captions=False
    )
    transform = ProtectTransform(model, processor, config, progress=progress)
    return transform.protect(ds, image_column=image_column, caption_column=caption_column)


def trigger_only(
    ds: datasets.Dataset,
    model: CLIPModel | CLIPConfig | str | os.PathLike,
    processor: CLIPProcessor | None = None,
    config: MEMConfig | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    progress: bool = True,
) -> datasets.Dataset:
    """Text triggers optimised by HotFlip against a surrogate trained on the triggered data; images
    are resized to the protect resolution but carry no noise."""
    config = (config or MEMConfig(method="mem", eot_transforms=())).replace(method="mem", image_noise=False)
    if config.trigger_length == 0:
        raise ValueError("trigger_only needs MEMConfig.trigger_length >= 1.")
    transform = ProtectTransform(model, processor, config, progress=progress)
    return transform.protect(ds, image_column=image_column, caption_column=caption_column)
