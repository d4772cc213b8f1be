"""The recipe and `hf-unlearnable protect` as real 2-process runs on CPU, under torchrun and accelerate launch.

Each process must join one process group (the process state comes from `hf_unlearnable.devices`),
the main process alone writes the output, and the output keeps the 1-process output's promises.
Two processes are not bit-equal to one (each surrogate step sees a batch per process), but a run is
deterministic for a given number of processes: both launchers give the same bytes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest

from hf_unlearnable.devices import check_world_size
from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.testing import synthetic_captions, tiny_clip

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "protect_coco.py"
ROWS, SIZE = 12, 32  # batches of 8 and 4: each process sweeps one
TINY = [
    "--max-rounds",
    "1",
    "--trigger-rounds",
    "1",
    "--surrogate-steps",
    "2",
    "--pgd-steps",
    "1",
    "--batch-size",
    "8",
    "--hotflip-candidates",
    "2",
    "--trigger-length",
    "2",
    "--no-progress",
]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launcher(kind: str) -> list[str]:
    """Two CPU processes: what recipes/README.md tells users to type, with python -m for the test's interpreter."""
    if kind == "torchrun":
        return [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            free_port(),
        ]
    return [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        free_port(),
    ]


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # the CPU path, also on a machine with a GPU
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("launchers")
    model, processor = tiny_clip(image_size=SIZE, seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    clean = synthetic_captions(ROWS, image_size=SIZE, seed=3, captions_per_image=2)
    clean = clean.add_column("row_id", list(range(ROWS))[::-1]).add_column("note", [f"n{i}" for i in range(ROWS)])
    clean.save_to_disk(root / "data")
    return {"root": root, "model": str(root / "model"), "data": str(root / "data"), "clean": clean}


def images(ds: datasets.Dataset) -> list[bytes]:
    return [value["bytes"] for value in ds.with_format("arrow")["image"].to_pylist()]


def assert_keeps_promises(
    protected: datasets.Dataset, reference: datasets.Dataset, clean: datasets.Dataset, epsilon_levels: int
) -> None:
    """What the 1-process output promises: same rows, order, columns; budget; one trigger per image."""
    assert protected.features == reference.features and len(protected) == len(reference) == ROWS
    assert protected["row_id"][:] == reference["row_id"][:] == clean["row_id"][:]
    assert protected["note"][:] == clean["note"][:]
    clean_images = clean.cast_column("image", datasets.Image(decode=False))["image"][:]
    for stored, before, original in zip(images(protected), images(reference), clean_images):
        pixels = decode_png(stored).astype(int)
        assert pixels.shape == decode_png(before).shape
        assert np.abs(pixels - prepare_image(original, SIZE)).max() <= epsilon_levels
    for texts, texts_before, originals in zip(protected["caption"][:], reference["caption"][:], clean["caption"][:]):
        assert len(texts) == len(originals)
        triggers = {text[: -len(original)] for text, original in zip(texts, originals)}
        assert all(text.endswith(" " + original) for text, original in zip(texts, originals))
        assert len(triggers) == 1 and len(next(iter(triggers)).split()) == 2  # --trigger-length 2, all captions
        assert [len(t.split()) for t in texts] == [len(t.split()) for t in texts_before]


def test_recipe_two_processes_under_torchrun_and_accelerate_launch(assets, tmp_path):
    spec = importlib.util.spec_from_file_location("protect_coco_launchers", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    common = ["--dataset", assets["data"], "--model", assets["model"], *TINY]
    # the 1-process reference: the same command, in this process
    assert recipe.main([*common, "--output-dir", str(tmp_path / "one"), "--work-dir", str(tmp_path / "w-one")]) == 0
    reference = datasets.load_from_disk(str(tmp_path / "one"))

    outputs = {}
    for kind in ("torchrun", "accelerate"):
        output, work, saved = tmp_path / kind, tmp_path / f"w-{kind}", tmp_path / f"t-{kind}"
        result = run(
            [
                *launcher(kind),
                str(RECIPE),
                *common,
                "--output-dir",
                str(output),
                "--work-dir",
                str(work),
                "--save-transform",
                str(saved),
            ]
        )
        summaries = [
            json.loads(line[len("summary: ") :]) for line in result.stdout.splitlines() if line.startswith("summary: ")
        ]
        assert len(summaries) == 1, result.stdout  # the main process alone reports and writes
        assert summaries[0]["processes"] == 2 and summaries[0]["rows"] == ROWS
        assert (saved / "protect_config.json").is_file()
        outputs[kind] = datasets.load_from_disk(str(output))
        assert_keeps_promises(outputs[kind], reference, assets["clean"], summaries[0]["epsilon_levels"])
    # deterministic for a given number of processes, whichever launcher started them
    assert outputs["torchrun"]["caption"][:] == outputs["accelerate"]["caption"][:]
    assert images(outputs["torchrun"]) == images(outputs["accelerate"])


def test_cli_protect_two_processes_under_torchrun_and_accelerate_launch(assets, tmp_path, capsys):
    from hf_unlearnable.cli import main

    common = ["protect", "--dataset", assets["data"], "--model", assets["model"], *TINY]
    assert main([*common, "--output", str(tmp_path / "one"), "--work-dir", str(tmp_path / "w-one")]) == 0
    assert "processes: 1" in capsys.readouterr().out
    reference = datasets.load_from_disk(str(tmp_path / "one"))

    outputs = {}
    for kind in ("torchrun", "accelerate"):
        output = tmp_path / kind
        result = run(
            [
                *launcher(kind),
                "-m",
                "hf_unlearnable.cli",
                *common,
                "--output",
                str(output),
                "--work-dir",
                str(tmp_path / f"w-{kind}"),
            ]
        )
        assert re.findall(r"processes: \d+", result.stdout) == ["processes: 2"], result.stdout
        assert result.stdout.count(f"protected {ROWS} rows") == 1
        outputs[kind] = datasets.load_from_disk(str(output))
        assert_keeps_promises(outputs[kind], reference, assets["clean"], 8)
    assert outputs["torchrun"]["caption"][:] == outputs["accelerate"]["caption"][:]
    assert images(outputs["torchrun"]) == images(outputs["accelerate"])


def test_check_world_size_names_both_numbers_and_the_fix():
    check_world_size(None, 1, None)  # no launcher
    check_world_size(2, 2, 2)
    check_world_size(None, 2, 2)  # a process group set up without a launcher's variables
    fix = r".*each would run alone.*Fix: call hf_unlearnable.devices.process_state\(\)"
    with pytest.raises(ValueError, match=r"\(WORLD_SIZE=2 from the launcher, 1 in Accelerate's process state\)" + fix):
        check_world_size(2, 1, None)
    with pytest.raises(
        ValueError,
        match=r"\(WORLD_SIZE=4 from the launcher, 2 in Accelerate's process state, "
        r"2 in torch.distributed's process group\)",
    ):
        check_world_size(4, 2, 2)
    with pytest.raises(
        ValueError, match=r"\(1 in Accelerate's process state, 2 in torch.distributed's process group\)"
    ):
        check_world_size(None, 1, 2)


def test_a_process_state_built_before_the_library_stops_the_run(tmp_path):
    """The recipe's old bug, for real: PartialState() first under torchrun on CPU joins the process
    group (2) but counts 1 process; the library's first Accelerator refuses to run on it."""
    script = tmp_path / "early_state.py"
    script.write_text(
        textwrap.dedent(
            """
        import importlib.util, os
        from accelerate import PartialState
        state = PartialState()  # no cpu=True
        # devices.py alone: the package's __init__ would import transformers, which this check does not need
        spec = importlib.util.spec_from_file_location("devices", "DEVICES")
        devices = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(devices)
        try:
            devices.build_accelerator("no")
        except ValueError as error:
            with open(os.path.join("OUT", "rank" + os.environ["RANK"]), "w") as handle:
                handle.write(f"refused: {error}")
        """
        )
        .replace("DEVICES", str(ROOT / "hf_unlearnable" / "devices.py"))
        .replace("OUT", str(tmp_path))
    )
    result = run([*launcher("torchrun"), str(script)], timeout=120)
    expected = (
        "refused: The processes of this run disagree on how many they are (WORLD_SIZE=2 from the launcher, "
        "1 in Accelerate's process state, 2 in torch.distributed's process group)"
    )
    for rank in (0, 1):  # both processes stop
        assert (tmp_path / f"rank{rank}").read_text().startswith(expected), result.stdout


def test_only_devices_builds_the_process_state():
    """Every entry point gets its process state from hf_unlearnable.devices; a second builder could disagree."""
    pattern = re.compile(r"\b(PartialState|Accelerator)\(")
    sources = [
        *sorted((ROOT / "hf_unlearnable").rglob("*.py")),
        *sorted((ROOT / "recipes").glob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
    ]
    builders = [str(path.relative_to(ROOT)) for path in sources if pattern.search(path.read_text())]
    assert builders == ["hf_unlearnable/devices.py"]


# the levers beyond the paper's MEM: a random word slot per caption and EOT in PGD
LEVERS = [
    "--method",
    "mem",
    "--trigger-position",
    "random",
    "--eot-transforms",
    "jpeg,crop-flip",
    "--max-rounds",
    "2",
    "--seed",
    "7",
]


def test_cli_protect_with_every_lever_on_two_processes(assets, tmp_path):
    """Each process sweeps its own shard of rows: each caption's trigger must sit at that caption's
    own word slot (the slot array is sharded with the rows), every image keeps the budget, and the
    EOT steps run under torchrun."""
    from hf_unlearnable import ProtectTransform

    output, saved = tmp_path / "out", tmp_path / "saved"
    result = run(
        [
            *launcher("torchrun"),
            "-m",
            "hf_unlearnable.cli",
            "--verbose",
            "protect",
            "--dataset",
            assets["data"],
            "--model",
            assets["model"],
            *TINY,
            *LEVERS,
            "--output",
            str(output),
            "--work-dir",
            str(tmp_path / "work"),
            "--keep-work-dir",
            "--save-transform",
            str(saved),
        ]
    )
    assert re.findall(r"processes: \d+", result.stdout) == ["processes: 2"], result.stdout
    protected, clean = datasets.load_from_disk(str(output)), assets["clean"]
    assert protected["row_id"][:] == clean["row_id"][:] and protected["note"][:] == clean["note"][:]
    clean_images = clean.cast_column("image", datasets.Image(decode=False))["image"][:]
    for stored, original in zip(images(protected), clean_images):
        assert np.abs(decode_png(stored).astype(int) - prepare_image(original, SIZE)).max() <= 8
    codec = ProtectTransform.from_pretrained(saved, progress=False).codec
    assert codec.position == "random" and codec.seed == 7
    # the layout the surrogate optimised (the work dir's per-caption slots) is the one written out
    (slots,) = (tmp_path / "work").rglob("caption_positions.npy")
    flat = [caption for captions in clean["caption"][:] for caption in captions]
    np.testing.assert_array_equal(np.load(slots), codec.encode_positions(flat))
    moved = 0
    for texts, originals in zip(protected["caption"][:], clean["caption"][:]):
        triggers = [codec.read_trigger(text, original) for text, original in zip(texts, originals)]
        assert all(trigger == triggers[0] for trigger in triggers)  # one trigger per image
        for text, original in zip(texts, originals):
            assert codec.apply(triggers[0], original) == text  # at this caption's own slot, nothing else changed
            moved += not text.endswith(" " + original)
    assert moved > ROWS // 2  # most triggers are not at the start


def test_cli_rerun_on_two_processes_reuses_the_finished_work_dir(assets, tmp_path):
    # A finished work dir is reloaded on every rank. On CPU the accelerator's device is "cpu:0",
    # which safetensors refused ("device cpu:0 is invalid"): every 2-process rerun or resume died.
    common = [
        "-m",
        "hf_unlearnable.cli",
        "protect",
        "--dataset",
        assets["data"],
        "--model",
        assets["model"],
        *TINY,
        "--work-dir",
        str(tmp_path / "work"),
    ]
    first = run([*launcher("torchrun"), *common, "--output", str(tmp_path / "first")])
    second = run([*launcher("torchrun"), *common, "--output", str(tmp_path / "second")])
    for result in (first, second):
        assert re.findall(r"processes: \d+", result.stdout) == ["processes: 2"], result.stdout
    assert "reused" not in first.stdout
    assert f"MEM rounds reused from the finished run in {tmp_path / 'work'}," in second.stdout
    before, after = (datasets.load_from_disk(str(tmp_path / name)) for name in ("first", "second"))
    assert after["caption"][:] == before["caption"][:] and images(after) == images(before)
