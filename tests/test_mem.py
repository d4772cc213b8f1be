"""Eq. 5 (PGD) and Eq. 6 (HotFlip) on tensors, one MEMStep, and Algorithm 1's schedule and stop rule."""

import datasets
import numpy as np
import pytest
import torch

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.images import prepare_image
from hf_unlearnable.losses import ContrastiveLoss, loss_with_text_replaced
from hf_unlearnable.mem.hotflip import HotFlip
from hf_unlearnable.mem.loop import MEMStep
from hf_unlearnable.mem.pgd import PGD
from hf_unlearnable.surrogate import Surrogate, pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions, tiny_clip

from .conftest import trained_surrogate


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
        return float(
            ContrastiveLoss()(
                surrogate.image_features(pixels_from_uint8(images, noise)),
                surrogate.text_features(ids, mask),
                surrogate.logit_scale(),
            )
        )


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


# ----------------------------------------------------------------------------------------------
# HotFlip's candidates come from the gradient, with the right sign
# ----------------------------------------------------------------------------------------------


class RandomCandidates(HotFlip):
    """The control: HotFlip's exact scoring of K candidates, but candidates ranked by a random
    direction instead of the gradient, i.e. K random allowed tokens per position."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(seed)

    def _text_and_gradient(self, *args):
        text, loss, gradient = super()._text_and_gradient(*args)
        return text, loss, torch.randn(gradient.shape, generator=self.generator)


class SignFlipped(HotFlip):
    """The bug the test must catch: candidates chosen to raise the loss to first order."""

    def _text_and_gradient(self, *args):
        text, loss, gradient = super()._text_and_gradient(*args)
        return text, loss, -gradient


@pytest.fixture(scope="module")
def trained():
    """A tiny CLIP trained a little on 16 triggered pairs, so its gradients carry information."""
    pairs = trained_surrogate(trigger_length=3)
    return tuple(pairs[key] for key in ("surrogate", "images", "codec", "bodies", "lengths", "vocabulary"))


def search_losses(trained, search_class, seeds=(0, 1, 2), candidates=4):
    """(loss after `search_class`, loss after the random-candidate control), from fresh random
    triggers, for each seed."""
    surrogate, images, codec, bodies, lengths, vocabulary = trained
    with torch.no_grad():
        image_features = surrogate.image_features(pixels_from_uint8(images))
    results = []
    for seed in seeds:
        triggers = torch.from_numpy(vocabulary.sample((len(images), 3), np.random.default_rng(seed))).long()
        ids, mask = codec.build(triggers, bodies, lengths)
        searched = search_class(surrogate, vocabulary.mask, candidates)(image_features, ids, mask, trigger_length=3)
        control = RandomCandidates(surrogate, vocabulary.mask, candidates, seed=seed)(
            image_features, ids, mask, trigger_length=3
        )
        results.append(
            (batch_loss(surrogate, images, None, searched, mask), batch_loss(surrogate, images, None, control, mask))
        )
    return results


def test_hotflip_candidates_beat_random_candidates(trained):
    for searched, control in search_losses(trained, HotFlip):
        assert searched < control, (searched, control)


def test_the_random_candidate_check_fails_for_a_sign_flipped_hotflip(trained):
    # the check above can fail: with the first-order term's sign flipped, HotFlip proposes the
    # tokens that raise the loss most, and random tokens beat it on every seed
    for searched, control in search_losses(trained, SignFlipped):
        assert searched > control, (searched, control)


# ----------------------------------------------------------------------------------------------
# MEMStep: what text PGD pulls each image toward
# ----------------------------------------------------------------------------------------------


def pgd_text_batch(trigger_length, batch):
    """A tiny surrogate, its codec and vocabulary, and a batch of synthetic captions' bodies,
    lengths and random triggers (with the dataset, for its images)."""
    model, processor = tiny_clip(seed=3)
    surrogate = Surrogate(model).eval()
    ds = synthetic_captions(batch, seed=4)
    codec = CaptionCodec(processor.tokenizer, trigger_length, 77)
    vocabulary = TriggerVocabulary(processor.tokenizer)
    bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(ds["caption"][:]))
    triggers = torch.from_numpy(vocabulary.sample((batch, trigger_length), np.random.default_rng(5))).long()
    return surrogate, codec, vocabulary, ds, bodies, lengths, triggers


def pgd_text_targets(trigger_length, shuffle_captions, steps=4, batch=8):
    """Run one MEMStep with a spy on PGD; for every step s and image i, return the index j of the
    caption body whose features (with image i's own trigger) PGD was given, or -1 if none."""
    surrogate, codec, vocabulary, ds, bodies, lengths, triggers = pgd_text_batch(trigger_length, batch)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds]))
    config = MEMConfig(
        method="mem",
        trigger_length=trigger_length,
        shuffle_captions=shuffle_captions,
        pgd_steps=steps,
        batch_size=batch,
    )
    step = MEMStep(surrogate, codec, vocabulary if trigger_length else None, config)
    seen = []
    attack = step.pgd
    step.pgd = lambda images, noise, text_features, generator=None: (
        seen.append(text_features) or attack(images, noise, text_features, generator)
    )
    batch_data = {
        "images": images,
        "noise": torch.zeros_like(images, dtype=torch.int8),
        "triggers": triggers,
        "bodies": bodies,
        "lengths": lengths,
    }
    step(batch_data, update_triggers=False, generator=torch.Generator().manual_seed(6))
    (given,) = seen
    given = given.expand(steps, *given.shape) if given.dim() == 2 else given
    assert given.shape[:2] == (steps, batch)
    # features of every (own trigger i, body j) pairing
    pairs = torch.cartesian_prod(torch.arange(batch), torch.arange(batch))
    with torch.no_grad():
        every = surrogate.text_features(*codec.build(triggers[pairs[:, 0]], bodies[pairs[:, 1]], lengths[pairs[:, 1]]))
    every = every.view(batch, batch, -1)  # (image i, body j, D)
    distance = (given.unsqueeze(2) - every.unsqueeze(0)).norm(dim=-1)  # (step, image i, body j)
    closest = distance.argmin(dim=2)
    return torch.where(distance.min(dim=2).values < 1e-4, closest, torch.full_like(closest, -1))


