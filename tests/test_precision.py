"""A run that cannot protect says so: half-precision weights are trained in float32, a loss that
turns NaN stops the run naming where, and an output that moved no pixel is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_unlearnable import NonFiniteLossError, NoProtectionError, ProtectTransform, train_victim
from hf_unlearnable.testing import synthetic_captions
from hf_unlearnable.workdir import IDENTITY_FILE

from .conftest import FAST_CONFIG

SMALL = FAST_CONFIG.replace(
    max_rounds=2, surrogate_steps=4, pgd_steps=4, trigger_rounds=1
)  # 2 x 4 steps of 1/255: the budget


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_surrogate_saved_in_half_precision_trains_in_float32_and_protects(clip, dataset, tmp_path, dtype):
    model, processor = clip
    folder = tmp_path / "half"
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    model.float()  # the session's shared model goes back as it was
    processor.save_pretrained(folder)
    transform = ProtectTransform(folder, config=SMALL, work_dir=tmp_path / "work", progress=False)
    assert {p.dtype for p in transform.surrogate.parameters()} == {torch.float32}
    transform.fit(dataset.select(range(16)))
    losses = [record[key] for record in transform.history for key in ("surrogate_loss", "protected_loss", "clean_loss")]
    assert all(math.isfinite(value) for value in losses), losses
    assert transform.summary()["max_noise_levels"] == SMALL.epsilon_levels  # the noise reaches the budget


def test_a_half_precision_model_passed_in_is_trained_in_float32_and_left_as_it_was(clip):
    model, processor = clip
    half = type(model)(model.config).half()
    transform = ProtectTransform(half, processor, SMALL, progress=False)
    assert {p.dtype for p in transform.surrogate.parameters()} == {torch.float32}
    assert {p.dtype for p in half.parameters()} == {torch.float16}


def broken_model(clip):
    """The shared tiny CLIP with a NaN in its text projection: every loss it gives is NaN."""
    model, _ = clip
    broken = type(model)(model.config)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.text_projection.weight[0, 0] = float("nan")
    return broken


def test_a_nan_loss_stops_the_run_naming_round_and_step_and_leaves_the_work_dir_unfinished(clip, dataset, tmp_path):
    _, processor = clip
    transform = ProtectTransform(broken_model(clip), processor, SMALL, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(
        NonFiniteLossError, match=r"MEM round 1, surrogate step 1 of 4: the loss is nan\. Likely causes"
    ):
        transform.fit(dataset.select(range(16)))
    assert not transform.is_fitted
    identity = (tmp_path / "work" / IDENTITY_FILE).read_text()
    assert '"finished"' not in identity  # a rerun resumes; it never reuses this as a result


def test_a_nan_in_the_sweep_is_caught_before_its_batch_is_committed(clip, dataset, tmp_path):
    _, processor = clip
    no_training = SMALL.replace(surrogate_steps=0)  # straight to HotFlip and PGD
    transform = ProtectTransform(broken_model(clip), processor, no_training, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"MEM round 1, sweep batch 1 of 1 \(HotFlip and PGD\)"):
        transform.fit(dataset.select(range(16)))
    noise = np.load(tmp_path / "work" / "state" / "noise.npy")
    assert not noise.any()  # nothing computed from NaN reached the store


def test_a_run_that_moved_no_pixel_is_an_error_not_a_result(clip, dataset, tmp_path, monkeypatch):
    model, processor = clip
    # a PGD whose gradients are all zero (as NaN gradients end up once quantised)
    monkeypatch.setattr("hf_unlearnable.mem.loop.PGD.__call__", lambda self, images, noise, *args, **kwargs: noise)
    transform = ProtectTransform(model, processor, SMALL, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(NoProtectionError, match="without moving a single pixel of 16 rows"):
        transform.fit(dataset.select(range(16)))


def test_a_run_whose_triggers_never_changed_is_an_error(clip, dataset, tmp_path, monkeypatch):
    model, processor = clip
    monkeypatch.setattr(
        "hf_unlearnable.mem.loop.HotFlip.__call__", lambda self, features, input_ids, *args, **kwargs: input_ids
    )
    transform = ProtectTransform(model, processor, SMALL, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(NoProtectionError, match="every trigger of 16 rows still the random one"):
        transform.fit(dataset.select(range(16)))


def test_a_victim_whose_loss_turns_nan_stops_naming_the_epoch(clip, dataset):
    model, processor = clip
    with pytest.raises(NonFiniteLossError, match=r"victim epoch 1 of 2 \(mean training loss\): the loss is nan"):
        train_victim(
            dataset.select(range(16)),
            dataset.select(range(16, 24)),
            model.config,
            processor,
            epochs=2,
            batch_size=8,
            learning_rate=1e30,
            warmup_ratio=0.0,
            progress=False,
        )  # weights overflow


def test_the_method_without_image_noise_is_not_refused_for_moving_no_pixel(clip, dataset, tmp_path):
    model, processor = clip
    triggers_only = SMALL.replace(image_noise=False)
    transform = ProtectTransform(model, processor, triggers_only, work_dir=tmp_path / "work", progress=False).fit(
        dataset.select(range(16))
    )
    assert transform.summary()["max_noise_levels"] == 0


def test_a_hub_id_that_cannot_be_loaded_says_what_to_do_in_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # nothing cached, whatever this machine holds
    with pytest.raises(
        OSError,
        match=r"Cannot load the CLIP model 'openai/clip-vit-base-patch32' .*Pass a local "
        r"folder written by CLIPModel.save_pretrained",
    ) as caught:
        ProtectTransform("openai/clip-vit-base-patch32", config=SMALL, progress=False)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no 40-line chain behind it
    rows = synthetic_captions(8, image_size=32)
    with pytest.raises(OSError, match=r"Cannot load the CLIP model '.*no-such-folder'"):
        train_victim(rows, rows, str(tmp_path / "no-such-folder"), progress=False)
