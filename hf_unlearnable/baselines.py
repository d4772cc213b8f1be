"""The paper's baselines as functions: random noise, EM (no trigger), trigger-only.

Each is a one-line shortcut to a method object of `hf_unlearnable.methods` (`RandomNoise`, `EM`,
`TriggerOnly`), kept for code written before them; the objects are the documented way. Each returns
a `datasets.Dataset` shaped like `ProtectTransform.protect`'s output: same rows, order and columns;
the image column holds lossless PNGs at the surrogate's resolution.
"""

from __future__ import annotations

import os

import datasets
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .config import MEMConfig
from .methods import EM, RandomNoise, TriggerOnly


def random_noise(
    ds: datasets.Dataset,
    image_size: int,
    *,
    epsilon: float = 8 / 255,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
) -> datasets.Dataset:
    """``RandomNoise(epsilon, seed).protect(ds, image_size)``: uniform noise on the integer levels
    within +-epsilon, one draw per row (seeded by row index); captions unchanged."""
    return RandomNoise(epsilon, seed).protect(ds, image_size, image_column=image_column, caption_column=caption_column)


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
    """`EM` (Huang et al., ICLR 2021) for image-text pairs: ``EM()``, or with ``config``'s settings
    (`EM.from_config`: its trigger settings do not apply, and EM sets method, trigger length, image
    noise and caption shuffling itself)."""
    method = EM() if config is None else EM.from_config(config)
    return method.protect(
        ds, model, processor, image_column=image_column, caption_column=caption_column, progress=progress
    )


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
    """`TriggerOnly`: text triggers optimised by HotFlip, no image noise: ``TriggerOnly()``, or with
    ``config``'s settings (`TriggerOnly.from_config`: its pixel settings do not apply)."""
    method = TriggerOnly() if config is None else TriggerOnly.from_config(config)
    return method.protect(
        ds, model, processor, image_column=image_column, caption_column=caption_column, progress=progress
    )
