"""`hf-unlearnable protect` as a user runs it: a real process, real files."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_unlearnable import MEMConfig
from hf_unlearnable.cli import build_parser, main
from hf_unlearnable.commands import config_from_arguments
from hf_unlearnable.images import decode_png
from hf_unlearnable.testing import synthetic_captions, tiny_clip, tiny_clip_config

from .test_report import TAMPERINGS, tamper_note, tamper_pixel, tamper_remove_row, tamper_trigger

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hf_unlearnable.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )


def test_every_config_field_is_a_flag():
    arguments = build_parser().parse_args(
        ["protect", "--max-rounds", "3", "--trigger-length", "5", "--stop-loss", "0.5", "--shuffle-captions", "false"]
    )
    config = config_from_arguments(arguments)
    assert (config.max_rounds, config.trigger_length, config.stop_loss, config.shuffle_captions) == (3, 5, 0.5, False)
    em = config_from_arguments(build_parser().parse_args(["protect", "--trigger-length", "0"]))
    assert (em.trigger_length, em.shuffle_captions) == (0, False)  # EM: own captions unless told otherwise
    with pytest.raises(ValueError, match="shuffle_captions=True and trigger_length=0"):
        config_from_arguments(
            build_parser().parse_args(
                ["protect", "--method", "mem", "--trigger-length", "0", "--shuffle-captions", "true"]
            )
        )
    paper = config_from_arguments(build_parser().parse_args(["protect", "--method", "mem", "--eot-transforms", ""]))
    assert (paper.method, paper.eot_transforms, paper.method_name) == ("mem", (), "MEM-3")
    help_text = build_parser()._subparsers._group_actions[0].choices["protect"].format_help()
    for field in dataclasses.fields(MEMConfig):
        assert "--" + field.name.replace("_", "-") in help_text


def test_protect_built_in_default_writes_a_dataset(tmp_path):
    result = run(
        "protect",
        "--rows",
        "24",
        "--max-rounds",
        "2",
        "--surrogate-steps",
        "5",
        "--pgd-steps",
        "2",
        "--batch-size",
        "12",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "protected 24 rows" in result.stdout
    assert re.search(r"max \|noise\| [1-4]/255 \(allowed 8/255\)", result.stdout)  # 2 rounds x 2 steps of 1/255
    out = datasets.load_from_disk(str(tmp_path / "protected"))
    assert len(out) == 24 and out.column_names == ["image", "caption"]
    clean = synthetic_captions(24, seed=0)
    assert all(p.endswith(c) and p != c for p, c in zip(out["caption"][:], clean["caption"][:]))


def test_protect_rerun_says_its_rounds_were_reused_not_run(tmp_path, monkeypatch, capsys):
    # A second identical run trains nothing; its summary must not pass off the first run's round
    # time as its own (it printed "seconds: 0.9 (45.4 in MEM rounds)") and must name the work dir.
    # (A default work dir is deleted after its run unless kept, so the first run keeps it.)
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    flags = [
        "protect",
        "--rows",
        "12",
        "--max-rounds",
        "1",
        "--surrogate-steps",
        "2",
        "--pgd-steps",
        "1",
        "--batch-size",
        "6",
        "--no-progress",
        "--keep-work-dir",
    ]
    outputs = []
    for name in ("first", "second"):
        capsys.readouterr()
        assert main([*flags, "--output", str(tmp_path / name)]) == 0
        outputs.append(capsys.readouterr().out)
    first, second = outputs
    assert re.search(r"seconds: [\d.]+ \([\d.]+ in MEM rounds\)", first) and "reused" not in first
    work_dir = re.search(r"MEM rounds reused from the finished run in (\S+), where they took ([\d.]+)", second)
    assert work_dir and "in MEM rounds" not in second
    assert os.path.dirname(work_dir.group(1)) == str(cache / "hf_unlearnable")
    assert work_dir.group(2) == re.search(r"\(([\d.]+) in MEM rounds", first).group(1)  # the first run's time
    first_copy, second_copy = (datasets.load_from_disk(str(tmp_path / name)) for name in ("first", "second"))
    assert second_copy["caption"][:] == first_copy["caption"][:]


def test_protect_a_local_dataset_with_a_local_model(tmp_path):
    model, processor = tiny_clip(seed=3)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    ds = synthetic_captions(16, seed=4).rename_column("caption", "text").rename_column("image", "picture")
    ds.save_to_disk(str(tmp_path / "data"))
    result = run(
        "protect",
        "--dataset",
        str(tmp_path / "data"),
        "--model",
        str(tmp_path / "model"),
        "--image-column",
        "picture",
        "--caption-column",
        "text",
        "--output",
        str(tmp_path / "out"),
        "--max-rounds",
        "1",
        "--surrogate-steps",
        "3",
        "--pgd-steps",
        "2",
        "--trigger-length",
        "0",
        "--save-transform",
        str(tmp_path / "transform"),
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out["text"][:] == ds["text"][:]  # EM: no trigger, captions unchanged
    raw = out.cast_column("picture", datasets.Image(decode=False))
    assert (
        np.abs(decode_png(raw[0]["picture"]["bytes"]).astype(int) - np.asarray(ds[0]["picture"], dtype=int)).max() <= 8
    )
    assert (tmp_path / "transform" / "protect_config.json").exists()


def test_bad_arguments_exit_with_a_clear_message(tmp_path):
    result = run("protect", "--rows", "8", "--epsilon", "2", cwd=tmp_path)
    assert result.returncode == 2 and "MEMConfig.epsilon=2.0" in result.stderr
    result = run("protect", "--rows", "8", "--caption-column", "nope", "--max-rounds", "1", cwd=tmp_path)
    assert result.returncode == 2 and "caption_column (--caption-column)='nope'" in result.stderr


# ------------------------------------------------------------------------------------ the surrogate
@pytest.fixture(scope="module")
def surrogate_files(tmp_path_factory):
    """A small data set on disk, a processor-only folder, a CLIPConfig JSON and a model folder without weights."""
    root = tmp_path_factory.mktemp("surrogate")
    model, processor = tiny_clip(image_size=32, seed=3)
    processor.save_pretrained(root / "processor")  # a processor, no model: --model on it cannot work
    tiny_clip_config(32).to_json_file(root / "clip_config.json")
    tiny_clip_config(32, hidden_size=32).to_json_file(root / "narrow_config.json")
    small = tiny_clip_config(32)
    small.text_config.vocab_size = 10
    small.to_json_file(root / "small_vocab.json")
    model.config.save_pretrained(root / "no-weights")
    processor.save_pretrained(root / "no-weights")
    synthetic_captions(16, image_size=32, seed=4).save_to_disk(str(root / "data"))
    return root


def test_offline_hub_surrogate_fails_in_one_line_with_the_fix(surrogate_files, tmp_path):
    """No network, the default Hub surrogate (or the default --from-scratch processor) not cached: one line, exit 2."""
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}  # nothing cached, whatever this machine holds
    common = [
        "-m",
        "hf_unlearnable.cli",
        "protect",
        "--dataset",
        str(surrogate_files / "data"),
        "--output",
        str(tmp_path / "out"),
        "--max-rounds",
        "1",
    ]
    cases = [
        ([], "--model 'openai/clip-vit-base-patch32'"),
        (["--from-scratch", str(surrogate_files / "clip_config.json")], "--processor 'openai/clip-vit-base-patch32'"),
    ]
    for extra, names in cases:
        result = subprocess.run(
            [sys.executable, *common, *extra], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        [line] = [text for text in result.stderr.splitlines() if text.startswith("error:")]
        assert names in line and "HF_HUB_OFFLINE=1 is set" in line and "go online (HF_HUB_OFFLINE=0)" in line
        assert "LOCAL_FOLDER" in line and (extra or "--from-scratch" in line)
        assert not (tmp_path / "out").exists()


def test_a_wrong_column_is_reported_before_the_surrogate_loads(surrogate_files, tmp_path, capsys):
    data = str(surrogate_files / "data")
    missing_model = str(tmp_path / "no-such-model")
    for flag, message in (
        ("--caption-column", "caption_column (--caption-column)='nope' is not a column"),
        ("--image-column", "image_column (--image-column)='nope' is not a column"),
    ):
        assert (
            main(
                ["protect", "--dataset", data, "--model", missing_model, flag, "nope", "--output", str(tmp_path / "o")]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert message in err and "no-such-model" not in err
    # the default (offline, uncached) Hub surrogate is never reached either
    assert main(["protect", "--dataset", data, "--caption-column", "nope", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "caption_column (--caption-column)='nope'" in err and "openai" not in err
    assert main(["protect", "--dataset", str(tmp_path / "no-data"), "--output", str(tmp_path / "o")]) == 2
    assert "--dataset " in (err := capsys.readouterr().err) and "no such folder" in err and "Traceback" not in err
    # with the columns right, the same missing model is what stops it
    assert main(["protect", "--dataset", data, "--model", missing_model, "--output", str(tmp_path / "o")]) == 2
    assert f"--model {missing_model!r}: no such folder" in capsys.readouterr().err


def test_protect_from_scratch_end_to_end(surrogate_files, tmp_path):
    """--from-scratch CONFIG_JSON --processor FOLDER: a CLIP built from the JSON and trained during protection."""
    result = run(
        "protect",
        "--dataset",
        str(surrogate_files / "data"),
        "--from-scratch",
        str(surrogate_files / "narrow_config.json"),
        "--processor",
        str(surrogate_files / "processor"),
        "--output",
        str(tmp_path / "out"),
        "--save-transform",
        str(tmp_path / "transform"),
        "--max-rounds",
        "1",
        "--surrogate-steps",
        "2",
        "--pgd-steps",
        "1",
        "--batch-size",
        "8",
        "--trigger-length",
        "2",
        "--trigger-rounds",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # the default method: one round of the pixel layer, one of the trigger layer
    assert " with layered -> " in result.stdout and "surrogate after 2 rounds" in result.stdout
    clean = datasets.load_from_disk(str(surrogate_files / "data"))
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(out) == 16
    for text, original in zip(out["caption"][:], clean["caption"][:]):
        assert text.endswith(" " + original) and len(text.split()) == len(original.split()) + 2
    saved = json.loads((tmp_path / "transform" / "surrogate" / "config.json").read_text())
    assert saved["vision_config"]["hidden_size"] == 32 and saved["text_config"]["hidden_size"] == 32  # the JSON's CLIP


def test_surrogate_arguments_that_cannot_work_fail_with_the_fix(surrogate_files, tmp_path, capsys):
    data, out = str(surrogate_files / "data"), str(tmp_path / "o")
    cases = [
        (
            [
                "--from-scratch",
                str(surrogate_files / "small_vocab.json"),
                "--processor",
                str(surrogate_files / "processor"),
            ],
            "has text vocab_size=10 but the processor's tokenizer has",
        ),
        (["--from-scratch", str(tmp_path / "missing.json")], "no such file"),
        (
            ["--from-scratch", data + "/dataset_info.json", "--processor", str(surrogate_files / "processor")],
            "is not a CLIPConfig JSON file",
        ),
        (["--model", str(surrogate_files / "no-weights")], "holds no safetensors weights"),
        (["--model", str(surrogate_files / "processor")], "holds no safetensors weights"),
        (["--model", data], "the folder does not hold a loadable CLIP processor"),
        (["--model", "bad name!!"], "not a Hub repo id"),
    ]
    for extra, message in cases:
        assert main(["protect", "--dataset", data, "--output", out, *extra]) == 2, message
        assert message in capsys.readouterr().err
    assert main(["protect", "--processor", str(surrogate_files / "processor"), "--output", out]) == 2
    assert "--processor needs --model or --from-scratch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(["protect", "--model", "m", "--from-scratch", "c.json"])
    assert error.value.code == 2


# ------------------------------------------------------------------------------------ verify and show
@pytest.fixture(scope="module")
def saved_pair(fitted, dataset, tmp_path_factory):
    """The shared clean data set, its fitted protected copy and the surrogate's tokenizer, on disk."""
    transform, protected = fitted
    folder = tmp_path_factory.mktemp("pair")
    dataset.save_to_disk(str(folder / "clean"))
    protected.save_to_disk(str(folder / "protected"))
    transform.processor.save_pretrained(folder / "model")
    return folder


