"""The method objects (`hf_unlearnable.methods`): each protects a tiny data set and does what its
docstring promises, each computes byte for byte what its flag combination computed before it
existed, and the levers that left MEMConfig are refused while old saved protectors still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import platform
import re
import warnings

import datasets
import numpy as np
import pytest
import torch

import hf_unlearnable
from hf_unlearnable import ALGORITHM_VERSION, EM, MEM, Layered, MEMConfig, ProtectTransform, RandomNoise, TriggerOnly
from hf_unlearnable.config import REMOVED_FIELDS
from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.methods import SHARED_SETTINGS, SurrogateMethod
from hf_unlearnable.testing import synthetic_captions

#: A small schedule on which every part of each method runs (surrogate steps, HotFlip, PGD, 2 rounds).
SMALL = dict(
    max_rounds=2,
    trigger_rounds=2,
    surrogate_steps=4,
    batch_size=8,
    pgd_steps=2,
    hotflip_candidates=8,
    learning_rate=5e-4,
    online_rounds=1,
)
PIXELS_ONLY = {k: v for k, v in SMALL.items() if k not in ("trigger_rounds", "hotflip_candidates")}  # EM's share
TRIGGERS_ONLY = {k: v for k, v in SMALL.items() if k != "pgd_steps"}  # TriggerOnly's share
SURROGATE_METHODS = (MEM, EM, TriggerOnly, Layered)


@pytest.fixture(scope="module")
def rows():
    """(16 rows to fit on, 8 rows the fitted transform has not seen)."""
    data = synthetic_captions(24, image_size=32, seed=0)
    return data.select(range(16)), data.select(range(16, 24))


def images(ds) -> np.ndarray:
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    return np.stack([decode_png(value["bytes"]) for value in raw]).astype(np.int16)


def clean(ds) -> np.ndarray:
    return np.stack([prepare_image(value, 32) for value in ds["image"]]).astype(np.int16)


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


# ----------------------------------------------------------------------------------------------
# what each method promises
# ----------------------------------------------------------------------------------------------


def test_em_moves_pixels_within_the_budget_and_leaves_captions_alone(clip, rows):
    train, _ = rows
    out = EM(**PIXELS_ONLY).protect(train, *clip, progress=False)
    moved = np.abs(images(out) - clean(train))
    assert 0 < moved.max() <= 8 and (moved > 0).mean() > 0.1
    assert out["caption"][:] == train["caption"][:]


def test_trigger_only_changes_captions_and_moves_no_pixel(clip, rows):
    train, _ = rows
    out = TriggerOnly(**TRIGGERS_ONLY).protect(train, *clip, progress=False)
    assert (images(out) == clean(train)).all()
    for protected, caption in zip(out["caption"][:], train["caption"][:]):
        assert protected.endswith(" " + caption) and len(protected.split()) == len(caption.split()) + 3


@pytest.mark.parametrize("method", [MEM, Layered])
def test_mem_and_layered_change_both_captions_and_pixels(clip, rows, method):
    train, _ = rows
    transform = ProtectTransform(*clip, method=method(**SMALL), progress=False)
    out = transform.protect(train)
    moved = np.abs(images(out) - clean(train))
    assert 0 < moved.max() <= 8
    assert all(p.endswith(" " + c) and p != c for p, c in zip(out["caption"][:], train["caption"][:]))
    stages = {"MEM": ["mem", "mem"], "Layered": ["pixels", "pixels", "triggers", "triggers"]}[method.__name__]
    assert [record["stage"] for record in transform.history] == stages


def test_random_noise_is_seeded_uniform_noise_within_the_budget(clip, rows):
    train, _ = rows
    out = RandomNoise(epsilon=4 / 255, seed=3).protect(train, clip[0])  # the resolution of the model
    difference = images(out) - clean(train)
    assert np.abs(difference).max() == 4 and out["caption"][:] == train["caption"][:]
    assert digest(RandomNoise(epsilon=4 / 255, seed=3).protect(train, 32)) == digest(out)
    assert digest(RandomNoise(epsilon=4 / 255, seed=4).protect(train, 32)) != digest(out)


def test_the_defaults_are_the_layered_method_and_mem_as_published():
    assert Layered().config() == MEMConfig()
    assert MEM().config() == MEMConfig.paper()
    assert MEM(max_rounds=3).config() == MEMConfig.paper(max_rounds=3)
    assert [m().name for m in SURROGATE_METHODS] == ["MEM-3", "EM", "trigger only", "layered"]
    # a config changed after the fact leaves the method as it was
    method = EM()
    method.config().max_rounds = 1
    assert method.config().max_rounds == 20


def test_protect_transform_runs_the_method_object(clip, monkeypatch):
    seen = []
    monkeypatch.setattr(ProtectTransform, "fit", lambda self, *a, **k: seen.append(self.config) or self)
    monkeypatch.setattr(ProtectTransform, "apply", lambda self, ds, **k: ds)
    EM(max_rounds=3).protect(datasets.Dataset.from_dict({"image": [], "caption": []}), *clip, progress=False)
    assert seen == [EM(max_rounds=3).config()]
    assert ProtectTransform(*clip, progress=False).config == Layered().config()
    with pytest.raises(TypeError, match="config or a method, not both"):
        ProtectTransform(*clip, MEMConfig(), method=EM())
    with pytest.raises(TypeError, match=r"method=: ProtectTransform\(model, processor, method=EM\(\)\)"):
        ProtectTransform(*clip, EM())
    with pytest.raises(TypeError, match="trains no surrogate"):
        ProtectTransform(*clip, method=RandomNoise())


@pytest.mark.parametrize(
    "method, field, message",
    [
        (EM, "trigger_length", "EM sets trigger_length=0 itself"),
        (EM, "trigger_words", "EM puts no trigger"),
        (EM, "shuffle_captions", "EM sets shuffle_captions=False itself"),
        (MEM, "method", "MEM sets method='mem' itself"),
        (TriggerOnly, "epsilon", "trigger-only adds no image noise"),
        (TriggerOnly, "image_noise", "sets image_noise=False"),
        (Layered, "shuffle_captions", "never a shuffled one"),
        (Layered, "method", "sets method='layered'"),
    ],
)
def test_a_field_a_method_sets_or_does_not_use_is_refused(method, field, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        method(**{field: MEMConfig().to_dict()[field]})


def test_a_method_without_its_trigger_points_to_em():
    for method in (MEM, Layered):
        with pytest.raises(ValueError, match=r"EM\("):
            method(trigger_length=0)
    with pytest.raises(ValueError, match="nothing would be optimised"):
        TriggerOnly(trigger_length=0)
    with pytest.raises(TypeError, match="epsilom"):  # a typo is MEMConfig's unknown argument
        EM(epsilom=0.1)


def docstring_arguments(method) -> dict[str, str]:
    """{argument: its "(Default: ...)" text} from the ``Arguments:`` block of a method's docstring."""
    block = inspect.cleandoc(method.__doc__).partition("Arguments:")[2].partition("\n\n")[0]
    return dict(re.findall(r"^    (\w+) \(.*\(Default: (.*)\)$", block, re.MULTILINE))


