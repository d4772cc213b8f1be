"""`hf-unlearnable evaluate` with SigLIP victims: a SiglipConfig JSON, a SigLIP folder, and the errors."""

from __future__ import annotations

import json

import pytest
import transformers
from transformers import BertConfig

from hf_unlearnable.cli import build_parser, main
from hf_unlearnable.testing import tiny_siglip, tiny_siglip_config

from . import test_cli
from .test_cli import evaluate_arguments

audit_files = test_cli.audit_files  # its data sets on disk, reused here (a module-scoped fixture)

SIGLIP_TOWERS = {"hidden_size": 32, "num_layers": 1}


@pytest.fixture(scope="module")
def siglip_files(audit_files):
    """`tests.test_cli.audit_files` (clean, protected and test splits on disk) with a SigLIP model
    folder, a SigLIP processor folder, a SiglipConfig JSON and a BertConfig JSON."""
    model, processor = tiny_siglip(image_size=32, seed=0, **SIGLIP_TOWERS)
    model.save_pretrained(audit_files / "siglip")
    processor.save_pretrained(audit_files / "siglip")
    processor.save_pretrained(audit_files / "siglip_processor")
    tiny_siglip_config(32, **SIGLIP_TOWERS).to_json_file(audit_files / "configs" / "siglip_config.json")
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).to_json_file(
        audit_files / "configs" / "bert_config.json"
    )
    return audit_files


def recording_victims(monkeypatch) -> list:
    """Record (model, processor) of every victim the audit trains; each still trains for real."""
    import hf_unlearnable.audit.run as audit_run

    seen, train = [], audit_run.train_victim

    def record(train_ds, eval_ds, model, processor, **kwargs):
        seen.append((model, processor))
        return train(train_ds, eval_ds, model, processor, **kwargs)

    monkeypatch.setattr(audit_run, "train_victim", record)
    return seen


def run_evaluate(root, output, *extra) -> int:
    arguments = evaluate_arguments(root, "--epochs", "1", "--batch-size", "8", *extra)
    arguments[arguments.index("--output") + 1] = str(output)
    return main(arguments)


def test_a_siglip_config_json_victim_trains_siglip_victims(siglip_files, tmp_path, monkeypatch):
    # --victim was read as a CLIPConfig and its --processor loaded as a CLIPProcessor, whatever the JSON said.
    seen = recording_victims(monkeypatch)
    config, processor = str(siglip_files / "configs" / "siglip_config.json"), str(siglip_files / "siglip_processor")
    assert run_evaluate(siglip_files, tmp_path, "--victim", config, "--processor", processor) in (0, 1)  # 1: broken
    assert len(seen) == 2  # the clean and the protected copy
    for architecture, victim_processor in seen:
        assert isinstance(architecture, transformers.SiglipConfig) and architecture.vision_config.hidden_size == 32
        assert isinstance(victim_processor, transformers.SiglipProcessor)
        assert list(victim_processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["victims"] == {"from scratch": config}
    assert report["settings"]["models"] == {"from scratch": "SiglipModel"}
    assert "SiglipModel" in (tmp_path / "report.md").read_text()


def test_a_siglip_folder_as_pretrained_is_fine_tuned(siglip_files, tmp_path, monkeypatch):
    # --pretrained was checked as a CLIPConfig and its --processor loaded as a CLIPProcessor.
    seen = recording_victims(monkeypatch)
    folder = str(siglip_files / "siglip")
    assert run_evaluate(siglip_files, tmp_path, "--pretrained", folder, "--processor", folder) in (0, 1)
    assert len(seen) == 2
    for model, processor in seen:
        assert isinstance(model, transformers.SiglipModel) and isinstance(processor, transformers.SiglipProcessor)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["models"] == {"fine-tuned": "SiglipModel"}


def test_a_config_json_of_another_model_type_is_one_line_naming_both_kinds(siglip_files, tmp_path, capsys):
    bert = str(siglip_files / "configs" / "bert_config.json")
    processor = str(siglip_files / "siglip_processor")
    assert run_evaluate(siglip_files, tmp_path, "--victim", bert, "--processor", processor) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --victim {bert!r}") and "model_type 'bert'" in line, line
    assert "CLIPConfig" in line and "SiglipConfig" in line and "to_json_file(path)" in line, line
    assert not (tmp_path / "report.json").exists()


def test_protect_from_scratch_refuses_a_siglip_config_json(siglip_files, tmp_path, capsys):
    config = str(siglip_files / "configs" / "siglip_config.json")
    arguments = ["protect", "--dataset", str(siglip_files / "clean"), "--output", str(tmp_path / "out")]
    assert main([*arguments, "--from-scratch", config, "--processor", str(siglip_files / "siglip_processor")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --from-scratch {config!r}") and "SiglipConfig" in line, line
    assert "surrogate" in line and "CLIPConfig(...).to_json_file(path)" in line, line
    assert not (tmp_path / "out").exists()


def test_the_evaluate_help_names_both_families():
    parser = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    flags = {action.option_strings[0]: action.help for action in parser._actions if action.option_strings}
    for flag in ("--victim", "--pretrained", "--processor"):
        assert "CLIP" in flags[flag] and ("SigLIP" in flags[flag] or "SiglipProcessor" in flags[flag]), flag