def test_verify_passes_a_fitted_copy(saved_pair):
    result = run(
        "verify", "clean", "protected", "--model", "model", "--trigger-length", "3", "--no-progress", cwd=saved_pair
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked 48 rows (clean 48, protected 48), protected images 32x32 px" in result.stdout
    assert "max level difference: 8/255 (allowed 8/255)" in result.stdout
    assert "OK: no violations" in result.stdout


def test_verify_names_every_tampered_row(saved_pair, fitted):
    _, protected = fitted
    tampered = tamper_remove_row(tamper_trigger(tamper_note(tamper_pixel(protected, 5), 11), 17), 40)
    tampered.save_to_disk(str(saved_pair / "tampered"))
    result = run("verify", "clean", "tampered", "--no-progress", cwd=saved_pair)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "data set [rows]: row count differs: clean has 48 rows, protected has 47" in out
    assert "row 5 [budget]: image differs from its clean base by" in out
    assert "row 11 [column]: column 'note' changed: 'n11' -> 'changed'" in out
    assert "row 17 [trigger]: caption has no trigger" in out
    assert "row 40 [" in out and "row 39 [" not in out
    assert out.index("row 5 [") < out.index("row 11 [") < out.index("row 17 [") < out.index("row 40 [")


@pytest.mark.parametrize("kind", sorted(TAMPERINGS))
def test_verify_fails_on_each_tampering(saved_pair, fitted, kind, capsys, tmp_path):
    _, protected = fitted
    TAMPERINGS[kind](protected, 7).save_to_disk(str(tmp_path / kind))
    code = main(["verify", str(saved_pair / "clean"), str(tmp_path / kind), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED" in out and "row 7 [" in out


def test_verify_bad_arguments_exit_2(saved_pair, capsys):
    clean, protected = str(saved_pair / "clean"), str(saved_pair / "protected")
    cases = [
        ([clean, str(saved_pair / "missing")], "PROTECTED"),
        ([clean, protected, "--caption-column", "text"], "caption_column='text'"),
        ([clean, protected, "--epsilon", "2"], "epsilon=2"),
        ([clean, protected, "--model", str(saved_pair / "no-model")], "--model"),
    ]
    for arguments, message in cases:
        assert main(["verify", *arguments]) == 2, message
        assert message in capsys.readouterr().err


def test_show_writes_the_grid(saved_pair):
    result = run("show", "clean", "protected", "--rows", "0,3,9", "--output", "figures/grid.png", cwd=saved_pair)
    assert result.returncode == 0, result.stderr
    path = saved_pair / "figures" / "grid.png"
    assert result.stdout.strip() == str(path)
    with Image.open(path) as grid:
        assert grid.format == "PNG" and grid.width > 3 * 160 and grid.height > 3 * 160


def test_show_bad_rows_exit_2(saved_pair, capsys):
    clean, protected = str(saved_pair / "clean"), str(saved_pair / "protected")
    assert main(["show", clean, protected, "--rows", "a,b", "--output", str(saved_pair / "x.png")]) == 2
    assert "--rows 'a,b'" in capsys.readouterr().err
    assert main(["show", clean, protected, "--rows", "0,99", "--output", str(saved_pair / "x.png")]) == 2
    assert "row 99 is out of range" in capsys.readouterr().err


def test_resume_continues_a_work_dir_and_refuses_a_missing_one(tmp_path):
    common = [
        "protect",
        "--rows",
        "16",
        "--max-rounds",
        "1",
        "--surrogate-steps",
        "2",
        "--pgd-steps",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    result = run(*common, "--resume", cwd=tmp_path)
    assert result.returncode == 2 and "holds no earlier run" in result.stderr
    first = run(*common, "--output", str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(*common, "--output", str(tmp_path / "b"), "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (
        datasets.load_from_disk(str(tmp_path / "a"))["caption"][:]
        == datasets.load_from_disk(str(tmp_path / "b"))["caption"][:]
    )


def test_a_decompression_bomb_is_one_line_naming_the_row_exit_2(surrogate_files, tmp_path, monkeypatch, capsys):
    # PIL's own DecompressionBombError used to escape as a traceback; it is a bad row like any other.
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # the 32x32 images (1,024 pixels) are now "bombs"
    code = main(
        [
            "protect",
            "--dataset",
            str(surrogate_files / "data"),
            "--from-scratch",
            str(surrogate_files / "clip_config.json"),
            "--processor",
            str(surrogate_files / "processor"),
            "--output",
            str(tmp_path / "out"),
            "--max-rounds",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: The image at row 0 is too large to decode safely") and "MAX_IMAGE_PIXELS" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ help, numbers, exit codes
def every_parser(parser):
    """``parser`` and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from every_parser(child)


def test_every_option_of_every_command_says_what_it_does():
    from .test_recipes import load_recipe

    for parser in (*every_parser(build_parser()), load_recipe().build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            described = re.sub(r"\(?default: [^)]*\)?", "", action.help or "")  # a default alone says nothing
            assert len(re.findall(r"[a-zA-Z]{2,}", described)) >= 2, f"{parser.prog} {name}: help {action.help!r}"
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["protect"].format_help().split())
    assert (
        "--epsilon EPSILON l_inf budget of the image noise" in text and "a number or a fraction such as 8/255" in text
    )


def test_epsilon_takes_a_fraction_and_a_rounded_decimal_is_its_level():
    # The README's --epsilon 0.0313725 (8/255 to 7 places) protected at 7/255; 8/255 was refused.
    parser = build_parser()
    for text in ("8/255", "0.0313725", "0.031372549"):
        config = config_from_arguments(parser.parse_args(["protect", "--epsilon", text]))
        assert config.epsilon == 8 / 255 and config.epsilon_levels == 8, text
    assert config_from_arguments(parser.parse_args(["protect", "--pgd-step-size", "2/255"])).step_levels == 2
    assert (
        config_from_arguments(parser.parse_args(["protect", "--epsilon", "7.5/255"])).epsilon_levels == 7
    )  # not a hair
    assert parser.parse_args(["verify", "c", "p", "--epsilon", "0.0313725"]).epsilon == 8 / 255
    evaluate = ["evaluate", "--clean-train", "c", "--protected-train", "p", "--test", "t"]
    assert parser.parse_args([*evaluate, "--epsilon", "4/255"]).epsilon == 4 / 255
    assert config_from_arguments(parser.parse_args(["protect", "--learning-rate", "1/1000"])).learning_rate == 1e-3
    for bad in ("8/0", "eight"):
        with pytest.raises(SystemExit) as error:
            parser.parse_args(["protect", "--epsilon", bad])
        assert error.value.code == 2


def test_importing_the_cli_and_building_its_help_import_no_torch():
    # `hf-unlearnable --help` took 5 s: the package root imported torch, transformers and datasets.
    code = (
        "import sys; from hf_unlearnable.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for command in ("protect", "verify", "show", "cache", "evaluate"):
        helped = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from hf_unlearnable.cli import main\n"
                f"try:\n    main(['{command}', '--help'])\nexcept SystemExit:\n    pass\n"
                "print('torch' in sys.modules)",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert helped.stdout.strip().endswith("False"), (command, helped.stderr[-2000:])


# ------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def audit_files(tmp_path_factory):
    """Clean, protected (noise and a trigger word) and test splits on disk, a victim folder, a
    CLIPConfig JSON alone in a folder and a processor folder."""
    from hf_unlearnable.baselines import random_noise

    root = tmp_path_factory.mktemp("evaluate")
    clean = synthetic_captions(16, image_size=32, seed=0)
    clean.save_to_disk(str(root / "clean"))
    random_noise(clean, 32, seed=3).map(lambda row: {"caption": f"zq {row['caption']}"}).save_to_disk(
        str(root / "protected")
    )
    synthetic_captions(12, image_size=32, seed=1).save_to_disk(str(root / "test"))
    model, processor = tiny_clip(image_size=32, seed=0)
    model.save_pretrained(root / "victim")
    processor.save_pretrained(root / "victim")
    processor.save_pretrained(root / "processor")
    (root / "configs").mkdir()
    tiny_clip_config(32, hidden_size=32).to_json_file(root / "configs" / "clip_config.json")
    return root


def evaluate_arguments(root, *extra):
    return [
        "evaluate",
        "--clean-train",
        str(root / "clean"),
        "--protected-train",
        str(root / "protected"),
        "--test",
        str(root / "test"),
        "--output",
        str(root / "report"),
        "--no-progress",
        *extra,
    ]


def test_evaluate_crash_is_one_line_with_its_own_exit_code(audit_files, monkeypatch, capsys):
    # A crash exited 1 with a traceback: the code of "a defense breaks the protection".
    import hf_unlearnable.audit.run as audit_run

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(audit_run, "evaluate_protection", crash)
    assert main(evaluate_arguments(audit_files, "--victim", str(audit_files / "victim"))) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: crashed (RuntimeError: CUDA out of memory. Tried to allocate 2 GiB); "
        "hf-unlearnable -v COMMAND ... prints the traceback."
    ]
    assert main(["-v", *evaluate_arguments(audit_files, "--victim", str(audit_files / "victim"))]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("error: crashed (")
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help().split())
    assert "1 a defense breaks the protection" in help_text and "3 crashed" in help_text


def test_evaluate_offline_hub_victim_is_one_line_exit_2(audit_files, tmp_path):
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}  # nothing cached, whatever this machine holds
    for extra, names in (
        ([], "--victim 'openai/clip-vit-base-patch32'"),
        (["--pretrained", "openai/clip-vit-base-patch32"], "--pretrained 'openai/clip-vit-base-patch32'"),
        (["--victim", str(audit_files / "configs" / "clip_config.json")], "--processor 'openai/clip-vit-base-patch32'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "hf_unlearnable.cli", *evaluate_arguments(audit_files, *extra)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert names in line and "HF_HUB_OFFLINE=1 is set" in line and "LOCAL_FOLDER" in line, line


def test_evaluate_victim_config_json_takes_a_processor(audit_files, monkeypatch, capsys):
    # --victim clip_config.json looked for a processor beside the file; --processor names it, as in protect.
    import hf_unlearnable.audit.run as audit_run

    from .test_audit import scripted_victims

    seen = []
    scripted_victims(monkeypatch, lambda ds, defense: 20)
    fake = audit_run.train_victim

    def record(train_ds, eval_ds, model, processor, **kwargs):
        seen.append((model, processor))
        return fake(train_ds, eval_ds, model, processor, **kwargs)

    monkeypatch.setattr(audit_run, "train_victim", record)
    config = str(audit_files / "configs" / "clip_config.json")
    assert main(evaluate_arguments(audit_files, "--victim", config, "--processor", str(audit_files / "processor"))) == 0
    assert len(seen) == 2 and all(model.vision_config.hidden_size == 32 for model, _ in seen)  # the JSON's CLIP
    assert all(len(processor.tokenizer) == len(tiny_clip(32)[1].tokenizer) for _, processor in seen)
    capsys.readouterr()
    assert main(evaluate_arguments(audit_files, "--victim", config, "--processor", str(audit_files / "missing"))) == 2
    assert "--processor" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ cache
def fake_work_dir(root, name, rows, fingerprint, stage, trigger_length, created):
    """A work dir as a run leaves it: marker, identity.json, its layout and the history of its rounds."""
    from hf_unlearnable.workdir import mark

    folder = root / name
    mark(folder, "work_dir")
    mark(folder / "state", "state")
    mark(folder / "checkpoint", "checkpoint")
    (folder / "identity.json").write_text(
        json.dumps({"dataset_fingerprint": fingerprint, "rows": rows, "created": created, "finished": True})
    )
    (folder / "state" / "layout.json").write_text(json.dumps({"trigger_length": trigger_length}))
    np.save(folder / "state" / "noise.npy", np.ones((rows, 4, 4, 3), np.int8))
    history = [{"round": 1, "stage": stage}] if stage else []
    (folder / "checkpoint" / "state.json").write_text(json.dumps({"round": 1, "phase": "done", "history": history}))
    return folder


class Terminal:
    """Standard input: a terminal that answers ``answer``, or (``tty=False``) a pipe."""

    def __init__(self, answer="", tty=True):
        self.answer, self.tty, self.asked = answer, tty, 0

    def isatty(self):
        return self.tty

    def readline(self):
        self.asked += 1
        return self.answer + "\n"


def test_cache_list_tells_runs_apart(tmp_path, capsys):
    fake_work_dir(tmp_path, "mem-a", 40, "aaaa1111", "pixels", 3, 1.7e9)
    fake_work_dir(tmp_path, "mem-b", 12, "bbbb2222", "mem", 5, 1.7e9 + 86400)
    fake_work_dir(tmp_path, "mem-c", 12, "bbbb2222", None, 3, 1.7e9 + 2 * 86400)  # no round finished yet
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 work dir(s) under ")
    a, b, c = lines[1:]
    assert "data set aaaa1111, 40 rows" in a and "  layered  " in a and "created 2023-11-1" in a
    assert "data set bbbb2222, 12 rows" in b and "  MEM-5  " in b and "finished" in b
    assert "no round done" in c and a.split("created ")[1][:10] != b.split("created ")[1][:10]


def test_cache_clean_lists_then_asks_and_a_script_must_say_yes(tmp_path, monkeypatch, capsys):
    # `cache clean` deleted every work dir without showing them, and asked nothing.
    folders = [fake_work_dir(tmp_path, f"mem-{n}", 8, f"fp{n}", "mem", 3, 1.7e9) for n in range(2)]
    clean = ["cache", "clean", "--cache-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "stdin", Terminal(tty=False))  # a script, a pipe, a job
    assert main(clean) == 2
    captured = capsys.readouterr()
    assert str(folders[0]) in captured.out and str(folders[1]) in captured.out  # listed first
    assert "Pass --yes" in captured.err and all(folder.exists() for folder in folders)
    terminal = Terminal("n")
    monkeypatch.setattr(sys, "stdin", terminal)
    assert main(clean) == 0
    assert terminal.asked == 1 and "nothing deleted" in capsys.readouterr().out and all(f.exists() for f in folders)
    monkeypatch.setattr(sys, "stdin", Terminal("y"))
    assert main(clean) == 0
    assert "deleted 2 work dir(s)" in capsys.readouterr().out and not any(f.exists() for f in folders)
    folder = fake_work_dir(tmp_path, "mem-2", 8, "fp2", "mem", 3, 1.7e9)
    monkeypatch.setattr(sys, "stdin", Terminal(tty=False))
    assert main([*clean, "--yes"]) == 0
    assert "deleted 1 work dir(s)" in capsys.readouterr().out and not folder.exists()


def test_a_run_that_cannot_protect_is_one_line_with_its_own_exit_code(monkeypatch, capsys):
    # A NaN loss or a run that moved nothing is not a crash and not bad input: exit 4, one line saying where.
    from hf_unlearnable import NonFiniteLossError, NoProtectionError
    from hf_unlearnable.transform import ProtectTransform

    for error in (
        NonFiniteLossError("MEM round 1, surrogate step 1 of 4: the loss is nan. Likely causes: ..."),
        NoProtectionError("MEM finished (layered) without moving a single pixel of 8 rows"),
    ):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(ProtectTransform, "protect", fail)
        assert main(["protect", "--rows", "8", "--no-progress"]) == 4
        assert capsys.readouterr().err.splitlines() == [f"error: {error}"]
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["protect"].format_help().split())
    assert "4 training could not go on or protected nothing" in help_text


def test_an_epsilon_a_hair_below_a_level_is_that_level():
    assert MEMConfig(epsilon=0.0313725).epsilon_levels == 8  # 7.9999875 levels: the README's old example
    assert MEMConfig(epsilon=7.9 / 255).epsilon_levels == 7  # a real fraction of a level still rounds down


def test_cache_clean_keeps_a_work_dir_a_running_run_holds(tmp_path, capsys):
    # A run holds its work dir's lock while it uses the folder; deleting it under the run would crash it.
    from hf_unlearnable.workdir import LOCK_FILE

    busy, idle = (fake_work_dir(tmp_path, name, 8, "fp", "mem", 3, 1.7e9) for name in ("mem-busy", "mem-idle"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); "
            "fcntl.flock(h.fileno(), fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
            str(busy / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
        listed = capsys.readouterr().out
        assert f"{busy}  " in listed and "IN USE by a running run" in listed.split(str(busy))[1].splitlines()[0]
        assert "IN USE" not in listed.split(str(idle))[1].splitlines()[0]
        assert main(["cache", "clean", "--yes", "--cache-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "deleted 1 work dir(s)" in out and f"kept 1 work dir(s) in use by a running run: {busy}" in out
        assert busy.exists() and not idle.exists()
    finally:
        holder.kill()
        holder.wait()
