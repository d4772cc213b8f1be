"""Image defenses: what a scraper's pipeline, or a trainer who knows about unlearnable examples,
does to the published pixels. kornia does the image operations wherever it has them.

Every defense takes float (B, 3, H, W) batches in [0, 1] (the published uint8 images / 255, before
CLIP normalisation) and returns the same shape, clamped to [0, 1]. Operations that a real pipeline
would write back to 8-bit images (JPEG re-encoding, grayscale conversion, bit-depth reduction)
quantise their output to the 256 uint8 levels; in-training augmentations (noise, blur, mixing,
crops) stay float, as they would in a data loader.
"""

from __future__ import annotations

import math
from typing import Any

import kornia
import kornia.augmentation as K
import torch
from kornia.augmentation.auto import TrivialAugment

from .base import DefenseBase, LossClosure, quantize_8bit, seeded_global_rng

__all__ = [
    "AdversarialTraining",
    "BitDepthReduction",
    "CutMix",
    "Cutout",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "JPEG",
    "MixUp",
    "ResizedCropFlip",
    "UEraserLite",
    "jpeg_compress",
]


def jpeg_compress(pixels: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """JPEG encode-decode round trip at `quality` (1-100; a scalar or one per image), quantised to uint8 levels.

    kornia's `jpeg_codec_differentiable` implements the baseline codec (YCbCr, 4:2:0 chroma
    subsampling, 8x8 DCT, the standard IJG quantisation tables scaled by quality), the same
    settings as PIL's default encoder; tests/test_defenses.py checks it against PIL.
    """
    batch = pixels.shape[0]
    quality = torch.as_tensor(quality, dtype=pixels.dtype).flatten()
    if quality.numel() == 1:
        quality = quality.expand(batch)
    if quality.numel() != batch or bool(((quality < 1) | (quality > 100)).any()):
        raise ValueError(f"JPEG quality must be in [1, 100], one value or one per image; got {quality.tolist()}.")
    # The codec pads to whole 16x16 macro-blocks by edge replication (as encoders do) and crops back.
    with torch.no_grad():
        decoded = kornia.enhance.jpeg_codec_differentiable(pixels.clamp(0, 1), quality.contiguous())
    return quantize_8bit(decoded)


class JPEG(DefenseBase):
    """Re-encode every image as JPEG at a fixed quality (a scraper's re-compression; ISS uses quality 10).

    Liu et al., "Image Shortcut Squeezing: Countering Perturbative Availability Poisons with
    Compression", ICML 2023 (JPEG-10 is its strongest compression). kornia's codec; output
    quantised to uint8 as a decoded JPEG is.

    Args:
        quality: JPEG quality, 1-100 (the registry has 10, 30, 50, 75, 90).
    """

    def __init__(self, quality: int = 75, seed: int = 0):
        super().__init__(seed)
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality!r}.")
        self.quality = quality

    def apply(self, pixels, captions, generator, **hooks):
        return jpeg_compress(pixels, float(self.quality)), captions


class Grayscale(DefenseBase):
    """Convert to grayscale and back to 3 equal channels (ISS's grayscale squeezing, Liu et al. ICML 2023).

    kornia's `rgb_to_grayscale` (ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B, as PIL's "L"
    mode), replicated to 3 channels and quantised to uint8 as a saved grayscale image is.
    """

    def apply(self, pixels, captions, generator, **hooks):
        gray = kornia.color.rgb_to_grayscale(pixels)
        return quantize_8bit(gray).expand_as(pixels).contiguous(), captions


class BitDepthReduction(DefenseBase):
    """Keep `bits` bits per channel: round to 2**bits evenly spaced levels in [0, 1].

    The bit-depth squeezing of Xu et al., "Feature Squeezing", NDSS 2018 (also in ISS's
    comparison). By hand because kornia's `posterize` truncates the low bits (255 -> 192), which
    darkens the image rather than squeezing it.

    Args:
        bits: bits per channel, 1-8 (the registry's ``bit-depth-2`` keeps 2: 4 levels).
    """

    def __init__(self, bits: int = 2, seed: int = 0):
        super().__init__(seed)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in [1, 8], got {bits!r}.")
        self.bits = bits

    def apply(self, pixels, captions, generator, **hooks):
        levels = 2**self.bits - 1
        return quantize_8bit(torch.round(pixels.clamp(0, 1) * levels) / levels), captions