@pytest.mark.parametrize("method", SURROGATE_METHODS)
def test_each_docstring_states_the_defaults_the_method_runs(method):
    documented = docstring_arguments(method)
    config = method().config()
    assert documented, method
    for name, default in documented.items():
        assert getattr(config, name) == eval(default), (method.__name__, name)
    # every MEMConfig field is a documented argument, a shared setting, set by the method or unused by it
    fields = {field.name for field in dataclasses.fields(MEMConfig)}
    accounted = set(documented) | set(SHARED_SETTINGS) | set(method.sets) | set(method.unused)
    assert accounted == fields, (method.__name__, fields ^ accounted)


def test_random_noise_docstring_and_the_package_root():
    assert docstring_arguments(RandomNoise) == {"epsilon": "8/255", "seed": "0"}
    assert RandomNoise() == RandomNoise(8 / 255, 0) != RandomNoise(seed=1)
    assert {"MEM", "EM", "TriggerOnly", "Layered", "RandomNoise"} <= set(hf_unlearnable.__all__)
    for method in (*SURROGATE_METHODS, RandomNoise):
        assert re.search(r"\[https://arxiv\.org/abs/\d{4}\.\d{5}\]", method.__doc__), method
        assert "Examples::" in method.__doc__ and "Shape:" in method.__doc__
    assert repr(EM(max_rounds=3)) == "EM(max_rounds=3)" and issubclass(EM, SurrogateMethod)


# ----------------------------------------------------------------------------------------------
# the same bytes as before the method objects (and before the levers left)
# ----------------------------------------------------------------------------------------------

