"""The image operations keep their outputs: every image defense and every EOT transformation gives,
bit for bit, what it gave before they became one registered family (`hf_unlearnable.imageops`).

The digests were taken from the separate implementations (defenses/image.py and mem/eot.py as they
were) on fixed inputs and generators; a change in any parameter, draw or kornia call changes them.
Floating-point results are exact only for the same torch and kornia releases on the same kind of CPU
kernel, so elsewhere the comparison is skipped, saying why.
"""

from __future__ import annotations

import hashlib

import kornia
import pytest
import torch

from hf_unlearnable.defenses import (
    JPEG,
    BitDepthReduction,
    CutMix,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    MixUp,
    ResizedCropFlip,
    get_defense,
    jpeg_compress,
)
from hf_unlearnable.mem.eot import EOT, EOT_TRANSFORMS

#: where the digests were taken: torch release (without its build tag), kornia release, CPU kernels
CAPTURED = {"torch": "2.13.0", "kornia": "0.9.0", "cpu": "AVX512"}


def where() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "kornia": kornia.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability()}


def digest(*parts) -> str:
    """First 16 hex digits of a SHA-256 over each tensor's shape, dtype and bytes (or another value's repr)."""
    hashed = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            hashed.update(f"{tuple(part.shape)}{part.dtype}".encode())
            hashed.update(part.detach().contiguous().numpy().tobytes())
        else:
            hashed.update(repr(part).encode())
    return hashed.hexdigest()[:16]


def batches() -> dict[str, torch.Tensor]:
    """A square batch of 6 and a batch of 2 whose sides are not multiples of 16 (JPEG pads them)."""
    return {
        "square": torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        "odd": torch.rand(2, 3, 30, 41, generator=torch.Generator().manual_seed(1)),
    }


IMAGE_DEFENSES = [
    "jpeg-10", "jpeg-30", "jpeg-50", "jpeg-75", "jpeg-90", "iss-jpeg-10", "grayscale", "iss-grayscale", "bit-depth-2",
    "gaussian-blur", "gaussian-noise", "mixup", "cutout", "cutmix", "resized-crop-flip", "ueraser-lite",
]
#: the defense classes with parameters other than the registry's
CUSTOM = {
    "JPEG(37)": lambda: JPEG(37),
    "GaussianBlur(0.6)": lambda: GaussianBlur(0.6),
    "BitDepthReduction(3)": lambda: BitDepthReduction(3),
    "GaussianNoise(0.1)": lambda: GaussianNoise(0.1),
    "Cutout(0.1)": lambda: Cutout(0.1),
    "MixUp(0.3,both)": lambda: MixUp(0.3, captions="both"),
    "CutMix(both)": lambda: CutMix(captions="both"),
    "ResizedCropFlip((0.5,0.8),1.0)": lambda: ResizedCropFlip(scale=(0.5, 0.8), flip=1.0),
}