def test_pgd_shuffles_bodies_per_step_and_keeps_triggers_with_their_images():
    targets = pgd_text_targets(trigger_length=3, shuffle_captions=True)
    # every image's text is its own trigger + some body (-1: a trigger travelled with its body)
    assert (targets >= 0).all(), targets
    for order in targets:  # each step pairs the bodies one to one: a permutation of the batch
        assert sorted(order.tolist()) == list(range(len(order)))
    assert (targets != torch.arange(targets.shape[1])).any()  # bodies really move
    assert len({tuple(order.tolist()) for order in targets}) == len(targets)  # a new permutation every step


def test_pgd_text_computes_each_distinct_pairing_once():
    """8 steps of permutations of 6 bodies repeat pairings; the text tower reads each once, and
    every step's features are those of one pass over all S x B pairings."""
    steps, batch = 8, 6
    surrogate, codec, vocabulary, _, bodies, lengths, triggers = pgd_text_batch(3, batch)
    step = MEMStep(surrogate, codec, vocabulary, MEMConfig(method="mem", pgd_steps=steps, batch_size=batch))
    rows_read = []
    text_features = surrogate.text_features
    surrogate.text_features = lambda ids, mask=None: rows_read.append(len(ids)) or text_features(ids, mask)
    given = step.pgd_text_features(triggers, bodies, lengths, torch.Generator().manual_seed(6))
    del surrogate.text_features
    generator = torch.Generator().manual_seed(6)
    orders = torch.stack([torch.randperm(batch, generator=generator) for _ in range(steps)])
    distinct = len({(i, int(j)) for order in orders for i, j in enumerate(order)})
    assert rows_read == [distinct] and distinct < steps * batch  # one text-tower pass
    with torch.no_grad():
        every = surrogate.text_features(
            *codec.build(triggers.repeat(steps, 1), bodies[orders.flatten()], lengths[orders.flatten()])
        )
    assert given.shape == (steps, batch, every.shape[-1]) and torch.equal(given, every.view(steps, batch, -1))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_many_text_features_in_cache_sized_calls_equal_one_call(family, monkeypatch):
    """On a CPU the text tower reads many captions a few at a time; each row's features are those
    of one call over all of them (to the last bits, which follow the matmuls' blocking of the
    rows), in the order given, and gradients never go through the split."""
    import hf_unlearnable.imagetext as imagetext
    from hf_unlearnable.siglip import SiglipTowers
    from hf_unlearnable.testing import tiny_siglip

    towers = Surrogate(tiny_clip(seed=3)[0]) if family == "clip" else SiglipTowers(tiny_siglip(seed=3)[0])
    ids = torch.randint(1, 900, (37, 12), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(12) < torch.randint(4, 13, (37, 1), generator=torch.Generator().manual_seed(1))).long()
    with torch.no_grad():
        whole = towers.text_features(ids, mask)
    calls = []
    text_features = towers.text_features
    towers.text_features = lambda i, m=None: calls.append(len(i)) or text_features(i, m)
    monkeypatch.setattr(imagetext, "CPU_TEXT_TOKENS_PER_CALL", 10 * 12)  # 10 captions of 12 tokens a call
    assert torch.allclose(towers.many_text_features(ids, mask), whole, rtol=0, atol=1e-6)
    assert calls == [10, 10, 10, 7]
    assert not towers.many_text_features(ids, mask).requires_grad


