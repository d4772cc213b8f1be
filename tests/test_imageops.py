"""The image operations (`hf_unlearnable.imageops`): one registry that EOT and the image defenses both
run, and outputs that did not change when they became one family: every image defense and every EOT
transformation gives, bit for bit, what it gave before.

The digests were taken from the separate implementations (defenses/image.py and mem/eot.py as they
were) on fixed inputs and generators; a change in any parameter, draw or kornia call changes them.
Floating-point results are exact only for the same torch and kornia releases on the same kind of CPU
kernel, so elsewhere the comparison is skipped, saying why.
"""

from __future__ import annotations

import dataclasses
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
    ImageDefense,
    MixUp,
    ResizedCropFlip,
    get_defense,
    jpeg_compress,
)
from hf_unlearnable.imageops import OPERATIONS, available_image_ops, image_op, register
from hf_unlearnable.mem.eot import EOT, EOT_TRANSFORMS, TRANSFORMATIONS

#: where the digests were taken: torch release (without its build tag), kornia release, CPU kernels
CAPTURED = {"torch": "2.13.0", "kornia": "0.9.0", "cpu": "AVX512"}


def where() -> dict[str, str]:
    return {
        "torch": torch.__version__.split("+")[0],
        "kornia": kornia.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }


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
    "jpeg-10",
    "jpeg-30",
    "jpeg-50",
    "jpeg-75",
    "jpeg-90",
    "iss-jpeg-10",
    "grayscale",
    "iss-grayscale",
    "bit-depth-2",
    "gaussian-blur",
    "gaussian-noise",
    "mixup",
    "cutout",
    "cutmix",
    "resized-crop-flip",
    "ueraser-lite",
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


# ------------------------------------------------------------------------------------ the registry
#: which registered operation each EOT transformation and each image defense runs
RUNS = {
    **{f"eot:{name}": name for name in ("jpeg", "crop-flip", "grayscale", "blur")},
    **{f"jpeg-{q}": "jpeg" for q in (10, 30, 50, 75, 90)},
    "iss-jpeg-10": "jpeg",
    "grayscale": "grayscale",
    "iss-grayscale": "grayscale",
    "bit-depth-2": "bit-depth",
    "gaussian-blur": "blur",
    "gaussian-noise": "gaussian-noise",
    "cutout": "cutout",
    "resized-crop-flip": "resized-crop-flip",
    "ueraser-lite": "ueraser-lite",
}


def test_the_registry_holds_one_operation_per_kind():
    assert available_image_ops() == [
        "jpeg",
        "grayscale",
        "blur",
        "crop-flip",
        "resized-crop-flip",
        "bit-depth",
        "gaussian-noise",
        "cutout",
        "mixup",
        "cutmix",
        "ueraser-lite",
    ]
    for operation in OPERATIONS.values():
        assert operation.summary and operation.source and (operation.function.__doc__ or "").strip()


def test_eot_and_the_defenses_run_the_registered_operation(monkeypatch):
    """A defense such as "jpeg-75" and the EOT transformation "jpeg" go through the one registered
    function, with their own parameters (a spy replaces each registry entry)."""
    calls = []

    def spy(name, function):
        def wrapped(pixels, generator, **parameters):
            calls.append((name, parameters))
            return function(pixels, generator, **parameters)

        return wrapped

    for name, operation in list(OPERATIONS.items()):
        monkeypatch.setitem(OPERATIONS, name, dataclasses.replace(operation, function=spy(name, operation.function)))
    pixels = batches()["square"]
    for label, expected in RUNS.items():
        calls.clear()
        if label.startswith("eot:"):
            EOT((label[4:],))(pixels, label[4:], torch.Generator().manual_seed(0))
        else:
            get_defense(label)(pixels, [""] * len(pixels), torch.Generator().manual_seed(0))
        assert [name for name, _ in calls] == [expected], label
    calls.clear()
    get_defense("jpeg-75")(pixels, [""] * len(pixels), torch.Generator())
    EOT(("jpeg",))(pixels, "jpeg", torch.Generator())
    assert calls == [("jpeg", {"quality": 75.0, "quantize": True}), ("jpeg", {"quality": (30.0, 95.0)})]


def test_mixing_defenses_give_the_registered_operations_pixels():
    pixels = batches()["square"]
    for defense, operation in (("mixup", "mixup"), ("cutmix", "cutmix")):
        ours, _ = get_defense(defense)(pixels.clone(), [""] * len(pixels), torch.Generator().manual_seed(4))
        assert torch.equal(ours, image_op(operation)(pixels.clone(), torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_each_operation_replays_from_its_generator_and_says_whether_it_is_differentiable(name):
    pixels = batches()["square"]
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    x = pixels.clone().requires_grad_(True)
    first = image_op(name)(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's global RNG is left alone
    assert torch.equal(first, image_op(name)(pixels.clone(), torch.Generator().manual_seed(1)))
    assert first.shape == pixels.shape and not torch.equal(first, pixels)
    gradient = torch.autograd.grad(first.sum(), x, allow_unused=True)[0] if first.requires_grad else None
    reaches = gradient is not None and bool(gradient.abs().sum() > 0)
    assert reaches == OPERATIONS[name].differentiable


def test_eot_transformations_are_registered_operations_with_drawn_parameters():
    for name, (operation, _) in TRANSFORMATIONS.items():
        assert operation.operation.differentiable, name
        assert any(isinstance(value, tuple) for value in operation.parameters.values()), name  # drawn per image
    with pytest.raises(ValueError, match="generator"):
        TRANSFORMATIONS["jpeg"][0](batches()["square"], None)


def test_a_new_operation_is_registered_once_and_serves_as_a_defense():
    try:

        @register("invert", summary="1 - pixels", source="by hand")
        def invert(pixels, generator, *, amount: float = 1.0):
            """Invert by `amount`."""
            return pixels + amount * (1 - 2 * pixels)

        pixels = batches()["odd"]
        out, texts = ImageDefense(image_op("invert"))(pixels, ["a", "b"], torch.Generator())
        assert torch.allclose(out, 1 - pixels) and texts == ["a", "b"]
        with pytest.raises(ValueError, match="already registered"):
            register("invert", summary="", source="")(invert)
    finally:
        OPERATIONS.pop("invert", None)
    with pytest.raises(ValueError, match="keyword-only with a default"):
        register("loose", summary="", source="")(lambda pixels, generator, amount: pixels)
    assert "loose" not in OPERATIONS


def test_unknown_names_and_parameters_name_the_valid_ones():
    with pytest.raises(ValueError, match="unknown image operation 'jpg'.*'jpeg'"):
        image_op("jpg")
    with pytest.raises(TypeError, match=r"takes no parameter \['q'\]; it takes \['quality', 'quantize'\]"):
        image_op("jpeg", q=75)
    with pytest.raises(ValueError, match="JPEG quality must be in"):
        image_op("jpeg", quality=(0.0, 50.0))(batches()["odd"], torch.Generator())
    with pytest.raises(TypeError, match="image_op"):
        ImageDefense("jpeg")
    assert image_op("jpeg", quality=75.0) == image_op("jpeg", quality=75.0) != image_op("jpeg", quality=50.0)
    assert repr(image_op("blur", sigma=(0.3, 1.2))) == "image_op('blur', sigma=(0.3, 1.2))"
