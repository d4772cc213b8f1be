"""ProtectTransform end to end: the guarantees the method card lists (docs/method.md, Outputs) on synthetic data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
from datasets.fingerprint import Hasher
from PIL import Image

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.testing import synthetic_captions

from .conftest import FAST_CONFIG


def saved_pixels(row) -> np.ndarray:
    return (
        decode_png(row["image"]["bytes"]) if isinstance(row["image"], dict) else np.asarray(row["image"].convert("RGB"))
    )


def clean_bases(ds, size=32):
    raw = ds.cast_column("image", datasets.Image(decode=False))
    return np.stack([prepare_image(row["image"], size, i) for i, row in enumerate(raw)])


def test_budget_every_pixel_of_every_image(fitted, dataset):
    transform, protected = fitted
    clean = clean_bases(dataset)
    saved = np.stack([saved_pixels(row) for row in protected.cast_column("image", datasets.Image(decode=False))])
    difference = np.abs(saved.astype(np.int16) - clean.astype(np.int16))
    assert difference.max() <= round(FAST_CONFIG.epsilon * 255)
    assert difference.max() == FAST_CONFIG.epsilon_levels  # the budget is used, not wasted
    assert (difference > 0).mean() > 0.5


def test_saved_png_is_exactly_clean_plus_optimised_noise(fitted, dataset):
    transform, protected = fitted
    clean = clean_bases(dataset)
    store = transform._store
    raw = protected.cast_column("image", datasets.Image(decode=False))
    for index, row in enumerate(raw):
        assert row["image"]["bytes"].startswith(b"\x89PNG")
        expected = (clean[index].astype(np.int16) + store.noise[index]).clip(0, 255)
        np.testing.assert_array_equal(decode_png(row["image"]["bytes"]), expected)
    # the decoded feature (PIL) gives the same pixels
    np.testing.assert_array_equal(np.asarray(protected[0]["image"]), decode_png(raw[0]["image"]["bytes"]))


def test_saved_caption_tokenises_back_to_the_optimised_trigger(fitted, dataset):
    transform, protected = fitted
    tokenizer = transform.tokenizer
    k = FAST_CONFIG.trigger_length
    for index, (row, original) in enumerate(zip(protected, dataset)):
        ids = tokenizer(row["caption"])["input_ids"]
        assert ids[1 : 1 + k] == transform._store.triggers[index].tolist()
        assert row["caption"].endswith(original["caption"])
        # the body tokens are those of the original caption
        assert ids[1 + k :] == tokenizer(original["caption"])["input_ids"][1:]
    assert all(bool(transform.vocabulary.mask[t]) for t in np.asarray(transform._store.triggers).ravel())


def test_rows_order_and_other_columns_preserved(fitted, dataset):
    _, protected = fitted
    assert len(protected) == len(dataset)
    assert protected.column_names == dataset.column_names
    assert protected["row_id"][:] == dataset["row_id"][:]
    assert protected["note"][:] == dataset["note"][:]
    assert isinstance(protected.features["image"], datasets.Image)


def test_surrogate_loss_on_protected_data_far_below_clean(fitted):
    transform, _ = fitted
    history = transform.history
    assert [record["round"] for record in history] == list(range(1, len(history) + 1))
    for key in ("round", "surrogate_loss", "protected_loss", "clean_loss", "seconds", "surrogate_seconds"):
        assert key in history[-1]
    # the surrogate's training is a part of each round's time, never all of it (the sweep follows)
    assert all(0 < record["surrogate_seconds"] < record["seconds"] for record in history)
    last = history[-1]
    assert last["protected_loss"] < 0.5 * last["clean_loss"], history
    assert history[-1]["protected_loss"] < history[0]["protected_loss"]


def test_map_after_fit_equals_protect(fitted, dataset):
    transform, protected = fitted
    mapped = dataset.map(transform, batched=True, with_indices=True, batch_size=7)
    raw = protected.cast_column("image", datasets.Image(decode=False))
    mapped_raw = mapped.cast_column("image", datasets.Image(decode=False))
    assert mapped["caption"][:] == protected["caption"][:]
    for a, b in zip(raw, mapped_raw):
        assert decode_png(a["image"]["bytes"]).tobytes() == decode_png(b["image"]["bytes"]).tobytes()


def test_determinism_same_seed_same_output(clip, dataset, tmp_path):
    model, processor = clip
    small = dataset.select(range(24))
    config = FAST_CONFIG.replace(max_rounds=2)
    # separate work dirs: the second run must compute, not reuse the first one's state
    first = ProtectTransform(model, processor, config, work_dir=tmp_path / "a", progress=False).protect(small)
    second = ProtectTransform(model, processor, config, work_dir=tmp_path / "b", progress=False).protect(small)
    assert first["caption"][:] == second["caption"][:]
    raw_first = first.cast_column("image", datasets.Image(decode=False))["image"]
    raw_second = second.cast_column("image", datasets.Image(decode=False))["image"]
    assert [r["bytes"] for r in raw_first] == [r["bytes"] for r in raw_second]
    other = ProtectTransform(model, processor, config.replace(seed=1), progress=False).protect(small)
    assert other["caption"][:] != first["caption"][:]


def test_unseen_rows_are_protected_against_the_frozen_surrogate(fitted):
    transform, _ = fitted
    new = synthetic_captions(12, image_size=32, seed=99)
    out = new.map(transform, batched=True, with_indices=True, batch_size=6)
    clean = clean_bases(new)
    raw = out.cast_column("image", datasets.Image(decode=False))
    saved = np.stack([decode_png(r["image"]["bytes"]) for r in raw])
    difference = saved.astype(np.int16) - clean.astype(np.int16)
    assert np.abs(difference).max() <= FAST_CONFIG.epsilon_levels
    assert np.abs(difference).mean() > 1.0  # real noise, not a copy
    k = FAST_CONFIG.trigger_length
    for row, original in zip(out, new):
        words = row["caption"].split(" ", k)
        assert row["caption"].endswith(original["caption"]) and len(words) == k + 1
        ids = transform.tokenizer(row["caption"])["input_ids"][1 : 1 + k]
        assert all(bool(transform.vocabulary.mask[t]) for t in ids)


def test_unseen_rows_need_a_fitted_transform_or_a_batch(clip):
    model, processor = clip
    transform = ProtectTransform(model, processor, FAST_CONFIG, progress=False)
    one = synthetic_captions(1, seed=5)
    with pytest.raises(ValueError, match="single row"):
        one.map(transform, batched=True, with_indices=True)
    two = synthetic_captions(4, seed=5).map(transform, batched=True, with_indices=True, batch_size=4)
    assert len(two) == 4


def test_datasets_fingerprint_is_stable_and_follows_fitted_state(clip, dataset):
    model, processor = clip
    transform = ProtectTransform(model, processor, FAST_CONFIG.replace(max_rounds=1), progress=False)
    before = Hasher.hash(transform)
    assert Hasher.hash(transform) == before
    again = ProtectTransform(model, processor, FAST_CONFIG.replace(max_rounds=1), progress=False)
    assert Hasher.hash(again) == before  # same config and weights: same hash in a new object
    transform.fit(dataset.select(range(16)))
    assert Hasher.hash(transform) != before
    mapped = dataset.select(range(16)).map(transform, batched=True, with_indices=True)
    assert mapped._fingerprint != dataset.select(range(16))._fingerprint


def test_list_of_captions_stays_a_list(clip):
    model, processor = clip
    ds = synthetic_captions(20, seed=3, captions_per_image=3)
    transform = ProtectTransform(model, processor, FAST_CONFIG.replace(max_rounds=2), progress=False)
    out = transform.protect(ds)
    k = FAST_CONFIG.trigger_length
    assert out.features["caption"] == ds.features["caption"]
    for index, (row, original) in enumerate(zip(out, ds)):
        assert isinstance(row["caption"], list) and len(row["caption"]) == len(original["caption"])
        triggers = {tuple(transform.tokenizer(text)["input_ids"][1 : 1 + k]) for text in row["caption"]}
        assert triggers == {tuple(transform._store.triggers[index].tolist())}  # one trigger per image
        for text, clean_text in zip(row["caption"], original["caption"]):
            assert text.endswith(clean_text)


def test_save_and_load_in_another_process(fitted, dataset, tmp_path):
    transform, protected = fitted
    transform.save_pretrained(tmp_path / "transform", include_fitted_noise=True)  # to write its rows again
    dataset.save_to_disk(str(tmp_path / "data"))
    assert (tmp_path / "transform" / "surrogate" / "model.safetensors").exists()
    script = textwrap.dedent(
        f"""
        import datasets, json
        from hf_unlearnable import ProtectTransform
        datasets.disable_progress_bars()
        t = ProtectTransform.from_pretrained({str(tmp_path / "transform")!r}, progress=False)
        ds = datasets.load_from_disk({str(tmp_path / "data")!r})
        out = ds.map(t, batched=True, with_indices=True)
        out.save_to_disk({str(tmp_path / "out")!r})
        print(json.dumps(t.history))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(transform.history))
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out["caption"][:] == protected["caption"][:]
    a = out.cast_column("image", datasets.Image(decode=False))["image"]
    b = protected.cast_column("image", datasets.Image(decode=False))["image"]
    assert [decode_png(x["bytes"]).tobytes() for x in a] == [decode_png(x["bytes"]).tobytes() for x in b]