def test_em_pgd_uses_each_images_own_caption():
    targets = pgd_text_targets(trigger_length=0, shuffle_captions=False)
    assert (targets == torch.arange(targets.shape[1])).all(), targets


# MEMStep reuses features it has already computed (PGD's untriggered text, HotFlip's image
# features while no PGD moves d); the losses it reports must still be those of a fresh computation.
STEP_CASES = {  # name: (config changes, update_triggers, update_noise, triggered)
    "mem": (dict(method="mem"), True, True, True),
    "layered pixel layer": (dict(method="layered"), False, True, False),
    "layered trigger layer": (dict(method="layered"), True, False, True),
    "em": (dict(method="mem", trigger_length=0, shuffle_captions=False), False, True, False),
}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_memstep_losses_equal_a_fresh_computation_bit_for_bit(case, autocast):
    changes, update_triggers, update_noise, triggered = STEP_CASES[case]
    model, processor = tiny_clip(seed=3)
    surrogate = Surrogate(model).eval()
    config = MEMConfig(eot_transforms=(), pgd_steps=2, hotflip_candidates=4, batch_size=8).replace(**changes)
    ds = synthetic_captions(8, seed=4)
    codec = CaptionCodec(processor.tokenizer, config.trigger_length, 77)
    vocabulary = TriggerVocabulary(processor.tokenizer) if config.trigger_length else None
    bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(ds["caption"][:]))
    triggers = torch.from_numpy(np.random.default_rng(5).integers(300, 400, (8, config.trigger_length))).long()
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds]))
    noise = torch.from_numpy(np.random.default_rng(6).integers(-3, 4, images.shape)).to(torch.int8)
    batch = {"images": images, "noise": noise, "triggers": triggers, "bodies": bodies, "lengths": lengths}
    step = MEMStep(surrogate, codec, vocabulary, config)
    calls = {"image_features": 0, "text_features": 0}

    def counting(name, tower):  # count the tower's passes, then call through
        def counted(*args, **kwargs):
            calls[name] += 1
            return tower(*args, **kwargs)

        return counted

    for name in calls:
        setattr(surrogate, name, counting(name, getattr(surrogate, name)))
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with precision:
        result = step(
            batch, update_triggers, torch.Generator().manual_seed(7), update_noise=update_noise, triggered=triggered
        )
    if update_noise:
        assert not torch.equal(result.noise, noise)
    else:
        assert torch.equal(result.noise, noise)
    # the losses as MEMStep computed them before it reused features: every tower pass afresh
    del surrogate.image_features, surrogate.text_features
    loss = ContrastiveLoss(gather=False)
    with precision, torch.no_grad():
        clean_ids, clean_mask = step.untriggered(bodies, lengths)
        ids, mask = codec.build(result.triggers, bodies, lengths) if triggered else (clean_ids, clean_mask)
        logit_scale = surrogate.logit_scale()
        protected = loss(
            surrogate.image_features(pixels_from_uint8(images, result.noise)),
            surrogate.text_features(ids, mask),
            logit_scale,
        )
        clean = loss(
            surrogate.image_features(pixels_from_uint8(images)),
            surrogate.text_features(clean_ids, clean_mask),
            logit_scale,
        )
    assert result.protected_loss == float(protected) and result.clean_loss == float(clean)
    if case in ("layered pixel layer", "em"):  # one text pass: PGD's target is the clean caption's features
        assert calls["text_features"] == 1
    if case == "layered trigger layer":  # d unchanged: HotFlip's image features serve the protected loss
        assert calls["image_features"] == 2