#: Digests of what the flag combinations computed on `rows` before the method objects existed
#: (ALGORITHM_VERSION 8, recorded with the code of that time): fitted copy, 8 unseen rows mapped by
#: the fitted transform, final surrogate weights (one torch thread).
RECORDED = {
    "algorithm_version": 8,
    "environment": ("x86_64", "2.13.0+cpu"),
    # MEMConfig(**SMALL): the default, layered
    "layered": {"fit": "c7588716a014883e", "online": "0e5ba8e0a3972b8f", "surrogate": "1de76c4ee0d59a13"},
    # MEMConfig.paper(**SMALL)
    "mem": {"fit": "c729a007df5ce30b", "online": "8b0072e32fdcb484", "surrogate": "911f78ce0922d528"},
    # MEMConfig(**SMALL, trigger_position="random", eot_transforms=("jpeg", "crop-flip"))
    "layered_random": {"fit": "56cdf279e9538e8a", "online": "6e8767d9a6b22cdd", "surrogate": "abae110352d121aa"},
    # MEMConfig(**SMALL, method="mem", eot_transforms=(), shuffle_captions=False)
    "mem_dictionary_own": {"fit": "8a8835d214482c8d", "online": "b15c8185fb61d29a", "surrogate": "06a7d33637199c2a"},
    # MEMConfig(**SMALL, trigger_length=0): the layered method's pixel layer alone
    "layered_k0": {"fit": "1c9322e01c1b0d41"},
    # baselines.error_minimizing_noise / trigger_only with MEMConfig(method="mem", eot_transforms=(), **SMALL)
    "em": {"fit": "c97808b157874a4e"},
    "trigger_only": {"fit": "83d3564df851720b"},
    # baselines.random_noise(train, 32, seed=3)
    "random": {"fit": "88afbac31a263399"},
}

SAME_AS_BEFORE = {
    "layered": lambda: Layered(**SMALL),
    "mem": lambda: MEM(**SMALL),
    "layered_random": lambda: Layered(**SMALL, trigger_position="random", eot_transforms=("jpeg", "crop-flip")),
    "mem_dictionary_own": lambda: MEM(**SMALL, trigger_words="dictionary", shuffle_captions=False),
    "layered_k0": lambda: EM(**PIXELS_ONLY, eot_transforms=("jpeg",)),  # what Layered points a k = 0 user to
    "em": lambda: EM(**PIXELS_ONLY),
    "trigger_only": lambda: TriggerOnly(**TRIGGERS_ONLY),
    "random": lambda: RandomNoise(seed=3),
}


@pytest.fixture
def one_thread():
    """The digests were recorded with one torch thread: summation order, hence the last bits of the
    surrogate's weights, depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SAME_AS_BEFORE))
def test_each_method_computes_what_its_flag_combination_computed(clip, rows, name, one_thread):
    """A method object is a name for settings, not a new algorithm: on the recorded machine its
    output is byte for byte the output of the flag combination it replaced, so ALGORITHM_VERSION
    stays. A change that alters these bytes must bump ALGORITHM_VERSION and record new digests."""
    environment = (platform.machine(), torch.__version__)
    if environment != RECORDED["environment"] or torch.cuda.is_available():
        pytest.skip(f"digests recorded on {RECORDED['environment']} CPU; this is {environment}")
    assert ALGORITHM_VERSION == RECORDED["algorithm_version"], "outputs were re-versioned: record the digests anew"
    train, unseen = rows
    method, expected = SAME_AS_BEFORE[name](), RECORDED[name]
    if isinstance(method, RandomNoise):
        assert {"fit": digest(method.protect(train, 32))} == expected
        return
    transform = ProtectTransform(*clip, method=method, progress=False)
    got = {"fit": digest(transform.protect(train))}
    if "online" in expected:
        got.update(online=digest(transform.apply(unseen)), surrogate=weights(transform.surrogate.model))
    assert got == expected


# ----------------------------------------------------------------------------------------------
# the levers that left: refused, and ignored in a saved protector
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(REMOVED_FIELDS))
def test_a_removed_field_is_refused_by_name(field):
    for make in (
        lambda: MEMConfig(**{field: 1}),
        lambda: MEMConfig().replace(**{field: 1}),
        lambda: MEMConfig.paper(**{field: 0}),
    ):
        with pytest.raises(TypeError, match=rf"MEMConfig no longer has {field}: measured"):
            make()
    with pytest.raises(ValueError, match=rf"no longer has {field}"):
        MEMConfig.from_dict({**MEMConfig().to_dict(), field: REMOVED_FIELDS[field]})
    with pytest.raises(TypeError, match=rf"no longer has {field}"):
        EM(**{field: 1})
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
