"""Expectation over transformation in PGD (`hf_unlearnable.mem.eot`)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_unlearnable import MEMConfig
from hf_unlearnable.defenses import get_defense
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.mem.eot import EOT, EOT_TRANSFORMS
from hf_unlearnable.mem.pgd import PGD
from hf_unlearnable.surrogate import pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions

from .conftest import trained_surrogate


def pixels(seed=0, batch=4, size=32):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(EOT_TRANSFORMS))
def test_each_transformation_is_differentiable_and_replays_from_its_generator(name):
    eot = EOT((name,))
    x = pixels().requires_grad_(True)
    first = eot(x, name, torch.Generator().manual_seed(1))
    again = eot(x, name, torch.Generator().manual_seed(1))
    other = eot(x, name, torch.Generator().manual_seed(2))
    assert first.shape == x.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    (gradient,) = torch.autograd.grad(first.sum(), x)
    assert gradient.abs().sum() > 0


def test_eot_jpeg_matches_pil_jpeg_at_the_drawn_quality():
    image = np.array(synthetic_captions(1, 32, seed=3)[0]["image"].convert("RGB"))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    generator = torch.Generator().manual_seed(0)
    quality = float(30 + 65 * torch.rand(1, generator=torch.Generator().manual_seed(0)))  # what _jpeg draws first
    ours = EOT(("jpeg",))(x, "jpeg", generator)[0].permute(1, 2, 0).detach().numpy() * 255
    stream = io.BytesIO()
    Image.fromarray(image).save(stream, format="JPEG", quality=round(quality))
    pil = np.asarray(Image.open(stream)).astype(np.float32)
    assert (
        np.abs(ours - pil).mean() < 0.8 * np.abs(image.astype(np.float32) - pil).mean()
    )  # closer to PIL's JPEG than the input is
    assert np.abs(ours - image).mean() > 0.5  # it really compresses


def test_eot_grayscale_pulls_channels_together_and_crop_flip_moves_pixels():
    x = pixels(batch=8)
    gray = EOT(("grayscale",))(x, "grayscale", torch.Generator().manual_seed(0))
    assert gray.std(dim=1).mean() < 0.5 * x.std(dim=1).mean()
    moved = EOT(("crop-flip",))(x, "crop-flip", torch.Generator().manual_seed(0))
    assert (moved - x).abs().mean() > 0.1


def test_draws_include_the_identity_and_every_named_transformation():
    eot = EOT(("jpeg", "blur"))
    generator = torch.Generator().manual_seed(0)
    drawn = {eot.draw(generator) for _ in range(200)}
    assert drawn == {None, "jpeg", "blur"}
    assert not EOT() and EOT(("jpeg",))


def test_unknown_transformation_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: \\['blur', 'crop-flip', 'grayscale', 'jpeg'\\]"):
        MEMConfig(eot_transforms=("jpg",))
    assert MEMConfig.from_json(MEMConfig(eot_transforms=["jpeg", "blur"]).to_json()).eot_transforms == ("jpeg", "blur")
    assert MEMConfig(eot_transforms="jpeg, crop-flip").eot_transforms == ("jpeg", "crop-flip")


@pytest.fixture(scope="module")
def trained():
    """A tiny CLIP trained on 16 pairs, and their features: PGD's attack target."""
    pairs = trained_surrogate(trigger_length=0)
    with torch.no_grad():
        text = pairs["surrogate"].text_features(pairs["ids"], pairs["mask"])
    return pairs["surrogate"], pairs["images"], text


def loss_after(surrogate, images, noise, text, defense_name):
    defended, _ = get_defense(defense_name, seed=0)(
        pixels_from_uint8(images, noise), [""] * len(images), torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        return float(ContrastiveLoss()(surrogate.image_features(defended), text, surrogate.logit_scale()))


def test_pgd_through_jpeg_lowers_the_loss_after_jpeg_more_than_plain_pgd(trained):
    surrogate, images, text = trained
    zero = torch.zeros_like(images, dtype=torch.int8)
    plain = PGD(surrogate, 8, 1, 16)(images, zero, text)
    robust = PGD(surrogate, 8, 1, 16, EOT(("jpeg",)))(images, zero, text, torch.Generator().manual_seed(0))
    assert int(robust.abs().max()) <= 8
    clean = loss_after(surrogate, images, zero, text, "jpeg-75")
    assert (
        loss_after(surrogate, images, robust, text, "jpeg-75")
        < loss_after(surrogate, images, plain, text, "jpeg-75")
        < clean
    )
    with pytest.raises(ValueError, match="generator"):
        PGD(surrogate, 8, 1, 2, EOT(("jpeg",)))(images, zero, text)
