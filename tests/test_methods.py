"""What each protection method computes, pinned by digests, so that naming the methods (objects
instead of flag combinations) and removing levers can be checked byte for byte; the levers that left
MEMConfig are refused by name while old saved protectors still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import warnings

import datasets
import pytest
import torch

from hf_unlearnable import ALGORITHM_VERSION, MEMConfig, ProtectTransform
from hf_unlearnable.baselines import error_minimizing_noise, random_noise, trigger_only
from hf_unlearnable.config import REMOVED_FIELDS
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


# ----------------------------------------------------------------------------------------------
# the levers that left: refused, and ignored in a saved protector
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(REMOVED_FIELDS))
def test_a_removed_field_is_refused_by_name(field):
    for make in (lambda: MEMConfig(**{field: 1}), lambda: MEMConfig().replace(**{field: 1}),
                 lambda: MEMConfig.paper(**{field: 0})):
        with pytest.raises(TypeError, match=rf"MEMConfig no longer has {field}: measured"):
            make()
    with pytest.raises(ValueError, match=rf"no longer has {field}"):
        MEMConfig.from_dict({**MEMConfig().to_dict(), field: REMOVED_FIELDS[field]})
    assert field not in {f.name for f in dataclasses.fields(MEMConfig)}


def test_removed_fields_are_named_together():
    with pytest.raises(TypeError, match="no longer has trigger_dropout and surrogate_restarts: measured, these levers"):
        MEMConfig(trigger_dropout=0.5, surrogate_restarts=1)


@pytest.mark.parametrize("field", sorted(REMOVED_FIELDS))
def test_the_cli_has_no_flag_for_a_removed_field(field, capsys):
    from hf_unlearnable.cli import build_parser

    flag = "--" + field.replace("_", "-")
    assert build_parser().parse_args(["protect", "--max-rounds", "2"]).max_rounds == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["protect", "--max-rounds", "2", flag, "1"])
    assert f"unrecognized arguments: {flag} 1" in capsys.readouterr().err


def saved_with(clip, tmp_path, config: MEMConfig, **extra) -> None:
    """A protector saved by this release, then edited as an older release wrote it (``extra``
    fields in its config)."""
    ProtectTransform(*clip, config, progress=False).save_pretrained(tmp_path)
    meta_file = tmp_path / "protect_config.json"
    meta = json.loads(meta_file.read_text())
    meta["config"].update(extra)
    meta_file.write_text(json.dumps(meta))


def test_an_old_protector_with_the_levers_off_loads_silently(clip, tmp_path):
    config = MEMConfig.paper(**SMALL)
    saved_with(clip, tmp_path, config, trigger_dropout=0.0, surrogate_restarts=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ProtectTransform.from_pretrained(tmp_path, progress=False)
    assert loaded.config == config


def test_an_old_protector_with_a_lever_on_loads_with_a_warning(clip, tmp_path):
    config = MEMConfig.paper(**SMALL)
    saved_with(clip, tmp_path, config, trigger_dropout=0.5, surrogate_restarts=2)
    with pytest.warns(UserWarning) as caught:
        loaded = ProtectTransform.from_pretrained(tmp_path, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("trigger_dropout=0.5" in m and "ignored" in m for m in messages), messages
    assert any("surrogate_restarts=2" in m for m in messages), messages
    assert caught[0].filename == __file__  # points at the caller's from_pretrained line
    assert loaded.config == config
