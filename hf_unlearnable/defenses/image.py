"""Image defenses: what a scraper's pipeline, or a trainer who knows about unlearnable examples,
does to the published pixels. Each applies one operation of `hf_unlearnable.imageops` (kornia's
wherever kornia has it) with fixed parameters: the same code that EOT runs inside PGD.

Every defense takes float (B, 3, H, W) batches in [0, 1] (the published uint8 images / 255, before
CLIP normalisation) and returns the same shape, clamped to [0, 1]. Operations that a real pipeline
would write back to 8-bit images (JPEG re-encoding, grayscale conversion, bit-depth reduction)
quantise their output to the 256 uint8 levels; in-training augmentations (noise, blur, mixing,
crops) stay float, as they would in a data loader.
"""

from __future__ import annotations

from typing import Any

import torch

from ..imageops import (
    ImageOp,
    blur_kernel_size,
    cutmix_with_partners,
    image_op,
    jpeg_compress,
    mixup_with_partners,
)
from .base import DefenseBase, LossClosure

__all__ = [
    "AdversarialTraining",
    "BitDepthReduction",
    "CutMix",
    "Cutout",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "ImageDefense",
    "JPEG",
    "MixUp",
    "ResizedCropFlip",
    "UEraserLite",
    "jpeg_compress",
]


class ImageDefense(DefenseBase):
    """Apply one registered image operation with its parameters bound; captions pass through.

    Args:
        operation: an `hf_unlearnable.imageops.image_op`, e.g. ``image_op("jpeg", quality=40, quantize=True)``.
    """

    def __init__(self, operation: ImageOp, seed: int = 0):
        super().__init__(seed)
        if not isinstance(operation, ImageOp):
            raise TypeError(f"operation must be an image_op(name, **parameters), got {type(operation).__name__}.")
        self.operation = operation

    def apply(self, pixels, captions, generator, **hooks):
        return self.operation(pixels, generator), captions


class JPEG(ImageDefense):
    """Re-encode every image as JPEG at a fixed quality (a scraper's re-compression; ISS uses quality 10).

    Liu et al., "Image Shortcut Squeezing: Countering Perturbative Availability Poisons with
    Compression", ICML 2023 (JPEG-10 is its strongest compression). The ``jpeg`` operation
    (kornia's codec); output quantised to uint8 as a decoded JPEG is.

    Args:
        quality: JPEG quality, 1-100 (the registry has 10, 30, 50, 75, 90).
    """

    def __init__(self, quality: int = 75, seed: int = 0):
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality!r}.")
        super().__init__(image_op("jpeg", quality=float(quality), quantize=True), seed)
        self.quality = quality


class Grayscale(ImageDefense):
    """Convert to grayscale and back to 3 equal channels (ISS's grayscale squeezing, Liu et al. ICML 2023).

    The ``grayscale`` operation: kornia's `rgb_to_grayscale` (ITU-R 601 luma, 0.299 R + 0.587 G +
    0.114 B, as PIL's "L" mode), replicated to 3 channels and quantised to uint8 as a saved
    grayscale image is.
    """

    def __init__(self, seed: int = 0):
        super().__init__(image_op("grayscale", amount=1.0, quantize=True), seed)


class BitDepthReduction(ImageDefense):
    """Keep `bits` bits per channel: round to 2**bits evenly spaced levels in [0, 1].

    The bit-depth squeezing of Xu et al., "Feature Squeezing", NDSS 2018 (also in ISS's
    comparison). By hand because kornia's `posterize` truncates the low bits (255 -> 192), which
    darkens the image rather than squeezing it.

    Args:
        bits: bits per channel, 1-8 (the registry's ``bit-depth-2`` keeps 2: 4 levels).
    """

    def __init__(self, bits: int = 2, seed: int = 0):
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in [1, 8], got {bits!r}.")
        super().__init__(image_op("bit-depth", bits=bits), seed)
        self.bits = bits


class GaussianBlur(ImageDefense):
    """Gaussian low-pass filter (kornia `gaussian_blur2d`, reflect padding): removes fine high-frequency noise.

    Args:
        sigma: standard deviation in pixels (default 1.0); the kernel spans +-2 sigma.
    """

    def __init__(self, sigma: float = 1.0, seed: int = 0):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}.")
        self.sigma = float(sigma)
        self.kernel_size = blur_kernel_size(self.sigma)
        super().__init__(image_op("blur", sigma=self.sigma, kernel_size=self.kernel_size), seed)