def test_surrogate_from_config_and_from_local_path(clip, dataset, tmp_path):
    model, processor = clip
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    config = FAST_CONFIG.replace(max_rounds=1, surrogate_steps=2, pgd_steps=1)
    from_path = ProtectTransform(str(tmp_path / "clip"), config=config, progress=False)
    from_config = ProtectTransform(model.config, processor, config, progress=False)
    assert from_path.fit(dataset.select(range(8))).is_fitted
    assert from_config.fit(dataset.select(range(8))).is_fitted
    # the caller's model is not trained in place
    untouched = ProtectTransform(model, processor, config, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    untouched.fit(dataset.select(range(8)))
    assert all((before[k] == v).all() for k, v in model.state_dict().items())


# ---------------------------------------------------------------------- bad input
def _with_row(ds, index, **values):
    rows = ds.to_list()
    rows[index].update(values)
    return datasets.Dataset.from_list(rows, features=ds.features)


@pytest.fixture(scope="module")
def small(dataset):
    return dataset.select(range(6))


@pytest.fixture(scope="module")
def quick(clip):
    model, processor = clip
    return ProtectTransform(
        model, processor, FAST_CONFIG.replace(max_rounds=1, surrogate_steps=1, pgd_steps=1), progress=False
    )


def test_missing_column_names_the_columns(quick, small):
    with pytest.raises(ValueError, match=r"caption_column='text'.*columns are"):
        quick.protect(small, caption_column="text")
    with pytest.raises(ValueError, match="image_column='img'"):
        quick.protect(small, image_column="img")


def test_none_caption_names_the_row(quick, small):
    with pytest.raises(ValueError, match="row 2"):
        quick.protect(_with_row(small, 2, caption=None))


def test_non_string_caption_is_a_type_error(quick, small):
    ds = small.cast_column("row_id", datasets.Value("int64"))
    with pytest.raises(TypeError, match="row_id"):
        quick.protect(ds, caption_column="row_id")


def test_empty_caption_names_the_row(quick, small):
    with pytest.raises(ValueError, match=r"empty at row 4"):
        quick.protect(_with_row(small, 4, caption="   "))


def test_undecodable_image_names_the_row(quick, small):
    rows = small.cast_column("image", datasets.Image(decode=False)).to_list()
    rows[3]["image"] = {"bytes": b"not an image at all", "path": None}
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match="row 3"):
        quick.protect(ds)


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode != "CMYK" else "TIFF")
    return {"bytes": buffer.getvalue(), "path": None}


