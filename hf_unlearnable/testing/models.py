"""Tiny, randomly initialised CLIP models (and their processor) for tests, examples and benchmarks.

They are ``transformers.CLIPModel`` instances built from a config, so everything that loads or
saves a Hub CLIP works on them, without network and in seconds on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch
import transformers

from .tokenizer import clip_tokenizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TinyClipSizes", "tiny_clip", "tiny_clip_config"]


class TinyClipSizes(TypedDict, total=False):
    """The size keywords :func:`tiny_clip` passes on to :func:`tiny_clip_config`."""

    hidden_size: int
    num_layers: int
    num_heads: int
    projection_dim: int
    patch_size: int | None
    max_text_length: int


def tiny_clip_config(
    image_size: int = 32,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 32,
    patch_size: int | None = None,
    max_text_length: int = 77,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
) -> transformers.CLIPConfig:
    """A small two-tower CLIP config matching `tokenizer` (default: :func:`clip_tokenizer`).

    Text and vision towers share width, depth and heads; patches default to a 4x4 grid.
    Use it to train a surrogate or victim from scratch with ``CLIPModel(config)``.
    """
    patch_size = patch_size if patch_size is not None else max(1, image_size // 4)
    if image_size % patch_size:
        raise ValueError(
            f"image_size={image_size} is not a multiple of patch_size={patch_size}; "
            "pick a patch_size that divides image_size."
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}; change either."
        )
    tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
    shared = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "projection_dim": projection_dim,
    }
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shared,
    )
    vision_config = transformers.CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, **shared
    )
    return transformers.CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=projection_dim,
    )


def _image_processor(image_size: int) -> transformers.image_processing_utils.BaseImageProcessor:
    """CLIP's preprocessing (resize shortest edge, centre crop, CLIP mean/std) at `image_size`."""
    # transformers 5 backs CLIPImageProcessor with torchvision and, without it, falls back to the
    # PIL class with a warning; ask for the PIL class directly in that case.
    if transformers.utils.is_torchvision_available() or not hasattr(
        transformers, "CLIPImageProcessorPil"
    ):
        processor_class = transformers.CLIPImageProcessor
    else:
        processor_class = transformers.CLIPImageProcessorPil
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def tiny_clip(
    image_size: int = 32, seed: int = 0, **sizes: Unpack[TinyClipSizes]
) -> tuple[transformers.CLIPModel, transformers.CLIPProcessor]:
    """A randomly initialised small ``CLIPModel`` (in eval mode) and its matching processor.

    `sizes` are :func:`tiny_clip_config`'s keywords, with its defaults; the tokenizer's
    ``model_max_length`` follows ``max_text_length``. Weights depend only on `seed` and the sizes;
    the global torch RNG is left untouched.
    """
    tokenizer = clip_tokenizer()
    config = tiny_clip_config(image_size, tokenizer=tokenizer, **sizes)
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config)
    processor = transformers.CLIPProcessor(
        image_processor=_image_processor(image_size), tokenizer=tokenizer
    )
    return model.eval(), processor