# ----------------------------------------------------------------------------------------------
# Algorithm 1: triggers freeze after trigger_rounds; stop_loss stops
# ----------------------------------------------------------------------------------------------

LOOP_CONFIG = MEMConfig(
    method="mem",
    eot_transforms=(),
    max_rounds=2,
    surrogate_steps=5,
    batch_size=8,
    pgd_steps=2,
    trigger_rounds=1,
    hotflip_candidates=8,
    learning_rate=5e-4,
    online_rounds=1,
)


@pytest.fixture(scope="module")
def rows(dataset):
    return dataset.select(range(16))


def run(clip, rows, config):
    model, processor = clip
    transform = ProtectTransform(model, processor, config, progress=False)
    out = transform.protect(rows).cast_column("image", datasets.Image(decode=False))
    return out["caption"][:], [image["bytes"] for image in out["image"]], transform.history


def test_triggers_freeze_after_trigger_rounds(clip, rows):
    # one round equals the first round of a longer run (determinism), so these are the states
    # after round 1 and after round 2
    captions_1, images_1, _ = run(clip, rows, LOOP_CONFIG.replace(max_rounds=1))
    captions_2, images_2, _ = run(clip, rows, LOOP_CONFIG.replace(max_rounds=2))
    assert captions_2 == captions_1  # trigger_rounds=1: round 2 leaves the triggers alone
    assert images_2 != images_1  # while the noise still moved
    # the control: allowed a second trigger round, HotFlip does change triggers in round 2
    captions_hot, _, _ = run(clip, rows, LOOP_CONFIG.replace(max_rounds=2, trigger_rounds=2))
    assert captions_hot != captions_1


def test_stop_loss_stops_when_met_and_runs_every_round_when_not(clip, rows):
    config = LOOP_CONFIG.replace(max_rounds=3)
    *_, full = run(clip, rows, config)
    losses = [record["protected_loss"] for record in full]
    assert len(full) == 3

    threshold = losses[1] + 1e-6  # met by round 2 at the latest
    expected = next(index for index, loss in enumerate(losses) if loss < threshold) + 1
    *_, stopped = run(clip, rows, config.replace(stop_loss=threshold))
    assert len(stopped) == expected < config.max_rounds
    assert [r["protected_loss"] for r in stopped] == losses[:expected]

    *_, unmet = run(clip, rows, config.replace(stop_loss=min(losses) - 1e-6))
    assert len(unmet) == config.max_rounds