def test_odd_images_and_a_huge_caption_are_handled(quick, small):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    palette = Image.new("P", (33, 50), 3)
    grey = Image.new("L", (64, 64), 90)
    cmyk = Image.new("CMYK", (32, 48), (0, 255, 255, 0))
    deep = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    tiny = Image.new("RGB", (1, 1), (10, 200, 30))
    rows = small.cast_column("image", datasets.Image(decode=False)).to_list()
    odd = [rgba, palette, grey, cmyk, deep, tiny]
    for row, image in zip(rows, odd):
        row["image"] = _png(image)
    huge = " ".join(["a red circle on the left"] * 400)
    rows[0]["caption"] = huge
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    out = quick.protect(ds)
    assert len(out) == len(ds)
    assert out[0]["caption"].endswith(huge)  # nothing of the text is lost
    k = quick.config.trigger_length
    assert (
        quick.tokenizer(out[0]["caption"], truncation=True, max_length=77)["input_ids"][1 : 1 + k]
        == quick._store.triggers[0].tolist()
    )
    raw = out.cast_column("image", datasets.Image(decode=False))
    for index, image in enumerate(odd):
        saved = decode_png(raw[index]["image"]["bytes"])
        assert saved.shape == (32, 32, 3)
        clean = prepare_image(image, 32)
        assert np.abs(saved.astype(np.int16) - clean).max() <= quick.config.epsilon_levels
    # the 1x1 image upsamples to a flat colour; RGBA composites on white
    assert (prepare_image(tiny, 32) == np.array([10, 200, 30], np.uint8)).all()