DEFENSE_DIGESTS = {
    "jpeg-10/square": "c5d314d5294fad39",
    "jpeg-30/square": "3137d9a1a3c98a65",
    "jpeg-50/square": "9c8336d751ed9572",
    "jpeg-75/square": "0133df2ee7a7979e",
    "jpeg-90/square": "35c9b9ad6fff5dc9",
    "iss-jpeg-10/square": "c5d314d5294fad39",
    "grayscale/square": "42e6530172330b32",
    "iss-grayscale/square": "42e6530172330b32",
    "bit-depth-2/square": "b82d5a972adb7b60",
    "gaussian-blur/square": "66c12505aa758f30",
    "gaussian-noise/square": "081bd706a83c3a38",
    "mixup/square": "90bf277bd15bf277",
    "cutout/square": "bf1a423d24af0b4c",
    "cutmix/square": "23e7178de56967d9",
    "resized-crop-flip/square": "c56e1f715401bbd4",
    "ueraser-lite/square": "9aa1ff752fe151f4",
    "JPEG(37)/square": "f8a47b6746583ebf",
    "GaussianBlur(0.6)/square": "1993e7bc1eb7c039",
    "BitDepthReduction(3)/square": "84fdb3963907a586",
    "GaussianNoise(0.1)/square": "7b7e8bf0b5217c95",
    "Cutout(0.1)/square": "ee87d8b78594188f",
    "MixUp(0.3,both)/square": "604b9c840b7c2924",
    "CutMix(both)/square": "1776ed9df97b6138",
    "ResizedCropFlip((0.5,0.8),1.0)/square": "3f3cfa56be8c1cec",
    "gaussian-noise(seed=7)/square": "f8ed8af8ab36d364",
    "ueraser-lite(seed=7)/square": "740e3d5521ceb7f6",
    "jpeg_compress(per image)/square": "78409d9dc3cab42e",
    "jpeg-10/odd": "b47194a2c4ce4608",
    "jpeg-30/odd": "0883c60262851704",
    "jpeg-50/odd": "93587b5ccf5f2135",
    "jpeg-75/odd": "1c0f77ed835f72a6",
    "jpeg-90/odd": "89d6a5bba089ff5e",
    "iss-jpeg-10/odd": "b47194a2c4ce4608",
    "grayscale/odd": "2dac1514115acc1a",
    "iss-grayscale/odd": "2dac1514115acc1a",
    "bit-depth-2/odd": "b3d47c0edef1dac6",
    "gaussian-blur/odd": "557557feec860a6a",
    "gaussian-noise/odd": "3fcc2f7d846928db",
    "mixup/odd": "3e82d83f70080017",
    "cutout/odd": "714f2505f69563ce",
    "cutmix/odd": "ee0870b77c717876",
    "resized-crop-flip/odd": "09079d4b56996330",
    "ueraser-lite/odd": "cede806d414eee69",
    "JPEG(37)/odd": "6fbf723b6fde1ab5",
    "GaussianBlur(0.6)/odd": "a157befdfe1bb0e4",
    "BitDepthReduction(3)/odd": "5597b820e9592bfd",
    "GaussianNoise(0.1)/odd": "4355187ef2201996",
    "Cutout(0.1)/odd": "aa5ec81c0d54f1e3",
    "MixUp(0.3,both)/odd": "f5b3fbd607ff117a",
    "CutMix(both)/odd": "ee0870b77c717876",
    "ResizedCropFlip((0.5,0.8),1.0)/odd": "923f2319f3f8fe4e",
    "gaussian-noise(seed=7)/odd": "cec825b5e0839490",
    "ueraser-lite(seed=7)/odd": "a93e03ec907c5d82",
    "jpeg_compress(per image)/odd": "34821fae35bc912f",
}

EOT_DIGESTS = {
    "blur/square": "92896d105fab803e",
    "crop-flip/square": "44e92f3659b7a7a4",
    "grayscale/square": "9b60e7e0e94519d3",
    "jpeg/square": "db3f6680a4bf60cf",
    "blur/odd": "58c1a21361dcecf1",
    "crop-flip/odd": "6b91913f631449bb",
    "grayscale/odd": "6cf2c76875849bba",
    "jpeg/odd": "960d91df9791d1fe",
}


def defense_digests() -> dict[str, str]:
    """Pixels and captions of every image defense on both batches (generator seed 3), two defenses
    on their own seed, and `jpeg_compress` with one quality per image."""
    makers = {name: (lambda name=name: get_defense(name)) for name in IMAGE_DEFENSES} | CUSTOM
    found = {}
    for label, pixels in batches().items():
        captions = [f"caption {i}" for i in range(len(pixels))]
        for name, make in makers.items():
            found[f"{name}/{label}"] = digest(*make()(pixels.clone(), captions, torch.Generator().manual_seed(3)))
        for name in ("gaussian-noise", "ueraser-lite"):
            found[f"{name}(seed=7)/{label}"] = digest(*get_defense(name, seed=7)(pixels.clone(), captions))
        found[f"jpeg_compress(per image)/{label}"] = digest(jpeg_compress(pixels, torch.linspace(5, 95, len(pixels))))
    return found


def eot_digests() -> dict[str, str]:
    """Each EOT transformation's output, the gradient of a fixed weighting of it, and the generator's
    next draw (so a transformation that draws more or fewer numbers shows)."""
    found = {}
    for label, pixels in batches().items():
        weights = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(2))
        for name in sorted(EOT_TRANSFORMS):
            x = pixels.clone().requires_grad_(True)
            generator = torch.Generator().manual_seed(1)
            seen = EOT((name,))(x, name, generator)
            (gradient,) = torch.autograd.grad((seen * weights).sum(), x)
            found[f"{name}/{label}"] = digest(seen, gradient, torch.rand(1, generator=generator))
    return found


def exact_here() -> None:
    if where() != CAPTURED:
        pytest.skip(f"digests were taken with {CAPTURED}; this is {where()}: float results may differ in the last bit")


def test_every_image_defense_gives_what_it_gave():
    exact_here()
    found = defense_digests()
    changed = sorted(name for name in DEFENSE_DIGESTS if found.get(name) != DEFENSE_DIGESTS[name])
    assert not changed, f"image defenses whose output changed: {changed}"


def test_every_eot_transformation_gives_what_it_gave():
    exact_here()
    found = eot_digests()
    changed = sorted(name for name in EOT_DIGESTS if found.get(name) != EOT_DIGESTS[name])
    assert not changed, f"EOT transformations whose output, gradient or draws changed: {changed}"
