"""Victim training and clean-split retrieval evaluation (hf_unlearnable.victim)."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch

import hf_unlearnable.victim as victim
from hf_unlearnable.images import prepare_image
from hf_unlearnable.metrics import METRIC_KEYS, retrieval_metrics
from hf_unlearnable.surrogate import Surrogate, pixels_from_uint8
from hf_unlearnable.testing import synthetic_captions
from hf_unlearnable.victim import VictimResult, retrieval_scores, train_victim

HISTORY_KEYS = {"epoch", "train_loss", "seconds", "eval_seconds", *METRIC_KEYS}
TIMING_KEYS = {"seconds", "eval_seconds"}
BATCH = 16


@pytest.fixture(scope="module")
def train_ds():
    return synthetic_captions(64, image_size=32, seed=0)


@pytest.fixture(scope="module")
def eval_ds():
    return synthetic_captions(32, image_size=32, seed=1)


@pytest.fixture(scope="module")
def trained(clip, train_ds, eval_ds) -> VictimResult:
    model, processor = clip
    return train_victim(train_ds, eval_ds, model, processor, epochs=2, batch_size=BATCH, seed=0, progress=False)


def without_timing(history):
    return [{key: value for key, value in entry.items() if key not in TIMING_KEYS} for entry in history]


def test_training_lowers_the_loss_and_records_every_epoch(trained):
    history = trained.history
    assert [entry["epoch"] for entry in history] == [0, 1, 2]
    assert all(set(entry) == HISTORY_KEYS for entry in history)
    assert math.isnan(history[0]["train_loss"]) and history[0]["seconds"] == 0.0
    assert history[2]["train_loss"] < history[1]["train_loss"]
    assert all(math.isfinite(entry[key]) for entry in history for key in METRIC_KEYS)
    assert trained.final is history[-1]
    assert not trained.model.training


def test_same_seed_same_history(clip, train_ds, eval_ds, trained):
    model, processor = clip
    again = train_victim(train_ds, eval_ds, model, processor, epochs=2, batch_size=BATCH, seed=0, progress=False)
    assert without_timing(again.history) == without_timing(trained.history)
    other = train_victim(train_ds, eval_ds, model, processor, epochs=1, batch_size=BATCH, seed=1, progress=False)
    assert other.history[1]["train_loss"] != trained.history[1]["train_loss"]  # the seed matters


def test_from_config_is_seeded(clip, train_ds, eval_ds):
    model, processor = clip
    first = train_victim(train_ds, eval_ds, model.config, processor, epochs=0, seed=3, progress=False)
    second = train_victim(train_ds, eval_ds, model.config, processor, epochs=0, seed=3, progress=False)
    third = train_victim(train_ds, eval_ds, model.config, processor, epochs=0, seed=4, progress=False)
    assert len(first.history) == 1
    assert without_timing(first.history) == without_timing(second.history)
    first_weights = first.model.text_model.embeddings.token_embedding.weight
    assert torch.equal(first_weights, second.model.text_model.embeddings.token_embedding.weight)
    assert not torch.equal(first_weights, third.model.text_model.embeddings.token_embedding.weight)


def test_the_callers_model_is_not_modified(clip, trained):
    model, _ = clip
    assert trained.model is not model
    assert not model.training
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model_again, processor = clip
    train_victim(
        synthetic_captions(8),
        synthetic_captions(4, seed=1),
        model_again,
        processor,
        epochs=1,
        batch_size=4,
        progress=False,
    )
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not model.training
    changed = trained.model.state_dict()
    assert any(not torch.equal(before[name], changed[name].cpu()) for name in before)


def test_untrained_model_is_near_chance(clip):
    model, processor = clip
    scores = retrieval_scores(model, processor, synthetic_captions(100, seed=2))
    assert set(scores) == set(METRIC_KEYS)
    # Chance: R@10 = 10 %, MedR ~ 50 of 100.
    assert scores["t2i_r10"] < 30 and scores["i2t_r10"] < 30
    assert scores["t2i_medr"] > 20 and scores["i2t_medr"] > 20
    assert not model.training


def test_scores_match_the_metric_on_hand_made_embeddings(clip):
    model, processor = clip
    ds = synthetic_captions(20, seed=3, captions_per_image=2)
    surrogate = Surrogate(model, processor.image_processor.image_mean, processor.image_processor.image_std)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    images = np.stack([prepare_image(row["image"], 32, i) for i, row in enumerate(raw)])
    texts = [text for row in ds["caption"] for text in row]
    with torch.no_grad():
        image_features = surrogate.image_features(pixels_from_uint8(torch.from_numpy(images)))
        tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_features = surrogate.text_features(tokens["input_ids"], tokens["attention_mask"])
    expected = retrieval_metrics(text_features @ image_features.T, np.repeat(np.arange(20), 2))
    assert retrieval_scores(model, processor, ds, batch_size=7) == pytest.approx(expected)


def test_matching_features_give_perfect_retrieval(clip, monkeypatch):
    """Features engineered so each caption points at exactly its own image: every metric is perfect."""
    model, processor = clip
    ds = synthetic_captions(24, seed=4, captions_per_image=3)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    image_rows = {prepare_image(row["image"], 32, i).tobytes(): i for i, row in enumerate(raw)}
    caption_rows = {}
    for i, captions in enumerate(ds["caption"]):
        for ids in processor.tokenizer(list(captions), truncation=True, max_length=77)["input_ids"]:
            caption_rows[tuple(ids)] = i
    assert len(image_rows) == 24 and len(caption_rows) == 72  # distinct images and captions

    def one_hot(rows):
        return torch.nn.functional.one_hot(torch.tensor(rows), 32).float()

    def image_features(self, pixels):
        levels = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return one_hot([image_rows[image.tobytes()] for image in levels])

    def text_features(self, input_ids, attention_mask=None):
        return one_hot([caption_rows[tuple(ids[mask.bool()].tolist())] for ids, mask in zip(input_ids, attention_mask)])

    monkeypatch.setattr(Surrogate, "image_features", image_features)
    monkeypatch.setattr(Surrogate, "text_features", text_features)
    scores = retrieval_scores(model, processor, ds, batch_size=10)
    for direction in ("i2t", "t2i"):
        assert scores[f"{direction}_r1"] == 100.0
        assert scores[f"{direction}_medr"] == 1.0 and scores[f"{direction}_meanr"] == 1.0


def test_caption_lists_train_on_one_and_evaluate_on_all(clip, monkeypatch):
    model, processor = clip
    train = synthetic_captions(32, seed=5, captions_per_image=3)
    evaluation = synthetic_captions(12, seed=6, captions_per_image=3)
    metric_calls, seen = [], []

    def spy_metrics(similarity, image_index):
        metric_calls.append((tuple(similarity.shape), list(np.asarray(image_index))))
        return retrieval_metrics(similarity, image_index)

    def recording_defense(pixels, captions, generator):
        seen.append(list(captions))
        return pixels, captions

    monkeypatch.setattr(victim, "retrieval_metrics", spy_metrics)
    result = train_victim(
        train, evaluation, model, processor, epochs=2, batch_size=16, defense=recording_defense, progress=False
    )
    assert len(result.history) == 3 and len(metric_calls) == 3
    assert all(shape == (36, 12) and index == sorted(list(range(12)) * 3) for shape, index in metric_calls)
    # Training sees one caption per image per step, drawn from all of its captions.
    all_captions = [list(captions) for captions in train["caption"]]
    assert all(len(batch) == 16 for batch in seen) and len(seen) == 4
    seen_flat = [text for batch in seen for text in batch]
    owner = {text: i for i, captions in enumerate(all_captions) for text in captions}
    assert sorted(owner[text] for text in seen_flat) == sorted(list(range(32)) * 2)  # each image once per epoch
    assert len(set(seen_flat)) > 40  # not always the first caption


def test_defense_receives_the_batch_and_its_changes_take_effect(clip, train_ds, eval_ds, trained):
    model, processor = clip
    calls = []

    def blank_images(pixels, captions, generator):
        calls.append((pixels.clone(), list(captions), generator))
        return torch.zeros_like(pixels), captions

    result = train_victim(
        train_ds, eval_ds, model, processor, epochs=1, batch_size=BATCH, defense=blank_images, progress=False
    )
    assert len(calls) == 64 // BATCH
    for pixels, captions, generator in calls:
        assert pixels.shape == (BATCH, 3, 32, 32) and pixels.dtype == torch.float32
        assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0 and float(pixels.std()) > 0.05
        assert len(captions) == BATCH and all(isinstance(text, str) and text for text in captions)
        assert isinstance(generator, torch.Generator)
    assert set(text for _, captions, _ in calls for text in captions) == set(train_ds["caption"])
    # With every image blank, no image can be told apart: the loss cannot fall below log(batch).
    assert result.history[1]["train_loss"] >= math.log(BATCH) - 1e-4
    assert result.history[1]["train_loss"] != trained.history[1]["train_loss"]


def test_text_defense_edits_are_retokenised(clip, train_ds, eval_ds):
    model, processor = clip

    def same_caption(pixels, captions, generator):
        return pixels, ["a red circle"] * len(captions)

    result = train_victim(
        train_ds, eval_ds, model, processor, epochs=1, batch_size=BATCH, defense=same_caption, progress=False
    )
    assert result.history[1]["train_loss"] >= math.log(BATCH) - 1e-4


def test_defense_must_keep_the_batch_shape(clip, train_ds, eval_ds):
    model, processor = clip
    with pytest.raises(ValueError, match="same shape|shape it was given"):
        train_victim(
            train_ds, eval_ds, model, processor, epochs=1, defense=lambda p, c, g: (p[:, :, :8], c), progress=False
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"caption_column": "text"}, "caption_column='text' is not a column of train_ds"),
        ({"image_column": "img"}, "image_column='img' is not a column of train_ds"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_named(clip, train_ds, eval_ds, kwargs, message):
    model, processor = clip
    with pytest.raises(ValueError, match=message):
        train_victim(train_ds, eval_ds, model, processor, progress=False, **kwargs)


def test_missing_eval_column_and_empty_train_set(clip, train_ds, eval_ds):
    model, processor = clip
    with pytest.raises(ValueError, match="caption_column='caption' is not a column of eval_ds"):
        train_victim(train_ds, eval_ds.rename_column("caption", "text"), model, processor, progress=False)
    with pytest.raises(ValueError, match="train_ds is empty"):
        train_victim(train_ds.select([]), eval_ds, model, processor, progress=False)
    with pytest.raises(ValueError, match="caption_column='text' is not a column of ds"):
        retrieval_scores(model, processor, eval_ds, caption_column="text")


def test_broken_image_names_its_row(clip, eval_ds):
    model, processor = clip
    raw = eval_ds.cast_column("image", datasets.Image(decode=False))
    images = raw["image"][:]
    images[5] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict({"image": images, "caption": eval_ds["caption"][:]}, features=raw.features)
    with pytest.raises(ValueError, match="row 5"):
        retrieval_scores(model, processor, broken)
