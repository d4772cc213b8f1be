"""Work dirs: a run killed with SIGKILL mid-round resumes to the identical output; foreign state is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import datasets
import pytest
import torch

from hf_unlearnable import ProtectTransform
from hf_unlearnable.mem.loop import MEMStep

from .conftest import FAST_CONFIG

SCRIPT = textwrap.dedent(
    """
    import sys, datasets
    from hf_unlearnable import MEMConfig, ProtectTransform
    from hf_unlearnable.testing import synthetic_captions, tiny_clip
    datasets.disable_progress_bars()
    model, processor = tiny_clip(seed=0)
    ds = synthetic_captions(64, seed=0)
    config = MEMConfig(max_rounds=3, surrogate_steps=6, batch_size=8, pgd_steps=2, trigger_rounds=2,
                       hotflip_candidates=4, learning_rate=5e-4)
    transform = ProtectTransform(model, processor, config, work_dir=sys.argv[1], progress=False)
    transform.protect(ds).save_to_disk(sys.argv[2])
    """
)


def start(work_dir, output):
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(work_dir), str(output)], stderr=subprocess.PIPE, text=True
    )


def rows(path):
    ds = datasets.load_from_disk(str(path))
    return ds["caption"][:], [r["bytes"] for r in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def test_sigkill_mid_round_then_rerun_gives_identical_output(tmp_path):
    killed = start(tmp_path / "work", tmp_path / "unused")
    progress = tmp_path / "work" / "state" / "progress-rank0.json"
    seen = None
    while killed.poll() is None:  # no wall-clock deadline: under load the run is only slower
        try:
            seen = json.loads(progress.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            seen = None
        if seen and seen["round"] == 2 and 2 <= seen["done"] < 8:
            os.kill(killed.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed mid-round (last progress {seen})"
    state = json.loads((tmp_path / "work" / "checkpoint" / "state.json").read_text())
    assert (state["round"], state["phase"]) == (2, "sweep")  # killed inside round 2's sweep

    resumed = start(tmp_path / "work", tmp_path / "resumed")
    reference = start(tmp_path / "fresh", tmp_path / "reference")
    for process in (resumed, reference):
        _, error = process.communicate(timeout=300)
        assert process.returncode == 0, error
    assert rows(tmp_path / "resumed") == rows(tmp_path / "reference")


def test_a_finished_work_dir_is_reused_without_training(clip, dataset, tmp_path, monkeypatch):
    model, processor = clip
    config = FAST_CONFIG.replace(max_rounds=2)
    small = dataset.select(range(16))
    first = ProtectTransform(model, processor, config, work_dir=tmp_path, progress=False)
    out_first = first.protect(small)
    again = ProtectTransform(model, processor, config, work_dir=tmp_path, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished work dir was trained or swept again")

    monkeypatch.setattr(torch.optim.AdamW, "step", refuse)  # no surrogate training step
    monkeypatch.setattr(MEMStep, "__call__", refuse)  # no HotFlip / PGD sweep
    out_again = again.protect(small)
    assert again.history == first.history
    assert out_again["caption"][:] == out_first["caption"][:]


def test_work_dir_of_another_dataset_or_config_is_refused(clip, dataset, tmp_path):
    model, processor = clip
    config = FAST_CONFIG.replace(max_rounds=1, surrogate_steps=1, pgd_steps=1)
    ProtectTransform(model, processor, config, work_dir=tmp_path, progress=False).fit(dataset.select(range(8)))
    with pytest.raises(ValueError, match="another data set or config"):
        ProtectTransform(model, processor, config, work_dir=tmp_path, progress=False).fit(dataset.select(range(10)))
    with pytest.raises(ValueError, match="another data set or config"):
        ProtectTransform(model, processor, config.replace(seed=5), work_dir=tmp_path, progress=False).fit(
            dataset.select(range(8))
        )


HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_work_dir_in_use_by_another_run_is_refused_untouched(clip, dataset, tmp_path):
    """Two runs on one work dir would write into the same noise and journal files: the second is
    refused while the first holds the folder, and proceeds once it is free."""
    model, processor = clip
    config = FAST_CONFIG.replace(max_rounds=1, surrogate_steps=1, pgd_steps=1)
    rows = dataset.select(range(8))
    work = tmp_path / "work"
    ProtectTransform(model, processor, config, work_dir=work, progress=False).fit(rows)  # a finished run
    before = {path: path.read_bytes() for path in sorted(work.rglob("*")) if path.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(work / ".hf_unlearnable.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"work_dir {work} is in use by another run"):
            ProtectTransform(model, processor, config, work_dir=work, progress=False).fit(rows)
        after = {path: path.read_bytes() for path in sorted(work.rglob("*")) if path.is_file()}
        assert after == before  # nothing read-modified, nothing deleted
    finally:
        holder.kill()
        holder.wait()
    reused = ProtectTransform(model, processor, config, work_dir=work, progress=False).fit(rows)
    assert reused.summary()["reused"]
