"""Expectation over transformation (EOT) for PGD: the noise is optimised through what a victim's
pipeline does to an image, so it keeps working after JPEG re-encoding, grayscale, crops and blur.

At every PGD step one transformation is drawn (identity included, so the noise still works on the
image as published) and applied, differentiably, to ``x + d`` before the surrogate sees it
(Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018; for unlearnable examples,
Fu et al., "Robust Unlearnable Examples", ICLR 2022). Each transformation is an operation of
`hf_unlearnable.imageops` (kornia's) with its parameters drawn per image; the image defenses use the
same operations with fixed parameters. Every random parameter comes from the caller's generator, so
a batch replays exactly on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..imageops import ImageOp, image_op

#: name -> (the registered image operation with its drawn parameters, what it simulates: the
#: defenses of `hf_unlearnable.defenses` it is meant to survive)
TRANSFORMATIONS: dict[str, tuple[ImageOp, str]] = {
    "jpeg": (
        image_op("jpeg", quality=(30.0, 95.0)),
        "JPEG re-encoding at a random quality in [30, 95] (jpeg-30..90, ISS-JPEG)",
    ),
    "crop-flip": (
        image_op("crop-flip", scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5),
        "random resized crop (scale 0.5-1, aspect 3/4-4/3) and horizontal flip (CLIP's augmentation)",
    ),
    "grayscale": (
        image_op("grayscale", amount=(0.5, 1.0)),
        "blend toward grayscale by a random factor in [0.5, 1] (grayscale, ISS-grayscale)",
    ),
    "blur": (
        image_op("blur", sigma=(0.3, 1.2), kernel_size=3),
        "Gaussian blur, 3x3, sigma in [0.3, 1.2] (gaussian-blur)",
    ),
}
#: name -> what it simulates
EOT_TRANSFORMS: dict[str, str] = {name: text for name, (_, text) in TRANSFORMATIONS.items()}


def check_eot_transforms(names: Sequence[str]) -> None:
    """Raise ValueError naming any unknown transformation and the valid ones."""
    unknown = [name for name in names if name not in EOT_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown EOT transformation(s) {unknown}; valid: {sorted(EOT_TRANSFORMS)}.")


class EOT:
    """Draws one transformation per PGD step: identity or one of ``names``, uniformly.

    Args:
        names: transformations from `EOT_TRANSFORMS` (empty: always the identity).

    Shape: pixels (B, 3, H, W) float in [0, 1] -> the same shape, differentiable in pixels.
    """

    def __init__(self, names: Sequence[str] = ()):
        check_eot_transforms(names)
        self.names = tuple(names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def draw(self, generator: torch.Generator) -> str | None:
        """The transformation of one step (None: identity)."""
        choice = int(torch.randint(len(self.names) + 1, (1,), generator=generator))
        return self.names[choice - 1] if choice else None

    def __call__(self, pixels: torch.Tensor, name: str | None, generator: torch.Generator) -> torch.Tensor:
        return pixels if name is None else TRANSFORMATIONS[name][0](pixels, generator)
