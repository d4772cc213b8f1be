"""What an unauthorised trainer might do to the protected copy: defenses for `train_victim(defense=...)`.

    from hf_unlearnable.defenses import available_defenses, get_defense
    result = train_victim(protected, clean_test, config, processor, defense=get_defense("jpeg-75+strip-3"))

Every defense is a callable ``defense(pixels, captions, generator) -> (pixels, captions)`` on the
images as published (float (B, 3, H, W) in [0, 1]) and their captions, deterministic for a
generator (see `hf_unlearnable.defenses.base` for the protocol and its two optional hooks, ``fit``
for corpus statistics and ``needs_model`` for adversarial training). The registry names:

=====================  ===================================================================
``none``               the batch as published
``jpeg-Q``             JPEG round trip at quality Q = 10, 30, 50, 75, 90 (kornia's codec)
``grayscale``          grayscale, 3 equal channels; ``iss-grayscale`` is the same (ISS)
``iss-jpeg-10``        JPEG quality 10 (ISS, Liu et al. ICML 2023)
``bit-depth-2``        2 bits per channel (4 levels; feature squeezing)
``gaussian-blur``      Gaussian blur, sigma 1 px
``gaussian-noise``     additive Gaussian noise, std 8/255
``mixup``              blend with another image of the batch (own weight >= 0.5, own caption)
``cutout``             zero a square of a quarter of the image
``cutmix``             paste a box (<= half the image) of another image (own caption)
``resized-crop-flip``  CLIP's random resized crop (scale 0.9-1) + horizontal flip
``ueraser-lite``       UEraser-Lite (Qin et al. 2023): plasma, channel shuffle, TrivialAugment, JPEG 10-100
``adv-train-4``        adversarial training, PGD eps 4/255 (5 steps, alpha eps/4); ``adv-train-8``: 8/255
``eda-insert``         EDA random insertion (alpha 0.1); also ``eda-delete``, ``eda-swap``, ``eda-synonym``
``eda``                one of the four EDA operations per caption (CleanCLIP's use)
``strip-k``            drop the first k words of every caption, k = 1 .. 7
``rare-words``         drop words found in fewer than 5 training captions
=====================  ===================================================================

Names join with ``+`` (or ``,``) into a composition applied left to right: ``"jpeg-75+strip-3"``.

The image defenses (``jpeg-Q`` to ``ueraser-lite``) are operations of `hf_unlearnable.imageops` with
fixed parameters, the ones EOT draws per image inside PGD: ``ImageDefense(image_op("jpeg",
quality=40, quantize=True))`` is a defense for any registered operation.
"""

from __future__ import annotations

from collections.abc import Callable

from .adaptive import RareWordFilter, StripFirstWords
from .base import Compose, DefenseBase, Identity, compose, quantize_8bit
from .image import (
    JPEG,
    AdversarialTraining,
    BitDepthReduction,
    CutMix,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    Grayscale,
    ImageDefense,
    MixUp,
    ResizedCropFlip,
    UEraserLite,
    jpeg_compress,
)
from .text import EDA, default_synonyms, wordnet_synonyms

__all__ = [
    "EDA",
    "JPEG",
    "AdversarialTraining",
    "BitDepthReduction",
    "Compose",
    "CutMix",
    "Cutout",
    "DefenseBase",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "Identity",
    "ImageDefense",
    "MixUp",
    "RareWordFilter",
    "ResizedCropFlip",
    "StripFirstWords",
    "UEraserLite",
    "available_defenses",
    "compose",
    "default_synonyms",
    "get_defense",
    "jpeg_compress",
    "quantize_8bit",
    "wordnet_synonyms",
]

_REGISTRY: dict[str, Callable[[int], DefenseBase]] = {
    "none": lambda seed: Identity(seed=seed),
    **{f"jpeg-{q}": (lambda seed, q=q: JPEG(q, seed=seed)) for q in (10, 30, 50, 75, 90)},
    "grayscale": lambda seed: Grayscale(seed=seed),
    "iss-grayscale": lambda seed: Grayscale(seed=seed),
    "iss-jpeg-10": lambda seed: JPEG(10, seed=seed),
    "bit-depth-2": lambda seed: BitDepthReduction(2, seed=seed),
    "gaussian-blur": lambda seed: GaussianBlur(seed=seed),
    "gaussian-noise": lambda seed: GaussianNoise(seed=seed),
    "mixup": lambda seed: MixUp(seed=seed),
    "cutout": lambda seed: Cutout(seed=seed),
    "cutmix": lambda seed: CutMix(seed=seed),
    "resized-crop-flip": lambda seed: ResizedCropFlip(seed=seed),
    "ueraser-lite": lambda seed: UEraserLite(seed=seed),
    "adv-train-4": lambda seed: AdversarialTraining(4 / 255, seed=seed),
    "adv-train-8": lambda seed: AdversarialTraining(8 / 255, seed=seed),
    "eda-insert": lambda seed: EDA(["insert"], seed=seed),
    "eda-delete": lambda seed: EDA(["delete"], seed=seed),
    "eda-swap": lambda seed: EDA(["swap"], seed=seed),
    "eda-synonym": lambda seed: EDA(["synonym"], seed=seed),
    "eda": lambda seed: EDA(seed=seed),
    **{f"strip-{k}": (lambda seed, k=k: StripFirstWords(k, seed=seed)) for k in range(1, 8)},
    "rare-words": lambda seed: RareWordFilter(seed=seed),
}


def available_defenses() -> list[str]:
    """Every registry name, in a stable order (image, adversarial, text, adaptive)."""
    return list(_REGISTRY)


def get_defense(name: str, seed: int = 0) -> DefenseBase:
    """A fresh defense by registry name, or a ``+``/``,`` composition of names (applied left to right).

    `seed` seeds the defense's own generator, used only when it is called without one
    (`train_victim` always passes its seeded generator).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'jpeg-75' or 'jpeg-75+strip-3', got {type(name).__name__}.")
    parts = [part.strip() for part in name.replace(",", "+").split("+")]
    unknown = [part for part in parts if part not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"Unknown defense {', '.join(map(repr, unknown))}. Valid names: {', '.join(available_defenses())} "
            "(join several with '+', e.g. 'jpeg-75+strip-3')."
        )
    built = []
    for part in parts:
        defense = _REGISTRY[part](seed)
        defense.name = part
        built.append(defense)
    if len(built) == 1:
        return built[0]
    combined = Compose(*built, seed=seed)
    combined.name = "+".join(parts)
    return combined
