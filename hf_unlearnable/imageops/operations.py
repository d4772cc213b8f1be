"""The registered image operations. kornia does the work wherever it has the operation.

Every operation takes float (B, 3, H, W) pixels in [0, 1] and a `torch.Generator`, the only source of
its randomness: a parameter given as a ``(low, high)`` range is drawn per image from it, and kornia's
augmentations, which take no generator, run under torch's global RNG seeded from it
(`seeded_global_rng`). ``quantize=True`` rounds the output to the 256 uint8 levels, as writing the
image back to a file does; it also stops the gradient.
"""

from __future__ import annotations

import contextlib
import functools
import math

import kornia
import kornia.augmentation as K
import torch
from kornia.augmentation.auto import TrivialAugment

from .base import draw, quantize_8bit, register, seeded_global_rng, uniform

__all__ = [
    "bit_depth",
    "blur",
    "blur_kernel_size",
    "crop_flip",
    "cutmix",
    "cutmix_with_partners",
    "cutout",
    "gaussian_noise",
    "grayscale",
    "jpeg",
    "jpeg_compress",
    "mixup",
    "mixup_with_partners",
    "resized_crop_flip",
    "ueraser_lite",
]

Range = tuple[float, float]


def check_range(name: str, value: float | Range | torch.Tensor, low: float, high: float) -> None:
    """Raise ValueError unless every value of a number, a range or a tensor lies in [low, high]."""
    values = torch.as_tensor(value, dtype=torch.float64).flatten()
    if values.numel() == 0 or bool(((values < low) | (values > high)).any()):
        shown = values.tolist() if not isinstance(value, tuple) else list(value)
        raise ValueError(
            f"{name} must be in [{low:g}, {high:g}], one value, a (low, high) range or one per image; got {shown}."
        )


@register(
    "jpeg",
    summary="JPEG encode-decode round trip at `quality` (1-100): baseline codec, 4:2:0 chroma, IJG tables",
    source="kornia.enhance.jpeg_codec_differentiable",
)
def jpeg(
    pixels: torch.Tensor,
    generator: torch.Generator | None,
    *,
    quality: float | Range | torch.Tensor = 75.0,
    quantize: bool = False,
) -> torch.Tensor:
    """JPEG round trip. `quality`: one number, a ``(low, high)`` range drawn per image, or one per image.

    kornia's codec implements the baseline codec (YCbCr, 4:2:0 chroma subsampling, 8x8 DCT, the
    standard IJG quantisation tables scaled by quality), the same settings as PIL's default
    encoder; it pads to whole 16x16 macro-blocks by edge replication (as encoders do) and crops
    back. tests/test_defenses.py checks it against PIL.
    """
    batch = pixels.shape[0]
    check_range("JPEG quality", quality, 1, 100)  # a drawn range lies inside its ends
    quality = torch.as_tensor(draw(quality, generator, batch), dtype=pixels.dtype).flatten().to(pixels.device)
    if quality.numel() == 1:
        quality = quality.expand(batch)
    if quality.numel() != batch:
        raise ValueError(f"JPEG quality must be one value or one per image ({batch}); got {quality.numel()} values.")
    with torch.no_grad() if quantize else contextlib.nullcontext():  # rounding stops the gradient anyway
        decoded = kornia.enhance.jpeg_codec_differentiable(pixels.clamp(0, 1), quality.contiguous())
    return quantize_8bit(decoded) if quantize else decoded


