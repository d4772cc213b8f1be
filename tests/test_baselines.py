"""Baselines honour the budget and come out shaped like ProtectTransform.protect's output."""

import datasets
import numpy as np
import pytest
import torch

from hf_unlearnable import ProtectTransform, baselines
from hf_unlearnable.baselines import error_minimizing_noise, random_noise, trigger_only
from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.mem.loop import MEMStep
from hf_unlearnable.mem.pgd import PGD

from .conftest import FAST_CONFIG

CONFIG = FAST_CONFIG.replace(max_rounds=2)


def pixels(ds):
    raw = ds.cast_column("image", datasets.Image(decode=False))
    return np.stack(
        [
            decode_png(row["image"]["bytes"])
            if row["image"]["bytes"][:4] == b"\x89PNG"
            else prepare_image(row["image"], 32)
            for row in raw
        ]
    ).astype(np.int16)


def check_shape(out, ds):
    assert len(out) == len(ds) and out.column_names == ds.column_names
    assert isinstance(out.features["image"], datasets.Image)
    assert out["row_id"][:] == ds["row_id"][:] and out["note"][:] == ds["note"][:]


@pytest.fixture(scope="module")
def data(dataset):
    return dataset.select(range(24))


def test_random_noise(data):
    out = random_noise(data, 32, seed=3)
    check_shape(out, data)
    difference = pixels(out) - pixels(data)
    assert np.abs(difference).max() == 8
    assert set(np.unique(difference)) <= set(range(-8, 9))
    assert out["caption"][:] == data["caption"][:]
    assert (pixels(random_noise(data, 32, seed=3)) == pixels(out)).all()  # seeded
    assert (pixels(random_noise(data, 32, seed=4)) != pixels(out)).any()


def test_em_is_mem_without_trigger_and_pulls_each_image_toward_its_own_caption(clip, data, monkeypatch):
    model, processor = clip
    current, checked = {}, []
    step_call, attack_call = MEMStep.__call__, PGD.__call__

    def spy_step(self, batch, update_triggers, generator, **kwargs):
        current.update(step=self, batch=batch)
        return step_call(self, batch, update_triggers, generator, **kwargs)

    def spy_attack(self, images, noise, text_features, generator=None):
        step, batch = current["step"], current["batch"]
        with torch.no_grad():  # each image's own (trigger-free) caption
            own = step.surrogate.text_features(*step.codec.build(batch["triggers"], batch["bodies"], batch["lengths"]))
        checked.append(bool(torch.allclose(text_features, own.expand_as(text_features), atol=1e-5)))
        return attack_call(self, images, noise, text_features, generator)

    monkeypatch.setattr(MEMStep, "__call__", spy_step)
    monkeypatch.setattr(PGD, "__call__", spy_attack)
    out = error_minimizing_noise(data, model, processor, CONFIG.replace(shuffle_captions=True), progress=False)
    assert checked and all(checked)  # every PGD step of every batch and round: own caption, never another's
    check_shape(out, data)
    difference = pixels(out) - pixels(data)
    assert 0 < np.abs(difference).max() <= 8
    assert out["caption"][:] == data["caption"][:]


def test_trigger_only_has_no_image_noise(clip, data):
    model, processor = clip
    out = trigger_only(data, model, processor, CONFIG, progress=False)
    check_shape(out, data)
    assert (pixels(out) == pixels(data)).all()
    for protected, clean in zip(out["caption"][:], data["caption"][:]):
        assert protected.endswith(" " + clean) and len(protected.split()) == len(clean.split()) + 3


def test_baselines_without_a_config_are_the_papers_methods_with_the_librarys_safe_words(clip, data, monkeypatch):
    """Called without a config, EM and trigger-only run MEM's loop with no EOT (the paper's baselines)
    and keep dictionary trigger words (not MEMConfig.paper()'s "any": word pieces in every caption)."""
    seen = []

    def capture(self, model, processor=None, config=None, *, method=None, **kwargs):
        seen.append(config if method is None else method.config())
        raise RuntimeError("captured")

    monkeypatch.setattr(ProtectTransform, "__init__", capture)
    model, processor = clip
    for baseline in (baselines.error_minimizing_noise, baselines.trigger_only):
        with pytest.raises(RuntimeError, match="captured"):
            baseline(data, model, processor)
    em, trigger = seen
    assert (em.method, em.eot_transforms, em.trigger_length, em.method_name) == ("mem", (), 0, "EM")
    assert (trigger.method, trigger.eot_transforms, trigger.method_name) == ("mem", (), "trigger only")
    assert trigger.trigger_words == "dictionary"
