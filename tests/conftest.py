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
import numpy as np
import pytest
import torch

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.images import prepare_image
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.surrogate import Surrogate, parameter_groups, pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions, tiny_clip

torch.set_num_threads(min(2, os.cpu_count() or 1))
datasets.disable_progress_bars()


def trained_surrogate(trigger_length: int, rows: int = 16) -> dict:
    """A tiny CLIP (seed 1) trained 30 AdamW steps on ``rows`` synthetic pairs (seed 2) whose captions
    carry random triggers of ``trigger_length`` words (seed 99), so its gradients carry information.

    Returns surrogate (eval mode), images, codec, bodies, lengths, vocabulary (None for k = 0), ids, mask.
    """
    model, processor = tiny_clip(seed=1)
    surrogate = Surrogate(model)
    ds = synthetic_captions(rows, seed=2)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds]))
    codec = CaptionCodec(processor.tokenizer, trigger_length, 77)
    bodies, lengths = (torch.from_numpy(a) for a in codec.encode_bodies(ds["caption"][:]))
    vocabulary = TriggerVocabulary(processor.tokenizer) if trigger_length else None
    triggers = torch.zeros(rows, 0, dtype=torch.long)
    if vocabulary is not None:
        triggers = torch.from_numpy(vocabulary.sample((rows, trigger_length), np.random.default_rng(99))).long()
    ids, mask = codec.build(triggers, bodies, lengths)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(parameter_groups(surrogate, 0.1), lr=1e-3)
    loss = ContrastiveLoss()
    for _ in range(30):
        loss(*surrogate(pixels_from_uint8(images), ids, mask), surrogate.logit_scale()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    surrogate.eval()
    return dict(
        surrogate=surrogate,
        images=images,
        codec=codec,
        bodies=bodies,
        lengths=lengths,
        vocabulary=vocabulary,
        ids=ids,
        mask=mask,
    )


# Small but real: every part of Algorithm 1 runs (surrogate steps, HotFlip, PGD, several rounds).
# MEM as published ("mem", no EOT): most tests check Algorithm 1; tests/test_layered.py checks the default.
FAST_CONFIG = MEMConfig(
    method="mem",
    eot_transforms=(),
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