class GaussianNoise(ImageDefense):
    """Add i.i.d. Gaussian noise to every pixel ("Random Noise" of the MEM paper's Table 2).

    kornia's `RandomGaussianNoise` (p = 1). The default standard deviation, 8/255, is the
    protection's own budget: noise as strong as the perturbation it should drown.
    """

    def __init__(self, std: float = 8 / 255, seed: int = 0):
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}.")
        self.std = float(std)
        super().__init__(image_op("gaussian-noise", std=self.std), seed)


class Cutout(ImageDefense):
    """Zero one square of a quarter of the image's area at a random place (DeVries & Taylor 2017).

    kornia's `RandomErasing` with a fixed scale 0.25 and aspect ratio 1 (a square of half the
    side, as Cutout's 16 px on 32 px CIFAR images), value 0, p = 1.
    """

    def __init__(self, area: float = 0.25, seed: int = 0):
        if not 0 < area < 1:
            raise ValueError(f"area must be in (0, 1), got {area!r}.")
        self.area = float(area)
        super().__init__(image_op("cutout", area=self.area), seed)


def _partner_captions(captions: list[str], pairs: torch.Tensor, mode: str) -> list[str]:
    if mode == "own":
        return captions
    return [f"{own} {captions[int(j)]}" if int(j) != i else own for i, (own, j) in enumerate(zip(captions, pairs))]


class MixUp(DefenseBase):
    """Blend each image with another of the batch (Zhang et al., ICLR 2018); the ``mixup`` operation
    (kornia `RandomMixUpV2`).

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
        self.max_partner_weight = float(max_partner_weight)

    def apply(self, pixels, captions, generator, **hooks):
        mixed, pairs = mixup_with_partners(pixels, generator, self.max_partner_weight)
        return mixed, captions if pairs is None else _partner_captions(captions, pairs, self.captions)


class CutMix(DefenseBase):
    """Paste a random box of another image of the batch (Yun et al., ICCV 2019); the ``cutmix``
    operation (kornia `RandomCutMixV2`).

    The box covers at most half of the image (the mixing coefficient, the own image's share, is
    drawn from Beta(1, 1) clamped to [0.5, 1]), so each image keeps its own caption
    (``captions="own"``, default; ``"both"`` appends the partner's caption).
    """

    def __init__(self, captions: str = "own", seed: int = 0):
        super().__init__(seed)
        if captions not in ("own", "both"):
            raise ValueError(f"captions must be 'own' or 'both', got {captions!r}.")
        self.captions = captions

    def apply(self, pixels, captions, generator, **hooks):
        mixed, pairs = cutmix_with_partners(pixels, generator)
        return mixed, captions if pairs is None else _partner_captions(captions, pairs, self.captions)


class ResizedCropFlip(ImageDefense):
    """CLIP training augmentation: random resized crop back to the input size, then horizontal flip.

    The ``resized-crop-flip`` operation: kornia `RandomResizedCrop` with open_clip's training scale
    (0.9, 1.0) and aspect ratio (3/4, 4/3), bicubic; `RandomHorizontalFlip` p = 0.5. (A flip swaps
    "left"/"right" in captions that name positions; a scraper's pipeline does not care.)
    """

    def __init__(self, scale: tuple[float, float] = (0.9, 1.0), flip: float = 0.5, seed: int = 0):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}.")
        self.scale = tuple(scale)
        super().__init__(image_op("resized-crop-flip", scale=self.scale, flip=flip), seed)


class UEraserLite(ImageDefense):
    """UEraser-Lite (Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress
    Unlearnable Example Attacks", 2023): strong random augmentation on every batch.

    The ``ueraser-lite`` operation, the reference pipeline in kornia: `RandomPlasmaBrightness`
    (roughness 0.1-0.7, intensity 0-1, p = 1), `RandomPlasmaContrast` (roughness 0.1-0.7, p = 1),
    `RandomChannelShuffle` (p = 0.5), `TrivialAugment`, then a JPEG round trip at a random quality
    in [10, 100) per image (the reference's ``random_JPEG_compression``).
    """

    def __init__(self, seed: int = 0):
        super().__init__(image_op("ueraser-lite"), seed)


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
