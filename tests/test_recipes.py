"""recipes/protect_coco.py end to end: real subprocesses (python and accelerate launch) and in-process main()."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import datasets
import pytest

from hf_unlearnable import MEMConfig
from hf_unlearnable.testing import synthetic_captions, tiny_clip, tiny_clip_config

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "protect_coco.py"
IMAGES, CAPTIONS = 8, 3
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
    "--no-progress",
]
PNG = b"\x89PNG\r\n\x1a\n"
SECRET = "hf_test_secret_token_do_not_print_8f3a"


def load_recipe():
    spec = importlib.util.spec_from_file_location("protect_coco_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny CLIP folder, its CLIPConfig JSON, and two layouts saved with save_to_disk."""
    root = tmp_path_factory.mktemp("recipe")
    model, processor = tiny_clip(image_size=32, seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    tiny_clip_config(32).to_json_file(root / "clip_config.json")

    flickr = synthetic_captions(IMAGES, image_size=32, seed=1, captions_per_image=CAPTIONS)
    flickr = flickr.add_column("filename", [f"{i}.jpg" for i in range(IMAGES)])
    flickr.save_to_disk(root / "flickr")
    # Flickr8K-style: one caption per column
    flickr8k = flickr.remove_columns("caption")
    for j in range(CAPTIONS):
        flickr8k = flickr8k.add_column(f"caption_{j}", [texts[j] for texts in flickr["caption"][:]])
    flickr8k.save_to_disk(root / "flickr8k")

    # COCO-style: one row per caption, captions of an image far apart, a per-caption "id" column
    images = flickr.with_format("arrow")["image"].to_pylist()
    captions = flickr["caption"][:]
    order = [(i, j) for j in range(CAPTIONS) for i in range(IMAGES)]
    coco = datasets.Dataset.from_dict(
        {
            "image_id": [500 + i for i, _ in order],
            "image": [images[i] for i, _ in order],
            "caption": [captions[i][j] for i, j in order],
            "id": list(range(len(order))),
        },
        features=datasets.Features(
            {
                "image_id": datasets.Value("int64"),
                "image": datasets.Image(),
                "caption": datasets.Value("string"),
                "id": datasets.Value("int64"),
            }
        ),
    )
    coco.save_to_disk(root / "coco")
    return {
        "root": root,
        "model": str(root / "model"),
        "config": str(root / "clip_config.json"),
        "flickr": str(root / "flickr"),
        "flickr8k": str(root / "flickr8k"),
        "coco": str(root / "coco"),
        "captions": captions,
        "coco_ds": coco,
    }


def run_recipe(arguments, launcher=(), timeout=120):
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    command = [sys.executable, *launcher, str(RECIPE), *arguments]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    return result


def assert_protected_lists(protected, clean_captions, column="caption"):
    """Each row: a PNG image and a list of captions = one shared trigger + ' ' + the clean caption."""
    stored = protected.with_format("arrow")["image"].to_pylist()
    assert all(value["bytes"].startswith(PNG) for value in stored)
    for captions, clean in zip(protected[column][:], clean_captions):
        assert isinstance(captions, list) and len(captions) == len(clean)
        triggers = set()
        for text, original in zip(captions, clean):
            assert text.endswith(" " + original) and len(text) > len(original) + 1
            triggers.add(text[: -len(original)])
        assert len(triggers) == 1  # one trigger per image, on all its captions


def test_recipe_subprocess_groups_coco_layout(assets, tmp_path):
    output = tmp_path / "out"
    result = run_recipe(
        [
            "--dataset",
            assets["coco"],
            "--model",
            assets["model"],
            "--output-dir",
            str(output),
            "--per-caption-columns",
            "id",
            *TINY,
        ]
    )
    assert "grouped by 'image_id'" in result.stdout and "summary: {" in result.stdout
    protected = datasets.load_from_disk(str(output))
    assert protected.column_names == ["image_id", "image", "caption", "id"]
    assert protected["image_id"][:] == [500 + i for i in range(IMAGES)]  # order of first appearance
    assert protected["id"][:] == [[j * IMAGES + i for j in range(CAPTIONS)] for i in range(IMAGES)]
    assert_protected_lists(protected, assets["captions"])


def test_recipe_accelerate_launch_flickr_layout(assets, tmp_path):
    pytest.importorskip("accelerate.commands.launch")
    output, saved = tmp_path / "out", tmp_path / "transform"
    launcher = [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    result = run_recipe(
        [
            "--dataset",
            assets["flickr"],
            "--model",
            assets["model"],
            "--output-dir",
            str(output),
            "--save-transform",
            str(saved),
            "--work-dir",
            str(tmp_path / "work"),
            "--max-rows",
            "6",
            "--trigger-length",
            "2",
            *TINY,
        ],
        launcher=launcher,
    )
    assert "protected 6 rows" in result.stdout and "grouped by" not in result.stdout
    protected = datasets.load_from_disk(str(output))
    assert len(protected) == 6 and protected["filename"][:] == [f"{i}.jpg" for i in range(6)]
    assert_protected_lists(protected, assets["captions"][:6])
    assert all(
        len(text.split()) == len(clean.split()) + 2  # --trigger-length reached MEMConfig
        for texts, cleans in zip(protected["caption"][:], assets["captions"])
        for text, clean in zip(texts, cleans)
    )
    assert (saved / "protect_config.json").is_file() and (saved / "surrogate" / "model.safetensors").is_file()


def test_recipe_from_scratch_per_caption_output(assets, tmp_path, capsys):
    output = tmp_path / "out"
    code = load_recipe().main(
        [
            "--dataset",
            assets["coco"],
            "--from-scratch",
            assets["config"],
            "--processor",
            assets["model"],
            "--output-dir",
            str(output),
            "--per-caption-columns",
            "id",
            "--per-caption-output",
            "--image-id-column",
            "image_id",
            *TINY,
        ]
    )
    assert code == 0
    assert "surrogate after 2 rounds" in capsys.readouterr().out  # the layered default: one pixel, one trigger round
    protected, clean = datasets.load_from_disk(str(output)), assets["coco_ds"]
    assert protected.features == clean.features and len(protected) == len(clean)
    assert protected["image_id"][:] == clean["image_id"][:] and protected["id"][:] == clean["id"][:]  # input order
    triggers = {}
    for image_id, text, original in zip(protected["image_id"][:], protected["caption"][:], clean["caption"][:]):
        assert text.endswith(" " + original)
        triggers.setdefault(image_id, set()).add(text[: -len(original)])
    assert all(len(found) == 1 for found in triggers.values())
    images = protected.with_format("arrow")["image"].to_pylist()
    assert all(value["bytes"].startswith(PNG) for value in images)
    assert images[0] == images[IMAGES]  # the same protected image on every caption row of an image


def test_recipe_push_to_hub_uses_token_without_printing_it(assets, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_push(ds, repo_id, transform, **kwargs):
        calls.append({"rows": len(ds), "repo_id": repo_id, "fitted": transform.is_fitted, **kwargs})
        return f"https://huggingface.co/datasets/{repo_id}"

    monkeypatch.setitem(sys.modules, "hf_unlearnable.hub", types.SimpleNamespace(push_protected=fake_push))
    monkeypatch.setenv("MY_HUB_TOKEN", SECRET)
    code = load_recipe().main(
        [
            "--dataset",
            assets["flickr8k"],
            "--caption-column",
            "caption_0,caption_1,caption_2",
            "--model",
            assets["model"],
            "--output-dir",
            str(tmp_path / "out"),
            "--push-to-hub",
            "someone/protected-flickr",
            "--private",
            "--hub-token-env",
            "MY_HUB_TOKEN",
            "--license",
            "cc-by-4.0",
            "--card-details",
            "full",
            "--verbose",
            *TINY,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(calls) == 1
    call = calls[0]
    assert call["repo_id"] == "someone/protected-flickr" and call["private"] is True and call["token"] == SECRET
    assert call["rows"] == IMAGES and call["fitted"] and call["license"] == "cc-by-4.0"
    assert call["card_details"] == "full"  # opted in; the default is "minimal"
    assert call["source_dataset"] is None  # a local path is not named in the card
    assert "pushed to https://huggingface.co/datasets/someone/protected-flickr" in captured.out
    assert SECRET not in captured.out and SECRET not in captured.err
    protected = datasets.load_from_disk(str(tmp_path / "out"))  # the merged list column, protected
    assert protected.column_names == ["image", "filename", "captions"]
    assert_protected_lists(protected, assets["captions"], column="captions")


def test_recipe_rejects_bad_arguments_before_protecting(assets, tmp_path, monkeypatch, capsys):
    recipe = load_recipe()
    base = ["--model", assets["model"], "--output-dir", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "hf_unlearnable.hub", types.SimpleNamespace(push_protected=None))
    assert recipe.main(["--dataset", assets["flickr"], *base, "--push-to-hub", "not a repo id!"]) == 2
    assert "--push-to-hub 'not a repo id!' is not a Hub repo id" in capsys.readouterr().err
    assert recipe.main(["--dataset", assets["flickr"], *base, "--caption-column", "nope"]) == 2
    assert "caption_column (--caption-column)='nope' is not a column" in capsys.readouterr().err
    assert recipe.main(["--dataset", assets["flickr"], *base, "--per-caption-output"]) == 2
    assert "already has one row per image" in capsys.readouterr().err
    assert recipe.main(["--dataset", assets["coco"], *base]) == 2  # "id" differs per caption
    assert "--per-caption-columns id" in capsys.readouterr().err
    assert recipe.main(["--dataset", assets["flickr"], *base, "--epsilon", "2"]) == 2
    assert "MEMConfig.epsilon=2.0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for arguments in (
        ["--dataset", "x", "--output-dir", "o"],  # neither --model nor --from-scratch
        ["--dataset", "x", "--output-dir", "o", "--model", "m", "--from-scratch", "c.json"],
        ["--dataset", "x", "--output-dir", "o", "--model", "m", "--private"],
        ["--dataset", "x", "--output-dir", "o", "--model", "m", "--card-details", "full"],
        ["--dataset", "x", "--output-dir", "o", "--model", "m", "--push-to-hub", "a/b", "--card-details", "all"],
    ):
        with pytest.raises(SystemExit) as error:
            recipe.main(arguments)
        assert error.value.code == 2


def test_recipe_has_a_flag_for_every_memconfig_field():
    options = {option for action in load_recipe().build_parser()._actions for option in action.option_strings}
    for field in dataclasses.fields(MEMConfig):
        assert "--" + field.name.replace("_", "-") in options
    assert {"--mixed-precision", "--work-dir", "--push-to-hub", "--hub-token-env", "--image-id-column"} <= options


def test_recipe_calls_push_protected_with_its_real_signature():
    """The fake above stands in for hf_unlearnable.hub; check the real one accepts the recipe's call."""
    import inspect

    hub = pytest.importorskip("hf_unlearnable.hub")
    inspect.signature(hub.push_protected).bind(
        "ds",
        "user/name",
        "transform",
        private=True,
        token="t",
        source_dataset=None,
        license=None,
        card_details="minimal",
    )
    assert load_recipe().CARD_DETAILS == hub.CARD_DETAILS
    assert inspect.signature(hub.push_protected).parameters["card_details"].default == "minimal"


def test_recipe_summary_says_when_its_rounds_were_reused(capsys):
    summary = {
        "method": "layered",
        "rows": 4,
        "source": "d",
        "output": "/o",
        "image_column": "image",
        "caption_column": "caption",
        "group_by": None,
        "rounds": 2,
        "surrogate_loss": 0.1,
        "protected_loss": 0.01,
        "clean_loss": 4.0,
        "total_seconds": 0.9,
        "seconds": 45.4,
        "reused": False,
        "work_dir": "/cache/mem-1",
    }
    load_recipe()._print_summary(summary)
    assert "reused" not in capsys.readouterr().out.split("summary: ")[0]
    load_recipe()._print_summary({**summary, "reused": True})
    assert "  MEM rounds reused from the finished run in /cache/mem-1 (they took 45.4 s)\n" in capsys.readouterr().out


def test_recipe_reports_an_unreachable_dataset_like_the_cli(assets, tmp_path, monkeypatch, capsys):
    # The recipe printed a traceback and exited 1 where `hf-unlearnable protect` says one line, exit 2.
    from hf_unlearnable.cli import main as cli_main

    base = ["--model", assets["model"], "--max-rounds", "1", "--no-progress"]
    assert (
        load_recipe().main(["--dataset", "someone/no-such-dataset", "--output-dir", str(tmp_path / "out"), *base]) == 2
    )
    recipe_error = capsys.readouterr().err.strip()
    assert cli_main(["protect", "--dataset", "someone/no-such-dataset", "--output", str(tmp_path / "out"), *base]) == 2
    cli_error = capsys.readouterr().err.strip()
    assert recipe_error == cli_error and len(recipe_error.splitlines()) == 1
    assert recipe_error.startswith("error: --dataset 'someone/no-such-dataset' cannot be loaded")
    # and a crash is one line and exit 3, as in the CLI
    import hf_unlearnable.transform as transform_module

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(transform_module.ProtectTransform, "protect", crash)
    assert load_recipe().main(["--dataset", assets["flickr"], "--output-dir", str(tmp_path / "out"), *base]) == 3
    assert capsys.readouterr().err.splitlines() == [
        "error: crashed (RuntimeError: out of memory); --verbose prints the traceback."
    ]
    assert not (tmp_path / "out").exists()
