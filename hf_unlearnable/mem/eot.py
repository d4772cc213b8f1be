"""Expectation over transformation (EOT) for PGD: the noise is optimised through what a victim's
pipeline does to an image, so it keeps working after JPEG re-encoding, grayscale, crops and blur.

At every PGD step one transformation is drawn (identity included, so the noise still works on the
image as published) and applied, differentiably, to ``x + d`` before the surrogate sees it
(Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018; for unlearnable examples,
Fu et al., "Robust Unlearnable Examples", ICLR 2022). The operations are kornia's; every random
parameter comes from the caller's generator, so a batch replays exactly on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia
import torch

#: name -> what it simulates (the defenses of `hf_unlearnable.defenses` it is meant to survive)
EOT_TRANSFORMS: dict[str, str] = {
    "jpeg": "JPEG re-encoding at a random quality in [30, 95] (jpeg-30..90, ISS-JPEG)",
    "crop-flip": "random resized crop (scale 0.5-1, aspect 3/4-4/3) and horizontal flip (CLIP's augmentation)",
    "grayscale": "blend toward grayscale by a random factor in [0.5, 1] (grayscale, ISS-grayscale)",
    "blur": "Gaussian blur, 3x3, sigma in [0.3, 1.2] (gaussian-blur)",
}


def check_eot_transforms(names: Sequence[str]) -> None:
    """Raise ValueError naming any unknown transformation and the valid ones."""
    unknown = [name for name in names if name not in EOT_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown EOT transformation(s) {unknown}; valid: {sorted(EOT_TRANSFORMS)}.")


def _uniform(generator: torch.Generator, size: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _jpeg(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    quality = _uniform(generator, len(pixels), 30.0, 95.0).to(pixels.device)
    return kornia.enhance.jpeg_codec_differentiable(pixels.clamp(0, 1), quality)


def _crop_flip(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    batch, _, height, width = pixels.shape
    area = _uniform(generator, batch, 0.5, 1.0)
    log_ratio = _uniform(generator, batch, float(torch.log(torch.tensor(3 / 4))), float(torch.log(torch.tensor(4 / 3))))
    ratio = torch.exp(log_ratio)
    crop_w = (torch.sqrt(area * ratio) * width).clamp(2, width)
    crop_h = (torch.sqrt(area / ratio) * height).clamp(2, height)
    left = torch.rand(batch, generator=generator) * (width - crop_w)
    top = torch.rand(batch, generator=generator) * (height - crop_h)
    right, bottom = left + crop_w - 1, top + crop_h - 1
    boxes = torch.stack(
        [torch.stack([left, top], 1), torch.stack([right, top], 1), torch.stack([right, bottom], 1), torch.stack([left, bottom], 1)],
        dim=1,
    ).to(pixels)
    cropped = kornia.geometry.transform.crop_and_resize(pixels, boxes, (height, width))
    flip = (torch.rand(batch, generator=generator) < 0.5).to(pixels.device).view(batch, 1, 1, 1)
    return torch.where(flip, cropped.flip(-1), cropped)


def _grayscale(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    factor = _uniform(generator, len(pixels), 0.5, 1.0).to(pixels).view(-1, 1, 1, 1)
    gray = kornia.color.rgb_to_grayscale(pixels).expand_as(pixels)
    return pixels + factor * (gray - pixels)


def _blur(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = _uniform(generator, len(pixels), 0.3, 1.2).to(pixels)
    return kornia.filters.gaussian_blur2d(pixels, (3, 3), torch.stack([sigma, sigma], dim=1))


_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "jpeg": _jpeg,
    "crop-flip": _crop_flip,
    "grayscale": _grayscale,
    "blur": _blur,
}


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
        return pixels if name is None else _OPERATIONS[name](pixels, generator)
