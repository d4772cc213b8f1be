"""A second model family through the same seam: SigLIP as a victim (hf_unlearnable.siglip, families)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hf_unlearnable import evaluate_protection
from hf_unlearnable.baselines import random_noise
from hf_unlearnable.devices import build_accelerator
from hf_unlearnable.families import family_of, image_text_model, load_image_text_model
from hf_unlearnable.images import prepare_image
from hf_unlearnable.imagetext import ImageTextModel
from hf_unlearnable.losses import ContrastiveLoss, SigLipLoss
from hf_unlearnable.retrieval import pad_token_ids, tokenize
from hf_unlearnable.siglip import INITIAL_LOGIT_BIAS, INITIAL_LOGIT_SCALE, SiglipTowers
from hf_unlearnable.surrogate import Surrogate, build_optimizer, clip_training_step, pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions, tiny_siglip
from hf_unlearnable.victim import retrieval_scores, train_victim


@pytest.fixture(scope="module")
def siglip():
    return tiny_siglip(image_size=32, seed=0)


def batch(processor, size: int = 4):
    """Pixels of ``size`` synthetic scenes and their captions, right-padded to the longest."""
    ds = synthetic_captions(size, image_size=32, seed=5)
    pixels = pixels_from_uint8(torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds])))
    ids, mask = pad_token_ids(tokenize(processor.tokenizer, list(ds["caption"]), 77), processor.tokenizer.pad_token_id)
    return pixels, ids, mask


# --------------------------------------------------------------------------------------- the seam


def test_each_family_wraps_its_model_and_trains_with_its_loss(clip, siglip):
    for (model, processor), wrapper, loss in ((clip, Surrogate, ContrastiveLoss), (siglip, SiglipTowers, SigLipLoss)):
        towers = image_text_model(model, processor)
        assert type(towers) is wrapper and isinstance(towers, ImageTextModel)
        assert type(towers.training_loss()) is loss and towers.tokenizer is processor.tokenizer
        assert towers.image_size == 32 and towers.context_length == 77
        assert family_of(model.config) is family_of(model)
    assert image_text_model(*clip).logit_bias() is None
    with pytest.raises(TypeError, match="CLIPModel, CLIPConfig, SiglipModel, SiglipConfig"):
        family_of(torch.nn.Linear(2, 2))


def test_a_siglip_folder_or_config_file_is_read_as_siglip(siglip, tmp_path):
    model, processor = siglip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert family_of(tmp_path).name == family_of(tmp_path / "config.json").name == "SigLIP"
    loaded, loaded_processor = load_image_text_model(str(tmp_path), None, seed=0)
    assert isinstance(loaded, transformers.SiglipModel) and isinstance(loaded_processor, transformers.SiglipProcessor)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_siglip_from_scratch_starts_at_the_papers_temperature_and_bias(siglip):
    model, processor = siglip
    built, _ = load_image_text_model(model.config, processor, seed=0)
    towers = image_text_model(built, processor)
    with torch.no_grad():
        assert float(towers.logit_scale()) == pytest.approx(math.exp(INITIAL_LOGIT_SCALE)) == pytest.approx(10.0)
        assert float(towers.logit_bias()) == INITIAL_LOGIT_BIAS == -10.0
    fine_tuned, _ = load_image_text_model(model, processor, seed=0)  # pretrained weights are kept as they are
    assert torch.equal(fine_tuned.logit_bias, model.logit_bias)


def test_siglip_towers_give_transformers_own_siglip_loss(siglip):
    """Features, logit scale and bias, and SigLipLoss together are the loss transformers computes
    for the same batch padded to the full context (as SigLIP was trained)."""
    model, processor = siglip
    towers = image_text_model(model, processor)
    with torch.no_grad():
        model.logit_scale.fill_(INITIAL_LOGIT_SCALE)
        model.logit_bias.fill_(-4.0)
        pixels, ids, mask = batch(processor)
        ours = SigLipLoss()(*towers(pixels, ids, mask), towers.logit_scale(), towers.logit_bias())
        full = torch.nn.functional.pad(ids, (0, 77 - ids.shape[1]), value=processor.tokenizer.pad_token_id)
        theirs = model(input_ids=full, pixel_values=(pixels - 0.5) / 0.5, return_loss=True).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_siglip_text_features_do_not_depend_on_how_the_batch_was_padded(siglip):
    """SigLIP pools the last position: a caption padded to its batch's longest must read as when
    padded to the full context, or train and evaluation batches would see different features."""
    model, processor = siglip
    towers = image_text_model(model, processor)
    _, ids, mask = batch(processor)
    longer_ids = torch.nn.functional.pad(ids, (0, 7), value=processor.tokenizer.pad_token_id)
    longer_mask = torch.nn.functional.pad(mask, (0, 7), value=0)
    with torch.no_grad():
        assert torch.equal(towers.text_features(ids, mask), towers.text_features(longer_ids, longer_mask))
        alone = towers.text_features(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
        torch.testing.assert_close(
            towers.text_features(ids, mask)[:1], alone, rtol=0, atol=1e-5
        )  # batch of one: rounding only


def test_the_training_step_trains_each_family_with_its_own_loss(clip, siglip):
    accelerator = build_accelerator("no")
    for model, processor in (clip, siglip):
        towers = image_text_model(*load_image_text_model(model.config, processor, seed=0))  # SigLIP: bias -10
        pixels, ids, mask = batch(processor)
        with torch.no_grad():
            expected = towers.training_loss()(*towers(pixels, ids, mask), towers.logit_scale(), towers.logit_bias())
        optimizer = build_optimizer(towers, 1e-4, 0.0)
        value = clip_training_step(towers, towers, towers.training_loss(), optimizer, accelerator, pixels, ids, mask)
        assert torch.equal(value, expected)


# --------------------------------------------------------------------------------------- SigLIP as a victim


def test_a_siglip_victim_learns_the_clean_data(siglip):
    model, processor = siglip
    test = synthetic_captions(64, image_size=32, seed=1)
    result = train_victim(
        synthetic_captions(512, image_size=32, seed=0),
        test,
        model.config,
        processor,
        epochs=6,
        batch_size=16,
        learning_rate=2e-3,
        seed=0,
        progress=False,
    )
    chance = 100 * 10 / 64
    first, last = result.history[1], result.final
    assert isinstance(result.model, transformers.SiglipModel)
    assert last["train_loss"] < first["train_loss"]
    assert (last["i2t_r10"] + last["t2i_r10"]) / 2 > 3 * chance  # measured: 81 against a chance of 15.6
    scores = retrieval_scores(
        result.model, processor, test
    )  # the trained model, on its own, scores as its history says
    assert scores == pytest.approx({key: last[key] for key in scores})


def test_the_audit_runs_with_a_siglip_victim_from_scratch_and_fine_tuned(siglip, tmp_path):
    model, processor = siglip
    train = synthetic_captions(32, image_size=32, seed=0)
    protected = random_noise(train, 32, seed=3).map(lambda row: {"caption": f"zq {row['caption']}"})
    report = evaluate_protection(
        train,
        protected,
        synthetic_captions(24, image_size=32, seed=1),
        defenses=["none", "adv-train-4"],
        victim=model.config,
        pretrained=model,
        processor=processor,
        epochs=1,
        batch_size=16,
        progress=False,
        output_dir=tmp_path,
    )
    assert [(v.victim, v.defense) for v in report.verdicts] == [
        ("from scratch", "none"),
        ("from scratch", "adv-train-4"),
        ("fine-tuned", "none"),
        ("fine-tuned", "adv-train-4"),
    ]
    assert report.settings["victims"] == {"from scratch": "SiglipConfig", "fine-tuned": "SiglipModel"}
    assert all(math.isfinite(entry["train_loss"]) for key, history in report.histories.items() for entry in history[1:])
    assert (tmp_path / "report.json").exists()


def test_the_robustness_benchmark_audits_a_siglip_victim(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/robustness.py",
            "--smoke",
            "--methods",
            "mem3",
            "--defenses",
            "none",
            "--victims",
            "siglip",
            "--threads",
            "1",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "robustness.json").read_text())["report"]
    assert [(v["copy"], v["victim"], v["defense"]) for v in report["verdicts"]] == [("MEM-3", "SigLIP", "none")]
    assert report["settings"]["victims"] == ["SigLIP"]