def test_trigger_longer_than_the_text_context_is_refused(clip):
    model, processor = clip
    with pytest.raises(ValueError, match="trigger_length"):
        ProtectTransform(model, processor, MEMConfig(trigger_length=64, max_caption_tokens=20))


def test_not_a_dataset_is_a_type_error(quick):
    with pytest.raises(TypeError, match="datasets.Dataset"):
        quick.protect({"image": [], "caption": []})


def test_bf16_autocast_on_the_cpu_keeps_the_invariants(tmp_path):
    # Accelerate allows one mixed-precision setting per process, so this runs in its own process.
    script = textwrap.dedent(
        f"""
        import datasets, json, numpy as np
        from hf_unlearnable import MEMConfig, ProtectTransform
        from hf_unlearnable.images import decode_png, prepare_image
        from hf_unlearnable.testing import synthetic_captions, tiny_clip
        datasets.disable_progress_bars()
        model, processor = tiny_clip()
        ds = synthetic_captions(32)
        config = MEMConfig(max_rounds=3, surrogate_steps=10, batch_size=16, pgd_steps=4, hotflip_candidates=8,
                           learning_rate=5e-4, mixed_precision="bf16")
        transform = ProtectTransform(model, processor, config, work_dir={str(tmp_path)!r}, progress=False)
        out = transform.protect(ds).cast_column("image", datasets.Image(decode=False))
        clean = ds.cast_column("image", datasets.Image(decode=False))
        worst = max(int(np.abs(decode_png(a["image"]["bytes"]).astype(int) - prepare_image(b["image"], 32)).max())
                    for a, b in zip(out, clean))
        print(json.dumps({{"precision": transform.accelerator.mixed_precision, "worst": worst, "last": transform.history[-1]}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["precision"] == "bf16" and report["worst"] == 8
    assert report["last"]["protected_loss"] < 0.5 * report["last"]["clean_loss"]