def jpeg_compress(pixels: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """JPEG round trip at `quality` (1-100; a number or one per image), quantised to uint8 levels:
    the ``jpeg`` operation with ``quantize=True``."""
    return jpeg(pixels, None, quality=quality if isinstance(quality, torch.Tensor) else float(quality), quantize=True)


@register(
    "grayscale",
    summary="toward grayscale (ITU-R 601 luma, as PIL's 'L'), by `amount` (1: the luma in all 3 channels)",
    source="kornia.color.rgb_to_grayscale",
)
def grayscale(
    pixels: torch.Tensor, generator: torch.Generator | None, *, amount: float | Range = 1.0, quantize: bool = False
) -> torch.Tensor:
    """Blend each image toward its luma by `amount` (a number or a ``(low, high)`` range drawn per image);
    amount 1 gives the luma itself, replicated to 3 channels."""
    gray = kornia.color.rgb_to_grayscale(pixels)
    if not isinstance(amount, tuple) and amount == 1:
        return (quantize_8bit(gray) if quantize else gray).expand_as(pixels).contiguous()
    factor = torch.as_tensor(draw(amount, generator, len(pixels))).to(pixels).view(-1, 1, 1, 1)
    blended = pixels + factor * (gray.expand_as(pixels) - pixels)
    return quantize_8bit(blended) if quantize else blended


def blur_kernel_size(sigma: float) -> int:
    """The odd kernel side that spans +-2 sigma."""
    return 2 * math.ceil(2 * sigma) + 1


@register(
    "blur",
    summary="Gaussian blur, standard deviation `sigma` px, reflect padding",
    source="kornia.filters.gaussian_blur2d",
)
def blur(
    pixels: torch.Tensor,
    generator: torch.Generator | None,
    *,
    sigma: float | Range = 1.0,
    kernel_size: int | None = None,
) -> torch.Tensor:
    """Gaussian low-pass filter. `sigma`: a number or a ``(low, high)`` range drawn per image;
    `kernel_size`: default `blur_kernel_size` of the largest sigma."""
    if kernel_size is None:
        kernel_size = blur_kernel_size(max(sigma) if isinstance(sigma, tuple) else sigma)
    drawn = draw(sigma, generator, len(pixels))
    if isinstance(drawn, torch.Tensor):
        drawn = drawn.to(pixels)
        drawn = torch.stack([drawn, drawn], dim=1) if drawn.ndim == 1 else drawn
    else:
        drawn = (float(drawn), float(drawn))
    return kornia.filters.gaussian_blur2d(pixels, kernel_size, drawn, border_type="reflect")


@register(
    "crop-flip",
    summary="random resized crop at sub-pixel boxes (area `scale`, aspect `ratio`), bilinear, then a flip with "
    "probability `flip`; every number from the generator",
    source="kornia.geometry.transform.crop_and_resize",
)
def crop_flip(
    pixels: torch.Tensor,
    generator: torch.Generator | None,
    *,
    scale: Range = (0.5, 1.0),
    ratio: Range = (3 / 4, 4 / 3),
    flip: float = 0.5,
) -> torch.Tensor:
    """Crop a box of a random fraction `scale` of the area and aspect ratio in `ratio` (log-uniform),
    resize it back bilinearly, and mirror it with probability `flip`. The boxes are not rounded to
    whole pixels, so the output moves smoothly with every drawn number. (EOT's crop; the defense's is
    ``resized-crop-flip``, whose whole-pixel boxes come from kornia's own sampler: other draws, so
    other outputs, hence two operations.)"""
    if generator is None:
        raise ValueError("crop-flip draws its boxes from a generator; pass one.")
    batch, _, height, width = pixels.shape
    area = uniform(generator, batch, *scale)
    log_ratio = uniform(
        generator, batch, float(torch.log(torch.tensor(ratio[0]))), float(torch.log(torch.tensor(ratio[1])))
    )
    ratio_drawn = torch.exp(log_ratio)
    crop_w = (torch.sqrt(area * ratio_drawn) * width).clamp(2, width)
    crop_h = (torch.sqrt(area / ratio_drawn) * height).clamp(2, height)
    left = torch.rand(batch, generator=generator) * (width - crop_w)
    top = torch.rand(batch, generator=generator) * (height - crop_h)
    right, bottom = left + crop_w - 1, top + crop_h - 1
    corners = [torch.stack(corner, 1) for corner in ((left, top), (right, top), (right, bottom), (left, bottom))]
    cropped = kornia.geometry.transform.crop_and_resize(pixels, torch.stack(corners, dim=1).to(pixels), (height, width))
    flipped = (torch.rand(batch, generator=generator) < flip).to(pixels.device).view(batch, 1, 1, 1)
    return torch.where(flipped, cropped.flip(-1), cropped)


@register(
    "resized-crop-flip",
    summary="kornia's random resized crop back to the input size (area `scale`, aspect `ratio`, `resample`), then "
    "a horizontal flip with probability `flip`",
    source="kornia.augmentation.RandomResizedCrop, RandomHorizontalFlip",
)
def resized_crop_flip(
    pixels: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: Range = (0.9, 1.0),
    ratio: Range = (3 / 4, 4 / 3),
    resample: str = "BICUBIC",
    flip: float = 0.5,
) -> torch.Tensor:
    """CLIP's training augmentation as open_clip configures it (scale 0.9-1, bicubic), in kornia:
    whole-pixel crop boxes from kornia's sampler."""
    crop = K.RandomResizedCrop(
        tuple(pixels.shape[-2:]), scale=tuple(scale), ratio=tuple(ratio), resample=resample, p=1.0
    )
    mirror = K.RandomHorizontalFlip(p=flip)
    with seeded_global_rng(generator):
        return mirror(crop(pixels))


@register(
    "bit-depth",
    summary="keep `bits` bits per channel: round to 2**bits evenly spaced levels (feature squeezing)",
    source="by hand (kornia.enhance.posterize truncates: 255 -> 192)",
    differentiable=False,
)
def bit_depth(pixels: torch.Tensor, generator: torch.Generator | None, *, bits: int = 2) -> torch.Tensor:
    """Round to the nearest of ``2**bits`` levels in [0, 1], as 8-bit levels."""
    levels = 2**bits - 1
    return quantize_8bit(torch.round(pixels.clamp(0, 1) * levels) / levels)


@register(
    "gaussian-noise",
    summary="add i.i.d. Gaussian noise of standard deviation `std`",
    source="kornia.augmentation.RandomGaussianNoise",
)
def gaussian_noise(pixels: torch.Tensor, generator: torch.Generator, *, std: float = 8 / 255) -> torch.Tensor:
    """Zero-mean Gaussian noise on every pixel and channel (p = 1)."""
    augment = K.RandomGaussianNoise(mean=0.0, std=float(std), p=1.0)
    with seeded_global_rng(generator):
        return augment(pixels)


@register(
    "cutout",
    summary="zero one square of `area` of the image at a random place",
    source="kornia.augmentation.RandomErasing",
)
def cutout(pixels: torch.Tensor, generator: torch.Generator, *, area: float = 0.25) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): RandomErasing with scale `area`, aspect ratio 1, value 0, p = 1."""
    augment = K.RandomErasing(scale=(float(area), float(area)), ratio=(1.0, 1.0), value=0.0, p=1.0)
    with seeded_global_rng(generator):
        return augment(pixels)


def mixup_with_partners(
    pixels: torch.Tensor, generator: torch.Generator, max_partner_weight: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MixUp and the partner of each image: ``(1 - lam) * own + lam * partner``, ``lam`` uniform in
    [0, max_partner_weight]. A batch of one is returned as it is, with no partners (None)."""
    if len(pixels) < 2:
        return pixels, None
    augment = K.RandomMixUpV2(lambda_val=(0.0, float(max_partner_weight)), p=1.0, data_keys=["input"])
    with seeded_global_rng(generator):
        mixed = augment(pixels)
    return mixed, augment._params["mixup_pairs"]


