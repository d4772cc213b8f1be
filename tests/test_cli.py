"""`hf-unlearnable protect` as a user runs it: a real process, real files."""

import dataclasses
import os
import re
import subprocess
import sys

import datasets
import numpy as np

from hf_unlearnable import MEMConfig
from hf_unlearnable.cli import build_parser, config_from_arguments
from hf_unlearnable.images import decode_png
from hf_unlearnable.testing import synthetic_captions, tiny_clip

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hf_unlearnable.cli", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def test_every_config_field_is_a_flag():
    arguments = build_parser().parse_args(
        ["protect", "--max-rounds", "3", "--trigger-length", "5", "--stop-loss", "0.5", "--shuffle-captions", "false"]
    )
    config = config_from_arguments(arguments)
    assert (config.max_rounds, config.trigger_length, config.stop_loss, config.shuffle_captions) == (3, 5, 0.5, False)
    help_text = build_parser()._subparsers._group_actions[0].choices["protect"].format_help()
    for field in dataclasses.fields(MEMConfig):
        assert "--" + field.name.replace("_", "-") in help_text


def test_protect_built_in_default_writes_a_dataset(tmp_path):
    result = run("protect", "--rows", "24", "--max-rounds", "2", "--surrogate-steps", "5", "--pgd-steps", "2",
                 "--batch-size", "12", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "protected 24 rows" in result.stdout
    assert re.search(r"max \|noise\| [1-4]/255 \(allowed 8/255\)", result.stdout)  # 2 rounds x 2 steps of 1/255
    out = datasets.load_from_disk(str(tmp_path / "protected"))
    assert len(out) == 24 and out.column_names == ["image", "caption"]
    clean = synthetic_captions(24, seed=0)
    assert all(p.endswith(c) and p != c for p, c in zip(out["caption"][:], clean["caption"][:]))


def test_protect_a_local_dataset_with_a_local_model(tmp_path):
    model, processor = tiny_clip(seed=3)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    ds = synthetic_captions(16, seed=4).rename_column("caption", "text").rename_column("image", "picture")
    ds.save_to_disk(str(tmp_path / "data"))
    result = run("protect", "--dataset", str(tmp_path / "data"), "--model", str(tmp_path / "model"),
                 "--image-column", "picture", "--caption-column", "text", "--output", str(tmp_path / "out"),
                 "--max-rounds", "1", "--surrogate-steps", "3", "--pgd-steps", "2", "--trigger-length", "0",
                 "--save-transform", str(tmp_path / "transform"), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out["text"][:] == ds["text"][:]  # EM: no trigger, captions unchanged
    raw = out.cast_column("picture", datasets.Image(decode=False))
    assert np.abs(decode_png(raw[0]["picture"]["bytes"]).astype(int) - np.asarray(ds[0]["picture"], dtype=int)).max() <= 8
    assert (tmp_path / "transform" / "protect_config.json").exists()


def test_bad_arguments_exit_with_a_clear_message(tmp_path):
    result = run("protect", "--rows", "8", "--epsilon", "2", cwd=tmp_path)
    assert result.returncode == 2 and "MEMConfig.epsilon=2.0" in result.stderr
    result = run("protect", "--rows", "8", "--caption-column", "nope", "--max-rounds", "1", cwd=tmp_path)
    assert result.returncode == 2 and "caption_column='nope'" in result.stderr
