"""Eq. 5 (PGD) and Eq. 6 (HotFlip) on their own, on tensors."""

import numpy as np
import pytest
import torch

from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.mem.hotflip import HotFlip, loss_with_text_replaced
from hf_unlearnable.mem.pgd import PGD
from hf_unlearnable.surrogate import ContrastiveLoss, Surrogate, pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions, tiny_clip
from hf_unlearnable.images import prepare_image


@pytest.fixture(scope="module")
def setup():
    model, processor = tiny_clip(seed=1)
    surrogate = Surrogate(model).eval()
    ds = synthetic_captions(8, seed=2)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds]))
    codec = CaptionCodec(processor.tokenizer, 3, 77)
    bodies, lengths = codec.encode_bodies(ds["caption"][:])
    vocabulary = TriggerVocabulary(processor.tokenizer)
    triggers = torch.from_numpy(vocabulary.sample((8, 3), np.random.default_rng(0))).long()
    ids, mask = codec.build(triggers, torch.from_numpy(bodies), torch.from_numpy(lengths))
    return surrogate, images, ids, mask, vocabulary


def batch_loss(surrogate, images, noise, ids, mask):
    with torch.no_grad():
        return float(ContrastiveLoss()(surrogate.image_features(pixels_from_uint8(images, noise)), surrogate.text_features(ids, mask), surrogate.logit_scale()))


def test_pgd_minimises_within_budget_on_the_grid(setup):
    surrogate, images, ids, mask, _ = setup
    with torch.no_grad():
        text = surrogate.text_features(ids, mask)
    noise = torch.zeros_like(images, dtype=torch.int8)
    new = PGD(surrogate, epsilon_levels=8, step_levels=1, steps=8)(images, noise, text)
    assert new.dtype == torch.int8 and new.shape == images.shape
    assert int(new.abs().max()) == 8
    pixels = images.to(torch.int16) + new
    assert pixels.min() >= 0 and pixels.max() <= 255  # x + d stays a valid 8-bit image
    assert batch_loss(surrogate, images, new, ids, mask) < batch_loss(surrogate, images, noise, ids, mask)
    assert all(p.grad is None for p in surrogate.parameters())  # no parameter gradients
    assert all(p.requires_grad for p in surrogate.parameters())  # and the model is left trainable


def test_exact_replacement_loss_matches_recomputation(setup):
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    candidates = torch.nn.functional.normalize(torch.randn(5, 3, 8), dim=-1)
    scale = torch.tensor(20.0)
    fast = loss_with_text_replaced(image, text, candidates, scale)
    loss = ContrastiveLoss()
    for b in range(5):
        for c in range(3):
            replaced = text.clone()
            replaced[b] = candidates[b, c]
            assert fast[b, c] == pytest.approx(float(loss(image, replaced, scale)), abs=1e-5)


def test_hotflip_lowers_the_loss_with_allowed_tokens_only(setup):
    surrogate, images, ids, mask, vocabulary = setup
    with torch.no_grad():
        image_features = surrogate.image_features(pixels_from_uint8(images))
    before = batch_loss(surrogate, images, None, ids, mask)
    new_ids = HotFlip(surrogate, vocabulary.mask, candidates=8)(image_features, ids, mask, trigger_length=3)
    after = batch_loss(surrogate, images, None, new_ids, mask)
    assert after <= before + 1e-6
    assert after < before  # a random trigger is never the optimum
    assert (new_ids[:, 0] == ids[:, 0]).all() and (new_ids[:, 4:] == ids[:, 4:]).all()  # only trigger slots change
    assert bool(vocabulary.mask[new_ids[:, 1:4]].all())
    assert all(p.grad is None for p in surrogate.parameters())


def test_hotflip_with_an_embedding_table_larger_than_the_vocabulary(setup):
    _, images, ids, mask, vocabulary = setup
    from transformers import CLIPModel

    from hf_unlearnable.testing import tiny_clip_config

    config = tiny_clip_config()
    config.text_config.vocab_size = len(vocabulary.mask) + 500  # e.g. a checkpoint with spare rows
    torch.manual_seed(0)
    surrogate = Surrogate(CLIPModel(config)).eval()
    with torch.no_grad():
        image_features = surrogate.image_features(pixels_from_uint8(images))
    new_ids = HotFlip(surrogate, vocabulary.mask, candidates=4)(image_features, ids, mask, trigger_length=3)
    assert bool(vocabulary.mask[new_ids[:, 1:4]].all())  # never one of the spare rows
