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
    store = ingest(ds, "image", "caption", directory / "state", codec=helper.codec, image_size=32,
                   vocabulary=helper.vocabulary, seed=config.seed, progress=False)
    surrogate = Surrogate.from_processor(copy.deepcopy(model), processor)
    torch.manual_seed(config.seed)
    loop = MEMLoop(surrogate, store, helper.codec, helper.vocabulary, config, helper.accelerator, progress=False,
                   checkpointer=checkpointer_of(directory, helper.accelerator))
    history = loop.run()
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history], store


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
