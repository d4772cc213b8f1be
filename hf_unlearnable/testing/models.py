"""Tiny, randomly initialised CLIP and SigLIP models (and their processors) for tests, examples
and benchmarks.

They are ``transformers.CLIPModel`` / ``SiglipModel`` instances built from a config, so everything
that loads or saves a Hub model works on them, without network and in seconds on a CPU. Both read
the offline CLIP tokenizer of :func:`clip_tokenizer` (SigLIP's own SentencePiece tokenizer is a
file on the Hub).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch
import transformers

from .tokenizer import clip_tokenizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "TinyClipSizes",
    "TinySiglipSizes",
    "tiny_clip",
    "tiny_clip_config",
    "tiny_siglip",
    "tiny_siglip_config",
    "tiny_siglip_processor",
]


class TinySiglipSizes(TypedDict, total=False):
    """The size keywords :func:`tiny_siglip` passes on to :func:`tiny_siglip_config`."""

    hidden_size: int
    num_layers: int
    num_heads: int
    patch_size: int | None
    max_text_length: int


class TinyClipSizes(TinySiglipSizes, total=False):
    """The size keywords :func:`tiny_clip` passes on to :func:`tiny_clip_config`."""

    projection_dim: int


def _tower_configs(
    text_class: type,
    vision_class: type,
    image_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    patch_size: int | None,
    max_text_length: int,
    tokenizer: transformers.PreTrainedTokenizerBase | None,
    **extra: int,
) -> tuple[dict, dict]:
    """The text and vision tower configs (as dicts) of a tiny two-tower model: one width, depth and
    head count for both, patches defaulting to a 4x4 grid, the text tower sized for `tokenizer`."""
    patch_size = patch_size if patch_size is not None else max(1, image_size // 4)
    if image_size % patch_size:
        raise ValueError(
            f"image_size={image_size} is not a multiple of patch_size={patch_size}; "
            "pick a patch_size that divides image_size."
        )
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}; change either.")
    tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
    shared = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        **extra,
    }
    text_config = text_class(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shared,
    )
    vision_config = vision_class(image_size=image_size, patch_size=patch_size, **shared)
    return text_config.to_dict(), vision_config.to_dict()


def _image_processor_class(name: str) -> type:
    """transformers 5 backs ``<name>`` with torchvision and, without it, falls back to the PIL class
    with a warning; ask for the PIL class (``<name>Pil``) directly in that case."""
    if transformers.utils.is_torchvision_available() or not hasattr(transformers, f"{name}Pil"):
        return getattr(transformers, name)
    return getattr(transformers, f"{name}Pil")


def _tiny_model(
    config_function, model_class: type, image_size: int, seed: int, sizes: dict
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """(model in eval mode, its tokenizer): `config_function`'s config for :func:`clip_tokenizer`,
    whose ``model_max_length`` follows the text context; weights from `seed` alone (the global
    torch RNG is left untouched)."""
    tokenizer = clip_tokenizer()
    config = config_function(image_size, tokenizer=tokenizer, **sizes)
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval(), tokenizer


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
    text_config, vision_config = _tower_configs(
        transformers.CLIPTextConfig,
        transformers.CLIPVisionConfig,
        image_size,
        hidden_size,
        num_layers,
        num_heads,
        patch_size,
        max_text_length,
        tokenizer,
        projection_dim=projection_dim,
    )
    return transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_clip(
    image_size: int = 32, seed: int = 0, **sizes: Unpack[TinyClipSizes]
) -> tuple[transformers.CLIPModel, transformers.CLIPProcessor]:
    """A randomly initialised small ``CLIPModel`` (in eval mode) and its matching processor
    (resize shortest edge, centre crop, CLIP mean/std at `image_size`).

    `sizes` are :func:`tiny_clip_config`'s keywords, with its defaults; the tokenizer's
    ``model_max_length`` follows ``max_text_length``. Weights depend only on `seed` and the sizes;
    the global torch RNG is left untouched.
    """
    model, tokenizer = _tiny_model(tiny_clip_config, transformers.CLIPModel, image_size, seed, sizes)
    image_processor = _image_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_siglip_config(
    image_size: int = 32,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    patch_size: int | None = None,
    max_text_length: int = 77,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
) -> transformers.SiglipConfig:
    """A small two-tower SigLIP config matching `tokenizer` (default: :func:`clip_tokenizer`), the
    sizes of :func:`tiny_clip_config` (SigLIP has no projection: both towers end at ``hidden_size``;
    the vision tower pools with SigLIP's attention head)."""
    text_config, vision_config = _tower_configs(
        transformers.SiglipTextConfig,
        transformers.SiglipVisionConfig,
        image_size,
        hidden_size,
        num_layers,
        num_heads,
        patch_size,
        max_text_length,
        tokenizer,
    )
    return transformers.SiglipConfig(text_config=text_config, vision_config=vision_config)


def tiny_siglip_processor(
    image_size: int = 32, tokenizer: transformers.PreTrainedTokenizerBase | None = None
) -> transformers.SiglipProcessor:
    """SigLIP's image preprocessing (resize to `image_size`, mean/std 0.5) with `tokenizer`
    (default: :func:`clip_tokenizer`)."""
    image_processor = _image_processor_class("SiglipImageProcessor")(size={"height": image_size, "width": image_size})
    tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
    return transformers.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_siglip(
    image_size: int = 32, seed: int = 0, **sizes: Unpack[TinySiglipSizes]
) -> tuple[transformers.SiglipModel, transformers.SiglipProcessor]:
    """A randomly initialised small ``SiglipModel`` (in eval mode) and its :func:`tiny_siglip_processor`.

    `sizes` are :func:`tiny_siglip_config`'s keywords, with its defaults; the tokenizer's
    ``model_max_length`` follows ``max_text_length``. Weights depend only on `seed` and the sizes;
    the global torch RNG is left untouched.
    """
    model, tokenizer = _tiny_model(tiny_siglip_config, transformers.SiglipModel, image_size, seed, sizes)
    return model, tiny_siglip_processor(image_size, tokenizer)