class GaussianBlur(DefenseBase):
    """Gaussian low-pass filter (kornia `gaussian_blur2d`, reflect padding): removes fine high-frequency noise.

    Args:
        sigma: standard deviation in pixels (default 1.0); the kernel spans +-2 sigma.
    """

    def __init__(self, sigma: float = 1.0, seed: int = 0):
        super().__init__(seed)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}.")
        self.sigma = float(sigma)
        self.kernel_size = 2 * math.ceil(2 * self.sigma) + 1

    def apply(self, pixels, captions, generator, **hooks):
        blurred = kornia.filters.gaussian_blur2d(pixels, self.kernel_size, (self.sigma, self.sigma), border_type="reflect")
        return blurred, captions


class GaussianNoise(DefenseBase):
    """Add i.i.d. Gaussian noise to every pixel ("Random Noise" of the MEM paper's Table 2).

    kornia's `RandomGaussianNoise` (p = 1). The default standard deviation, 8/255, is the
    protection's own budget: noise as strong as the perturbation it should drown.
    """

    def __init__(self, std: float = 8 / 255, seed: int = 0):
        super().__init__(seed)
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}.")
        self.std = float(std)
        self.augment = K.RandomGaussianNoise(mean=0.0, std=self.std, p=1.0)

    def apply(self, pixels, captions, generator, **hooks):
        with seeded_global_rng(generator):
            return self.augment(pixels), captions


class Cutout(DefenseBase):
    """Zero one square of a quarter of the image's area at a random place (DeVries & Taylor 2017).

    kornia's `RandomErasing` with a fixed scale 0.25 and aspect ratio 1 (a square of half the
    side, as Cutout's 16 px on 32 px CIFAR images), value 0, p = 1.
    """

    def __init__(self, area: float = 0.25, seed: int = 0):
        super().__init__(seed)
        if not 0 < area < 1:
            raise ValueError(f"area must be in (0, 1), got {area!r}.")
        self.area = float(area)
        self.augment = K.RandomErasing(scale=(self.area, self.area), ratio=(1.0, 1.0), value=0.0, p=1.0)

    def apply(self, pixels, captions, generator, **hooks):
        with seeded_global_rng(generator):
            return self.augment(pixels), captions


def _partner_captions(captions: list[str], pairs: torch.Tensor, mode: str) -> list[str]:
    if mode == "own":
        return captions
    return [f"{own} {captions[int(j)]}" if int(j) != i else own for i, (own, j) in enumerate(zip(captions, pairs))]


class MixUp(DefenseBase):
    """Blend each image with another of the batch (Zhang et al., ICLR 2018); kornia `RandomMixUpV2`.

    CLIP has no labels to mix. The MEM paper blends "images and their corresponding captions";
    here each image is ``(1 - lam) * own + lam * partner`` with the partner's weight ``lam``
    uniform in [0, 0.5], so the own image always dominates and keeps its own caption
    (``captions="own"``, default). ``captions="both"`` appends the partner's caption instead
    (a text-level blend).

    Args:
        max_partner_weight: upper end of ``lam`` (default 0.5).
        captions: "own" or "both".
    """

    def __init__(self, max_partner_weight: float = 0.5, captions: str = "own", seed: int = 0):
        super().__init__(seed)
        if not 0 < max_partner_weight <= 1:
            raise ValueError(f"max_partner_weight must be in (0, 1], got {max_partner_weight!r}.")
        if captions not in ("own", "both"):
            raise ValueError(f"captions must be 'own' or 'both', got {captions!r}.")
        self.captions = captions
        self.augment = K.RandomMixUpV2(lambda_val=(0.0, float(max_partner_weight)), p=1.0, data_keys=["input"])

    def apply(self, pixels, captions, generator, **hooks):
        if len(pixels) < 2:
            return pixels, captions
        with seeded_global_rng(generator):
            mixed = self.augment(pixels)
        pairs = self.augment._params["mixup_pairs"]
        return mixed, _partner_captions(captions, pairs, self.captions)


class CutMix(DefenseBase):
    """Paste a random box of another image of the batch (Yun et al., ICCV 2019); kornia `RandomCutMixV2`.

    The box covers at most half of the image (the mixing coefficient, the own image's share, is
    drawn from Beta(1, 1) clamped to [0.5, 1]), so each image keeps its own caption
    (``captions="own"``, default; ``"both"`` appends the partner's caption).
    """

    def __init__(self, captions: str = "own", seed: int = 0):
        super().__init__(seed)
        if captions not in ("own", "both"):
            raise ValueError(f"captions must be 'own' or 'both', got {captions!r}.")
        self.captions = captions
        self.augment = K.RandomCutMixV2(cut_size=(0.5, 1.0), p=1.0, data_keys=["input"], use_correct_lambda=True)

    def apply(self, pixels, captions, generator, **hooks):
        if len(pixels) < 2:
            return pixels, captions
        with seeded_global_rng(generator):
            mixed = self.augment(pixels)
        pairs = self.augment._params["mix_pairs"][0]
        return mixed, _partner_captions(captions, pairs, self.captions)