@register(
    "mixup",
    summary="blend each image with another of the batch, partner weight <= `max_partner_weight`",
    source="kornia.augmentation.RandomMixUpV2",
)
def mixup(pixels: torch.Tensor, generator: torch.Generator, *, max_partner_weight: float = 0.5) -> torch.Tensor:
    """MixUp (Zhang et al., ICLR 2018); `mixup_with_partners` also says which image each one took."""
    return mixup_with_partners(pixels, generator, max_partner_weight)[0]


def cutmix_with_partners(pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CutMix and the partner of each image: a box of at most half the image (the own share drawn
    from Beta(1, 1) clamped to [0.5, 1]) from another image of the batch. A batch of one is
    returned as it is, with no partners (None)."""
    if len(pixels) < 2:
        return pixels, None
    augment = K.RandomCutMixV2(cut_size=(0.5, 1.0), p=1.0, data_keys=["input"], use_correct_lambda=True)
    with seeded_global_rng(generator):
        mixed = augment(pixels)
    return mixed, augment._params["mix_pairs"][0]


@register(
    "cutmix",
    summary="paste a box (at most half the image) of another image of the batch",
    source="kornia.augmentation.RandomCutMixV2",
)
def cutmix(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CutMix (Yun et al., ICCV 2019); `cutmix_with_partners` also says which image each one took."""
    return cutmix_with_partners(pixels, generator)[0]


@functools.cache
def ueraser_augment() -> K.AugmentationSequential:
    """UEraser-Lite's kornia pipeline (built once; its parameters are drawn per call)."""
    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(roughness=(0.1, 0.7), intensity=(0.0, 1.0), p=1.0),
        K.RandomPlasmaContrast(roughness=(0.1, 0.7), p=1.0),
        K.RandomChannelShuffle(p=0.5),
        TrivialAugment(),
    )


@register(
    "ueraser-lite",
    summary="UEraser-Lite: plasma brightness and contrast, channel shuffle, TrivialAugment, JPEG at a quality in [10, 100)",
    source="kornia.augmentation (RandomPlasmaBrightness, RandomPlasmaContrast, RandomChannelShuffle, TrivialAugment), then jpeg",
    differentiable=False,
)
def ueraser_lite(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Qin et al., "Learning the Unlearnable", 2023: the reference's augmentations (RandomPlasmaBrightness
    roughness 0.1-0.7, intensity 0-1; RandomPlasmaContrast roughness 0.1-0.7; RandomChannelShuffle
    p = 0.5; TrivialAugment), then its ``random_JPEG_compression``: a whole quality in [10, 100) per image."""
    with seeded_global_rng(generator):
        augmented = ueraser_augment()(pixels).clamp(0, 1)
    quality = torch.randint(10, 100, (len(pixels),), generator=generator).float()
    return jpeg_compress(augmented, quality)
