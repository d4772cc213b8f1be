"""The layered method: EM pixels on each image's own caption, then a trigger found on top of them.

Each test plants the bug its name guards against, in words: pixels pulled toward the triggered
caption, a surrogate that sees triggers while the pixels are made, a trigger layer that moves the
pixels, a trigger layer that keeps training the pixel layer's surrogate, a resume that forgets
which layer it was in.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.images import prepare_image
from hf_unlearnable.mem.loop import MEMLoop, MEMStep
from hf_unlearnable.surrogate import Surrogate
from hf_unlearnable.testing import synthetic_captions, tiny_clip

LAYERED = MEMConfig(
    method="layered",
    max_rounds=2,
    trigger_rounds=2,
    surrogate_steps=5,
    batch_size=8,
    pgd_steps=2,
    hotflip_candidates=8,
    learning_rate=5e-4,
    online_rounds=1,
    eot_transforms=("jpeg",),
)


@pytest.fixture(scope="module")
def rows(dataset):
    return dataset.select(range(16))


def protect(clip, rows, config, **kwargs):
    model, processor = clip
    transform = ProtectTransform(model, processor, config, progress=False, **kwargs)
    out = transform.protect(rows).cast_column("image", datasets.Image(decode=False))
    return out["caption"][:], [image["bytes"] for image in out["image"]], transform


def test_the_pixel_layer_is_em_on_each_images_own_caption(clip, rows):
    """The layered copy's pixels are, byte for byte, those of EM (no trigger anywhere, own captions,
    the same EOT): neither the surrogate nor PGD saw a trigger while the pixels were made, and the
    trigger layer left them alone."""
    _, layered_images, transform = protect(clip, rows, LAYERED)
    em = LAYERED.replace(method="mem", trigger_length=0, shuffle_captions=False)
    _, em_images, _ = protect(clip, rows, em)
    assert layered_images == em_images
    assert [record["stage"] for record in transform.history] == ["pixels", "pixels", "triggers", "triggers"]
    # the control: MEM's pixels, bound to the trigger, are other pixels
    _, mem_images, _ = protect(clip, rows, LAYERED.replace(method="mem"))
    assert mem_images != em_images


def test_the_trigger_layer_sets_triggers_and_never_moves_pixels(clip, rows):
    captions_1, images_1, transform = protect(clip, rows, LAYERED.replace(trigger_rounds=1))
    captions_2, images_2, _ = protect(clip, rows, LAYERED)
    assert images_2 == images_1  # a second trigger round changed no pixel
    assert captions_2 != captions_1  # while HotFlip did change triggers
    bodies = [caption for caption in rows["caption"][:]]
    assert all(c.endswith(body) and c != body for c, body in zip(captions_2, bodies))  # a trigger at the start
    # the trigger is a shortcut: with it, the final surrogate's loss is far below the clean loss
    last = transform.history[-1]
    assert last["stage"] == "triggers" and last["protected_loss"] < 0.8 * last["clean_loss"]


def test_pgd_of_the_layered_method_pulls_each_image_toward_its_own_untriggered_caption():
    model, processor = tiny_clip(seed=3)
    surrogate = Surrogate(model).eval()
    ds = synthetic_captions(8, seed=4)
    codec = CaptionCodec(processor.tokenizer, 3, 77)
    vocabulary = TriggerVocabulary(processor.tokenizer)
    bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(ds["caption"][:]))
    triggers = torch.from_numpy(vocabulary.sample((8, 3), np.random.default_rng(5))).long()
    with torch.no_grad():
        own = surrogate.text_features(*CaptionCodec(processor.tokenizer, 0, 77).build(triggers[:, :0], bodies, lengths))
        triggered = surrogate.text_features(*codec.build(triggers, bodies, lengths))
    assert not torch.allclose(own, triggered, atol=1e-4)  # the test can tell the two apart
    step = MEMStep(surrogate, codec, vocabulary, LAYERED.replace(batch_size=8))
    given = step.pgd_text_features(triggers, bodies, lengths, torch.Generator().manual_seed(0))
    assert given.shape == own.shape and torch.allclose(given, own, atol=1e-5)
    mem = MEMStep(surrogate, codec, vocabulary, LAYERED.replace(method="mem", batch_size=8))
    assert not torch.allclose(
        mem.pgd_text_features(triggers, bodies, lengths, torch.Generator().manual_seed(0))[0], own, atol=1e-4
    )


def test_the_trigger_layer_starts_from_the_initial_surrogate(clip, rows, monkeypatch, tmp_path):
    seen = {}
    train = MEMLoop.train_surrogate

    def spy(self, round_index, triggered=True):
        seen[round_index] = (
            {n: v.detach().clone() for n, v in self.surrogate.model.state_dict().items()},
            len(self.optimizer.state),
            triggered,
        )
        return train(self, round_index, triggered)

    monkeypatch.setattr(MEMLoop, "train_surrogate", spy)
    protect(clip, rows, LAYERED, work_dir=tmp_path)  # a fresh work dir: an earlier test's run would be reused
    initial = clip[0].state_dict()
    assert [seen[r][2] for r in (1, 2, 3, 4)] == [False, False, True, True]  # triggers only in the trigger layer
    for round_index, fresh in [(1, True), (2, False), (3, True), (4, False)]:
        weights = seen[round_index][0]
        assert all(torch.equal(weights[n], initial[n]) for n in initial) is fresh, round_index
    assert seen[3][1] == 0 and seen[2][1] > 0  # a fresh optimizer state for the trigger layer


def test_stop_loss_ends_the_pixel_layer_not_the_run(clip, rows):
    *_, full = protect(clip, rows, LAYERED.replace(max_rounds=3))
    pixel_losses = [r["protected_loss"] for r in full.history if r["stage"] == "pixels"]
    threshold = pixel_losses[0] + 1e-6  # met by round 1
    *_, stopped = protect(clip, rows, LAYERED.replace(max_rounds=3, stop_loss=threshold))
    assert [r["stage"] for r in stopped.history] == ["pixels", "triggers", "triggers"]


@pytest.mark.parametrize("failing_round", [3, 4])
def test_an_interrupted_layered_run_resumes_to_the_identical_output(clip, rows, tmp_path, monkeypatch, failing_round):
    """Interrupted in the trigger layer's sweep (round 3: the one that restarted the surrogate, or
    round 4), a rerun on the same work dir gives exactly the output of an uninterrupted run."""
    reference = protect(clip, rows, LAYERED)[:2]
    step, calls = MEMStep.__call__, []

    def crash(self, batch, update_triggers, generator, **kwargs):
        calls.append(kwargs.get("update_noise"))
        if calls.count(False) == (failing_round - 3) * 2 + 2:  # the round's second batch: one committed
            raise KeyboardInterrupt
        return step(self, batch, update_triggers, generator, **kwargs)

    monkeypatch.setattr(MEMStep, "__call__", crash)
    with pytest.raises(KeyboardInterrupt):
        protect(clip, rows, LAYERED, work_dir=tmp_path / "work")
    monkeypatch.setattr(MEMStep, "__call__", step)
    assert protect(clip, rows, LAYERED, work_dir=tmp_path / "work")[:2] == reference


def test_without_a_trigger_only_the_pixel_layer_runs(clip, rows):
    captions, images, transform = protect(clip, rows, LAYERED.replace(trigger_length=0))
    assert [record["stage"] for record in transform.history] == ["pixels", "pixels"]
    assert captions == rows["caption"][:]
    assert images == protect(clip, rows, LAYERED)[1]  # the pixel layer of the full method


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(image_noise=False), "image_noise"),
        (dict(trigger_rounds=0), "trigger_rounds"),
        (dict(method="stacked"), "method"),
    ],
)
def test_layered_configs_that_cannot_work_are_refused(changes, field):
    with pytest.raises(ValueError, match=f"MEMConfig.{field}="):
        LAYERED.replace(**changes)


def test_a_layered_protector_still_protects_unseen_rows(clip, rows, dataset):
    _, _, transform = protect(clip, rows, LAYERED)
    new = dataset.select(range(16, 24))
    out = transform.apply(new)
    for value, caption, clean in zip(out, new["caption"][:], new):
        assert value["caption"].endswith(caption) and value["caption"] != caption
        moved = np.abs(np.asarray(value["image"], np.int16) - prepare_image(clean["image"], 32).astype(np.int16))
        assert 0 < moved.max() <= LAYERED.epsilon_levels


def test_a_protector_saved_before_the_layered_method_stays_mem(clip, tmp_path):
    """A saved protector whose config has no ``method`` (algorithm <= 6) ran MEM: loading it must not
    turn it into the layered method, or rows it has not seen would be protected another way."""
    model, processor = clip
    ProtectTransform(
        model, processor, LAYERED.replace(method="mem", eot_transforms=()), progress=False
    ).save_pretrained(tmp_path)
    meta_file = tmp_path / "protect_config.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["method"]
    meta_file.write_text(json.dumps(meta))
    assert ProtectTransform.from_pretrained(tmp_path, progress=False).config.method == "mem"
    assert ProtectTransform(model, processor, progress=False).config.method == "layered"  # while new ones are layered
