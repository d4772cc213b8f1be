"""Shared fixtures: a tiny offline CLIP, synthetic data, and one fitted transform reused by many tests."""

from __future__ import annotations

import os
import tempfile

# MEM state goes to the datasets cache by default: give each test session a fresh one.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf_unlearnable-tests-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads spin while waiting; on a shared 2-core machine that costs 10x. Sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datasets
import pytest
import torch

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.testing import synthetic_captions, tiny_clip

torch.set_num_threads(min(2, os.cpu_count() or 1))
datasets.disable_progress_bars()

# Small but real: every part of Algorithm 1 runs (surrogate steps, HotFlip, PGD, several rounds).
FAST_CONFIG = MEMConfig(
    max_rounds=4,
    surrogate_steps=15,
    batch_size=16,
    pgd_steps=4,
    trigger_rounds=2,
    hotflip_candidates=8,
    learning_rate=5e-4,
    online_rounds=2,
)


@pytest.fixture(scope="session")
def clip():
    return tiny_clip(image_size=32, seed=0)


@pytest.fixture(scope="session")
def dataset():
    ds = synthetic_captions(48, image_size=32, seed=0)
    return ds.add_column("row_id", list(range(len(ds)))).add_column("note", [f"n{i}" for i in range(len(ds))])


@pytest.fixture(scope="session")
def fitted(clip, dataset):
    """(transform, protected dataset) for the shared data set; fitted once per session."""
    model, processor = clip
    transform = ProtectTransform(model, processor, FAST_CONFIG, progress=False)
    protected = transform.protect(dataset)
    return transform, protected
