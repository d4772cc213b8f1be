"""Tests for the image-text retrieval metric (plain function and `evaluate` module)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import statistics
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_unlearnable.metrics import (
    METRIC_KEYS,
    RETRIEVAL_METRIC_PATH,
    load_retrieval_metric,
    retrieval_metrics,
    retrieval_ranks,
)

METRIC_DIR = Path(__file__).resolve().parents[1] / "hf_unlearnable" / "metrics" / "retrieval"
EXPECTED_KEYS = [
    "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Brute-force reference: loops straight from the definition.
# ----------------------------------------------------------------------------------------------


def reference_ranks(sim, image_index):
    sim = [[float(x) for x in row] for row in np.asarray(sim)]
    index = [int(i) for i in image_index]
    num_captions, num_images = len(sim), len(sim[0])
    t2i = []
    for i in range(num_captions):
        correct = sim[i][index[i]]
        wrong_ge = sum(1 for j in range(num_images) if j != index[i] and sim[i][j] >= correct)
        t2i.append(1 + wrong_ge)
    i2t = []
    for j in range(num_images):
        own = [i for i in range(num_captions) if index[i] == j]
        others = [i for i in range(num_captions) if index[i] != j]
        ranks = [1 + sum(1 for o in others if sim[o][j] >= sim[i][j]) for i in own]
        i2t.append(min(ranks))
    return i2t, t2i


def reference_metrics(sim, image_index):
    i2t, t2i = reference_ranks(sim, image_index)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        out[f"{name}_medr"] = float(statistics.median(ranks))
        out[f"{name}_meanr"] = float(statistics.fmean(ranks))
    return out


def make_index(rng, num_images, layout):
    if layout == "one":
        counts = np.ones(num_images, dtype=int)
    elif layout == "five":
        counts = np.full(num_images, 5)
    else:  # uneven: 1-3 captions per image
        counts = rng.integers(1, 4, size=num_images)
    index = np.repeat(np.arange(num_images), counts)
    return rng.permutation(index)  # captions of one image need not be adjacent


def assert_metrics_close(got, expected):
    assert list(got) == EXPECTED_KEYS
    for key in EXPECTED_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


# ----------------------------------------------------------------------------------------------
# Plain function
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["one", "five", "uneven"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_bruteforce_with_ties(layout, chunk_size, seed):
    rng = np.random.default_rng(seed)
    num_images = 13
    index = make_index(rng, num_images, layout)
    sim = rng.integers(0, 4, size=(len(index), num_images)).astype(np.float32)  # many ties
    got = retrieval_metrics(sim, index, chunk_size=chunk_size)
    assert_metrics_close(got, reference_metrics(sim, index))
    i2t, t2i = retrieval_ranks(sim, index, chunk_size=chunk_size)
    ref_i2t, ref_t2i = reference_ranks(sim, index)
    assert i2t.tolist() == ref_i2t and t2i.tolist() == ref_t2i


@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_random_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    num_images = int(rng.integers(1, 20))
    index = make_index(rng, num_images, ["one", "five", "uneven"][seed % 3])
    values = rng.integers(-2, 3, size=(len(index), num_images))
    for sim in (values, values.astype(np.float64) / 4, torch.from_numpy(values).to(torch.float16)):
        got = retrieval_metrics(sim, index, chunk_size=int(rng.integers(1, 9)))
        assert_metrics_close(got, reference_metrics(np.asarray(sim, dtype=np.float64), index))


def test_output_keys_and_types():
    rng = np.random.default_rng(0)
    out = retrieval_metrics(rng.standard_normal((10, 5)), np.arange(10) % 5)
    assert list(out) == EXPECTED_KEYS == list(METRIC_KEYS)
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize("layout", ["one", "five", "uneven"])
def test_perfect_model(layout):
    rng = np.random.default_rng(3)
    num_images = 50
    index = make_index(rng, num_images, layout)
    sim = rng.uniform(-1, 0, size=(len(index), num_images))
    sim[np.arange(len(index)), index] = 1.0  # every caption's own image scores highest
    out = retrieval_metrics(sim, index, chunk_size=16)
    for key in EXPECTED_KEYS:
        expected = 1.0 if key.endswith(("medr", "meanr")) else 100.0
        assert out[key] == expected, key


def test_constant_model_is_chance_or_worse():
    num_images, per_image = 40, 5
    index = np.repeat(np.arange(num_images), per_image)
    sim = np.zeros((len(index), num_images), dtype=np.float32)
    out = retrieval_metrics(sim, index, chunk_size=7)
    # t2i: every wrong image ties with the correct one -> rank num_images for every caption.
    assert out["t2i_medr"] == out["t2i_meanr"] == num_images
    assert out["t2i_r1"] == out["t2i_r5"] == out["t2i_r10"] == 0.0
    # i2t: all captions of other images tie -> rank 1 + (num_captions - per_image).
    assert out["i2t_medr"] == out["i2t_meanr"] == 1 + len(index) - per_image
    assert out["i2t_r10"] == 0.0
    # Chance for a random model would be 100 * K / N: the constant model never beats it.
    assert out["t2i_r10"] <= 100 * 10 / num_images


def test_recall_at_k_larger_than_candidates_is_100():
    rng = np.random.default_rng(4)
    sim = rng.standard_normal((6, 3))  # only 3 images: every rank <= 3
    out = retrieval_metrics(sim, [0, 1, 2, 0, 1, 2])
    assert out["t2i_r5"] == out["t2i_r10"] == 100.0
    # constant model with 4 images: rank 4 for every caption, so R@5 = R@10 = 100, R@1 = 0
    out = retrieval_metrics(np.ones((4, 4)), [0, 1, 2, 3])
    assert out["t2i_r1"] == 0.0 and out["t2i_r5"] == out["t2i_r10"] == 100.0


def test_random_model_near_chance():
    rng = np.random.default_rng(1234)
    num_images = 1000
    index = np.repeat(np.arange(num_images), 5)
    sim = rng.standard_normal((len(index), num_images), dtype=np.float32)
    out = retrieval_metrics(sim, index, chunk_size=512)
    assert out["t2i_r10"] == pytest.approx(100 * 10 / num_images, abs=0.5)  # 1% +- 0.5
    assert out["t2i_r1"] == pytest.approx(100 * 1 / num_images, abs=0.2)
    assert out["t2i_medr"] == pytest.approx(num_images / 2, rel=0.1)
    # i2t: best of 5 captions among 5000 -> ~100 * (1 - (1 - 10/5000)**5) ~ 1%
    assert out["i2t_r10"] == pytest.approx(100 * (1 - (1 - 10 / len(index)) ** 5), abs=0.8)


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(5)
    index = make_index(rng, 60, "uneven")
    sim = rng.integers(0, 5, size=(len(index), 60)).astype(np.float32)
    results = [retrieval_metrics(sim, index, chunk_size=c) for c in (1, 2, 17, len(index), 10_000, None)]
    assert all(r == results[0] for r in results)


def test_numpy_torch_and_list_inputs_agree():
    rng = np.random.default_rng(6)
    index = make_index(rng, 30, "five")
    sim = rng.integers(0, 6, size=(len(index), 30)).astype(np.float32)
    expected = retrieval_metrics(sim, index)
    assert retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(index)) == expected
    assert retrieval_metrics(sim.tolist(), index.tolist()) == expected
    assert retrieval_metrics(sim.astype(np.float64), tuple(index)) == expected
    assert retrieval_metrics(sim.astype(np.int32), index.astype(np.int16)) == expected
    assert retrieval_metrics(torch.from_numpy(sim).requires_grad_(), index) == expected
    # non-contiguous views: a transposed image-by-caption matrix, and a strided slice
    assert retrieval_metrics(np.ascontiguousarray(sim.T).T, index) == expected
    assert retrieval_metrics(torch.from_numpy(np.ascontiguousarray(sim.T)).T, index) == expected
    big = np.zeros((len(index), 60), dtype=np.float32)
    big[:, ::2] = sim
    assert retrieval_metrics(big[:, ::2], index) == expected
    assert retrieval_metrics(sim[::-1], index[::-1]) == expected  # negative strides


def test_input_not_modified_and_read_only_ok():
    rng = np.random.default_rng(7)
    sim = rng.standard_normal((20, 10)).astype(np.float32)
    copy = sim.copy()
    sim.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval_metrics(sim, np.arange(20) % 10)
    np.testing.assert_array_equal(sim, copy)


def test_infinite_scores_allowed():
    sim = np.array([[np.inf, 0.0], [-np.inf, 1.0], [0.0, -np.inf]])
    out = retrieval_metrics(sim, [0, 1, 0])
    assert_metrics_close(out, reference_metrics(sim, [0, 1, 0]))


@pytest.mark.parametrize(
    ("similarity", "image_index", "error", "match"),
    [
        (np.zeros(5), [0] * 5, ValueError, r"similarity must be 2-D.*\(num_captions, num_images\)"),
        (np.zeros((2, 2, 2)), [0, 1], ValueError, "similarity must be 2-D"),
        (np.zeros((0, 3)), [], ValueError, "at least one caption"),
        (np.zeros((3, 2)), [0, 1], ValueError, "image_index has 2 entries but similarity has 3 rows"),
        (np.zeros((3, 2)), [[0, 1, 1]], ValueError, "image_index must be 1-D"),
        (np.zeros((2, 3)), [0, 1, 1], ValueError, "transpose"),
        (np.zeros((3, 2)), [0, 1, 2], ValueError, r"in \[0, 2\).*caption 2 -> 2"),
        (np.zeros((3, 2)), [0, -1, 1], ValueError, r"in \[0, 2\)"),
        (np.zeros((3, 5)), [0, 1, 1], ValueError, r"3 image\(s\) have no caption.*2, 3, 4"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), [0, 1], ValueError, "NaN.*caption 0, image 1"),
        (np.zeros((3, 2)), [0.0, 1.0, 1.0], TypeError, "image_index must hold integer"),
        (np.zeros((3, 2)), [True, False, True], TypeError, "image_index must hold integer"),
        (np.zeros((2, 2), dtype=bool), [0, 1], TypeError, "similarity must hold real-valued"),
        (np.array([["a", "b"]]), [0], TypeError, "similarity must hold real-valued"),
        (torch.zeros(2, 2, dtype=torch.complex64), [0, 1], TypeError, "similarity must hold real-valued"),
        ([[0.0, 1.0], [1.0]], [0, 1], TypeError, "similarity must be a 2-D"),
    ],
)
def test_input_validation(similarity, image_index, error, match):
    with pytest.raises(error, match=match):
        retrieval_metrics(similarity, image_index)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_nan_found_in_any_chunk(dtype):
    sim = torch.zeros(10, 4, dtype=dtype)
    sim[0, 0] = float("inf")
    sim[7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN.*caption 7, image 2"):
        retrieval_metrics(sim, torch.arange(10) % 4, chunk_size=3)


def test_missing_images_listing_is_truncated():
    with pytest.raises(ValueError, match=r"20 image\(s\) have no caption in image_index: 1, 2, .*10 \(and 10 more\)"):
        retrieval_metrics(np.zeros((1, 21)), [0])


@pytest.mark.parametrize(
    ("chunk_size", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_chunk_size_validation(chunk_size, error):
    with pytest.raises(error, match="chunk_size"):
        retrieval_metrics(np.zeros((2, 2)), [0, 1], chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------
# evaluate module
# ----------------------------------------------------------------------------------------------


def cosine(text, images):
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    return torch.from_numpy(text) @ torch.from_numpy(images).T


def embeddings(seed, num_images=40, dim=16, layout="uneven"):
    rng = np.random.default_rng(seed)
    index = make_index(rng, num_images, layout)
    images = rng.standard_normal((num_images, dim)).astype(np.float32)
    # captions are noisy copies of their image: non-trivial but far from chance
    text = (images[index] + 1.5 * rng.standard_normal((len(index), dim))).astype(np.float32)
    return text, index, images


def load(path):
    import evaluate

    return evaluate.load(str(path), keep_in_memory=True, experiment_id=uuid.uuid4().hex)


@pytest.fixture(scope="module")
def metric():
    return load(METRIC_DIR)


def test_metric_folder_layout():
    assert RETRIEVAL_METRIC_PATH == METRIC_DIR
    assert (METRIC_DIR / "retrieval.py").is_file() and (METRIC_DIR / "README.md").is_file()
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\ntitle:") and "sdk:" in card and "- metric" in card


@pytest.mark.parametrize("path", [METRIC_DIR, METRIC_DIR / "retrieval.py"])
def test_evaluate_load_by_folder_and_file(path):
    metric = load(path)
    text, index, images = embeddings(0)
    out = metric.compute(predictions=text, references=index, image_embeds=images)
    expected = retrieval_metrics(cosine(text, images), index)
    assert out == expected
    assert 0 < out["t2i_r1"] < 100  # non-trivial


def test_evaluate_compute_matches_plain_function(metric):
    text, index, images = embeddings(1, num_images=60, layout="five")
    expected = retrieval_metrics(cosine(text, images), index)
    assert metric.compute(predictions=text, references=index, image_embeds=images) == expected
    # lists, torch tensors, chunk_size all give the same
    assert (
        metric.compute(predictions=text.tolist(), references=index.tolist(), image_embeds=images.tolist()) == expected
    )
    assert (
        metric.compute(
            predictions=torch.from_numpy(text), references=torch.from_numpy(index),
            image_embeds=torch.from_numpy(images), chunk_size=3,
        )
        == expected
    )  # fmt: skip
    assert list(expected) == EXPECTED_KEYS


def test_evaluate_add_batch_loop(metric):
    text, index, images = embeddings(2)
    expected = retrieval_metrics(cosine(text, images), index)
    for start in range(0, len(index), 7):
        metric.add_batch(predictions=text[start : start + 7], references=index[start : start + 7])
    assert metric.compute(image_embeds=images) == expected
    for row, ref in zip(text, index):
        metric.add(prediction=row, reference=ref)
    assert metric.compute(image_embeds=images) == expected


def test_evaluate_perfect_and_constant(metric):
    images = np.eye(8, dtype=np.float32)
    index = np.repeat(np.arange(8), 2)
    perfect = metric.compute(predictions=images[index], references=index, image_embeds=images)
    assert perfect["t2i_r1"] == perfect["i2t_r1"] == 100.0 and perfect["t2i_medr"] == 1.0
    constant = metric.compute(predictions=np.ones((16, 8), np.float32), references=index, image_embeds=images)
    assert constant["t2i_medr"] == 8.0 and constant["t2i_r1"] == 0.0


def test_evaluate_errors(metric):
    text, index, images = embeddings(3)
    with pytest.raises(ValueError, match="image_embeds"):
        metric.compute(predictions=text, references=index)
    with pytest.raises(ValueError, match="Embedding dimensions differ"):
        metric.compute(predictions=text, references=index, image_embeds=images[:, :5])
    with pytest.raises(ValueError, match="no caption"):
        metric.compute(predictions=text, references=index, image_embeds=np.vstack([images, images[:2]]))


def test_evaluate_ragged_predictions_rejected(metric):
    with pytest.raises(ValueError, match="same embedding dimension"):
        metric.compute(predictions=[[1.0, 0.0], [1.0]], references=[0, 1], image_embeds=np.eye(2))


def test_evaluate_docstring_example(metric):
    out = metric.compute(
        predictions=[[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.2, 0.8]],
        references=[0, 0, 1, 1],
        image_embeds=[[1.0, 0.0], [0.0, 1.0]],
    )
    assert out == {k: (1.0 if k.endswith(("medr", "meanr")) else 100.0) for k in EXPECTED_KEYS}
    assert "image_embeds" in metric.inputs_description and "Liu" in metric.citation


def test_load_retrieval_metric():
    metric = load_retrieval_metric(keep_in_memory=True, experiment_id=uuid.uuid4().hex)
    text, index, images = embeddings(4)
    assert metric.compute(predictions=text, references=index, image_embeds=images) == retrieval_metrics(
        cosine(text, images), index
    )


def test_evaluate_module_works_without_importable_package(tmp_path):
    """The cached script falls back to loading ranking.py by path if `hf_unlearnable` cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_unlearnable"] = None  # import hf_unlearnable -> ImportError
        import evaluate
        m = evaluate.load({str(METRIC_DIR)!r}, keep_in_memory=True)
        out = m.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[0, 1], image_embeds=[[1.0, 0.0], [0.0, 1.0]])
        assert out["t2i_r1"] == 100.0, out
        assert "_hf_unlearnable_ranking" in sys.modules  # the fallback was used
        print("ok")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
