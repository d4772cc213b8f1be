"""MEMLoop's persistence interface: checkpointing changes where state goes, never what is computed."""

from __future__ import annotations

import copy

import numpy as np
import torch

from hf_unlearnable import ProtectTransform
from hf_unlearnable.mem.checkpoint import Checkpointer, DiskCheckpointer
from hf_unlearnable.mem.loop import MEMLoop
from hf_unlearnable.surrogate import Surrogate
from hf_unlearnable.workdir import ingest

from .conftest import FAST_CONFIG


def run_loop(clip, ds, directory, checkpointer_of):
    model, processor = clip
    config = FAST_CONFIG.replace(max_rounds=2, surrogate_steps=4, pgd_steps=2)
    helper = ProtectTransform(model, processor, config, progress=False)  # codec, vocabulary, accelerator
    store = ingest(
        ds,
        "image",
        "caption",
        directory / "state",
        codec=helper.codec,
        image_size=32,
        vocabulary=helper.vocabulary,
        seed=config.seed,
        progress=False,
    )
    surrogate = Surrogate.from_processor(copy.deepcopy(model), processor)
    torch.manual_seed(config.seed)
    loop = MEMLoop(
        surrogate,
        store,
        helper.codec,
        helper.vocabulary,
        config,
        helper.accelerator,
        progress=False,
        checkpointer=checkpointer_of(directory, helper.accelerator),
    )
    history = loop.run()
    return [{k: v for k, v in record.items() if k not in ("seconds", "surrogate_seconds")} for record in history], store


def test_the_no_op_and_the_disk_checkpointer_compute_the_same_protection(clip, dataset, tmp_path):
    ds = dataset.select(range(20))
    plain, plain_store = run_loop(clip, ds, tmp_path / "plain", lambda directory, accelerator: Checkpointer())
    saved, saved_store = run_loop(clip, ds, tmp_path / "disk", lambda d, a: DiskCheckpointer(d / "checkpoint", a))
    assert plain == saved
    np.testing.assert_array_equal(plain_store.noise[:], saved_store.noise[:])
    np.testing.assert_array_equal(plain_store.triggers[:], saved_store.triggers[:])
    assert np.abs(plain_store.noise[:].astype(int)).max() > 0
    assert not (tmp_path / "plain" / "checkpoint").exists()  # the no-op keeps nothing
    assert (tmp_path / "disk" / "checkpoint" / "state.json").exists()
    assert not list((tmp_path / "disk" / "state").glob("journal-*"))  # every sweep commit completed


def test_disk_checkpointer_loads_on_the_cpu_device_of_a_process_group(clip, tmp_path):
    # Under torchrun / accelerate launch on CPU the accelerator's device is torch.device("cpu", 0);
    # safetensors ("device cpu:0 is invalid") and torch.load both refused it, so no 2-process CPU
    # run could resume or reuse its work dir.
    from types import SimpleNamespace

    from hf_unlearnable.surrogate import build_optimizer

    model, processor = clip
    group = SimpleNamespace(device=torch.device("cpu", 0), is_main_process=True, wait_for_everyone=lambda: None)
    saved = Surrogate.from_processor(copy.deepcopy(model), processor)
    optimizer = build_optimizer(saved, 1e-3, 0.0)
    saved.model(
        **processor(text=["a red square"], images=[np.zeros((32, 32, 3), np.uint8)], return_tensors="pt"),
        return_loss=True,
    ).loss.backward()
    optimizer.step()  # an optimizer with state to save
    checkpointer = DiskCheckpointer(tmp_path / "checkpoint", group)
    checkpointer.save({"round": 1, "phase": "sweep", "history": []}, saved, optimizer)

    fresh = Surrogate.from_processor(copy.deepcopy(model), processor)
    fresh_optimizer = build_optimizer(fresh, 1e-3, 0.0)
    state = checkpointer.load(fresh, fresh_optimizer)
    assert (state["round"], state["phase"]) == (1, "sweep")
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor), name
    restored, original = fresh_optimizer.state_dict(), optimizer.state_dict()
    assert restored["state"].keys() == original["state"].keys() != set()
    for index, values in original["state"].items():  # Adam's moments and step, value for value
        assert values.keys() == restored["state"][index].keys() >= {"exp_avg", "exp_avg_sq", "step"}
        for key, value in values.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)
    assert restored["param_groups"] == original["param_groups"]
