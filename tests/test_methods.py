"""What each protection method computes, pinned by digests, so that naming the methods (objects
instead of flag combinations) and removing levers can be checked byte for byte.
"""

from __future__ import annotations

import hashlib
import platform

import datasets
import pytest
import torch

from hf_unlearnable import ALGORITHM_VERSION, MEMConfig, ProtectTransform
from hf_unlearnable.baselines import error_minimizing_noise, random_noise, trigger_only
from hf_unlearnable.testing import synthetic_captions

#: A small schedule on which every part of each method runs (surrogate steps, HotFlip, PGD, 2 rounds).
SMALL = dict(max_rounds=2, trigger_rounds=2, surrogate_steps=4, batch_size=8, pgd_steps=2, hotflip_candidates=8,
             learning_rate=5e-4, online_rounds=1)


@pytest.fixture(scope="module")
def rows():
    """(16 rows to fit on, 8 rows the fitted transform has not seen)."""
    data = synthetic_captions(24, image_size=32, seed=0)
    return data.select(range(16)), data.select(range(16, 24))


def digest(ds) -> str:
    h = hashlib.sha256()
    for row in ds.cast_column("image", datasets.Image(decode=False)):
        h.update(row["image"]["bytes"])
        h.update(row["caption"].encode())
    return h.hexdigest()[:16]


def weights(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: Digests of what each method computed on `rows` (ALGORITHM_VERSION 8): fitted copy, 8 unseen rows
#: mapped by the fitted transform, final surrogate weights (one torch thread).
RECORDED = {
    "algorithm_version": 8,
    "environment": ("x86_64", "2.13.0+cpu"),
    "layered": {"fit": "c7588716a014883e", "online": "0e5ba8e0a3972b8f", "surrogate": "1de76c4ee0d59a13"},
    "mem": {"fit": "c729a007df5ce30b", "online": "8b0072e32fdcb484", "surrogate": "911f78ce0922d528"},
    "layered_random": {"fit": "56cdf279e9538e8a", "online": "6e8767d9a6b22cdd", "surrogate": "abae110352d121aa"},
    "mem_dictionary_own": {"fit": "8a8835d214482c8d", "online": "b15c8185fb61d29a", "surrogate": "06a7d33637199c2a"},
    "layered_k0": {"fit": "1c9322e01c1b0d41"},
    "em": {"fit": "c97808b157874a4e"},
    "trigger_only": {"fit": "83d3564df851720b"},
    "random": {"fit": "88afbac31a263399"},
}

BASELINE = MEMConfig(method="mem", eot_transforms=(), **SMALL)
CONFIGS = {
    "layered": MEMConfig(**SMALL),
    "mem": MEMConfig.paper(**SMALL),
    "layered_random": MEMConfig(**SMALL, trigger_position="random", eot_transforms=("jpeg", "crop-flip")),
    "mem_dictionary_own": MEMConfig(**SMALL, method="mem", eot_transforms=(), shuffle_captions=False),
    "layered_k0": MEMConfig(**SMALL, trigger_length=0),
}
BASELINES = {
    "em": lambda train, clip: error_minimizing_noise(train, *clip, BASELINE, progress=False),
    "trigger_only": lambda train, clip: trigger_only(train, *clip, BASELINE, progress=False),
    "random": lambda train, clip: random_noise(train, 32, seed=3),
}


@pytest.fixture
def one_thread():
    """The digests were recorded with one torch thread: summation order, hence the last bits of the
    surrogate's weights, depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted([*CONFIGS, *BASELINES]))
def test_each_method_computes_the_recorded_bytes(clip, rows, name, one_thread):
    """A change that alters these bytes must bump ALGORITHM_VERSION and record new digests."""
    environment = (platform.machine(), torch.__version__)
    if environment != RECORDED["environment"] or torch.cuda.is_available():
        pytest.skip(f"digests recorded on {RECORDED['environment']} CPU; this is {environment}")
    assert ALGORITHM_VERSION == RECORDED["algorithm_version"], "outputs were re-versioned: record the digests anew"
    train, unseen = rows
    if name in BASELINES:
        assert {"fit": digest(BASELINES[name](train, clip))} == RECORDED[name]
        return
    transform = ProtectTransform(*clip, CONFIGS[name], progress=False)
    got = {"fit": digest(transform.protect(train))}
    if "online" in RECORDED[name]:
        got.update(online=digest(transform.apply(unseen)), surrogate=weights(transform.surrogate.model))
    assert got == RECORDED[name]