class ResizedCropFlip(DefenseBase):
    """CLIP training augmentation: random resized crop back to the input size, then horizontal flip.

    kornia `RandomResizedCrop` with open_clip's training scale (0.9, 1.0) and aspect ratio
    (3/4, 4/3), bicubic; `RandomHorizontalFlip` p = 0.5. (A flip swaps "left"/"right" in
    captions that name positions; a scraper's pipeline does not care.)
    """

    def __init__(self, scale: tuple[float, float] = (0.9, 1.0), flip: float = 0.5, seed: int = 0):
        super().__init__(seed)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}.")
        self.scale = tuple(scale)
        self.flip = K.RandomHorizontalFlip(p=flip)

    def apply(self, pixels, captions, generator, **hooks):
        crop = K.RandomResizedCrop(tuple(pixels.shape[-2:]), scale=self.scale, resample="BICUBIC", p=1.0)
        with seeded_global_rng(generator):
            return self.flip(crop(pixels)), captions


class UEraserLite(DefenseBase):
    """UEraser-Lite (Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress
    Unlearnable Example Attacks", 2023): strong random augmentation on every batch.

    The reference pipeline, in kornia: `RandomPlasmaBrightness` (roughness 0.1-0.7, intensity
    0-1, p = 1), `RandomPlasmaContrast` (roughness 0.1-0.7, p = 1), `RandomChannelShuffle`
    (p = 0.5), `TrivialAugment`, then a JPEG round trip at a random quality in [10, 100) per
    image (the reference's ``random_JPEG_compression``).
    """

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.augment = K.AugmentationSequential(
            K.RandomPlasmaBrightness(roughness=(0.1, 0.7), intensity=(0.0, 1.0), p=1.0),
            K.RandomPlasmaContrast(roughness=(0.1, 0.7), p=1.0),
            K.RandomChannelShuffle(p=0.5),
            TrivialAugment(),
        )

    def apply(self, pixels, captions, generator, **hooks):
        with seeded_global_rng(generator):
            augmented = self.augment(pixels).clamp(0, 1)
        quality = torch.randint(10, 100, (len(pixels),), generator=generator).float()
        return jpeg_compress(augmented, quality), captions


class AdversarialTraining(DefenseBase):
    """Adversarial training of the victim (Madry et al., ICLR 2018): train on PGD images that
    *maximise* the victim's current contrastive loss within an L-inf ball of radius `eps`.

    The MEM paper's strongest defense (its Table 2, "Adv. Training"). PGD: uniform random start in
    the ball, `steps` signed-gradient ascent steps of size `alpha` (default eps / 4), projection
    onto the ball and [0, 1] after each. Needs the victim: `train_victim` calls it with
    ``loss=`` (``needs_model = True``), the contrastive loss of the batch under the current
    weights with gradients to the pixels only. Float output (the perturbation lives in the
    trainer's pipeline, it is never saved).

    Args:
        eps: radius in [0, 1] pixel units (the registry: 4/255 and 8/255).
        steps: PGD steps (default 5).
        alpha: step size (default eps / 4).
    """

    needs_model = True

    def __init__(self, eps: float = 8 / 255, steps: int = 5, alpha: float | None = None, seed: int = 0):
        super().__init__(seed)
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixel units: 8/255, not 8), got {eps!r}.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
        self.eps = float(eps)
        self.steps = steps
        self.alpha = float(alpha) if alpha is not None else self.eps / 4

    def apply(self, pixels, captions, generator, loss: LossClosure | None = None, **hooks: Any):
        if loss is None:
            raise TypeError(
                "adversarial training needs the victim's loss: call it as defense(pixels, captions, generator, "
                "loss=fn) with fn(pixels, captions) -> scalar loss (train_victim does this for you)."
            )
        clean = pixels.detach()
        start = (torch.rand(clean.shape, generator=generator) * 2 - 1) * self.eps
        adversarial = (clean + start).clamp(0, 1)
        for _ in range(self.steps):
            adversarial.requires_grad_(True)
            value = loss(adversarial, captions)
            (gradient,) = torch.autograd.grad(value, adversarial)
            adversarial = adversarial.detach() + self.alpha * gradient.sign().to(adversarial.device)
            adversarial = torch.minimum(torch.maximum(adversarial, clean - self.eps), clean + self.eps).clamp(0, 1)
        return adversarial.detach(), captions
