"""What the library keeps, where, for how long (issue 7, items 2 and 4): no clean data in a saved
protector, none left in the default work dir after protect, cache list/clean, work-dir identity,
never deleting a folder the library did not make, a warning for an unfitted transform."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest

import hf_unlearnable.workdir as workdir
from hf_unlearnable.cache import list_work_dirs
from hf_unlearnable import ProtectTransform
from hf_unlearnable.cli import main
from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.testing import synthetic_captions

from .conftest import FAST_CONFIG

QUICK = FAST_CONFIG.replace(max_rounds=1, surrogate_steps=2, pgd_steps=1, online_rounds=1)


def clean_needles(ds: datasets.Dataset, tokenizer) -> dict[str, bytes]:
    """Byte strings that only a clean copy holds: each clean base image, caption text and caption ids."""
    raw = ds.cast_column("image", datasets.Image(decode=False))
    needles = {}
    for row, (value, caption) in enumerate(zip(raw["image"], ds["caption"])):
        needles[f"image {row}"] = prepare_image(value, 32, row).tobytes()
        needles[f"caption {row}"] = caption.encode("utf-8")
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
        needles[f"caption ids {row} int32"] = np.asarray(ids, np.int32).tobytes()
        needles[f"caption ids {row} int64"] = np.asarray(ids, np.int64).tobytes()
    return needles


def leaks(folder: Path, needles: dict[str, bytes]) -> list[str]:
    """Which needles occur in which file under ``folder`` (every file, read as bytes)."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{name} in {path}" for name, needle in needles.items() if needle in data]
    return found


def pixels(ds: datasets.Dataset) -> list[bytes]:
    return [decode_png(row["bytes"]).tobytes() for row in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def test_save_pretrained_holds_no_clean_pixels_or_caption_text_or_ids(fitted, dataset, tmp_path):
    transform, protected = fitted
    transform.save_pretrained(tmp_path / "saved")
    needles = clean_needles(dataset, transform.tokenizer)
    assert leaks(tmp_path / "saved", needles) == []
    saved_state = sorted(path.name for path in (tmp_path / "saved" / "state").iterdir())
    assert saved_state == [".hf_unlearnable", "digests.npy", "layout.json", "noise.npy", "triggers.npy"]
    loaded = ProtectTransform.from_pretrained(tmp_path / "saved", progress=False)
    again = loaded.apply(dataset)
    assert again["caption"][:] == protected["caption"][:] and pixels(again) == pixels(protected)


def test_explicit_work_dir_is_kept_with_its_clean_copy_and_its_size_logged(clip, dataset, tmp_path, caplog):
    # also the positive control of the scanner: a kept clean copy is found
    model, processor = clip
    small = dataset.select(range(12))
    with caplog.at_level(logging.WARNING, logger="hf_unlearnable"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "mine", progress=False).protect(small)
    found = leaks(tmp_path / "mine", clean_needles(small, processor.tokenizer))
    assert any(item.startswith("image 0 ") for item in found) and any(item.startswith("caption ids 3 int32 ") for item in found)
    message = next(r.getMessage() for r in caplog.records if "keeps a clean copy" in r.getMessage())
    assert str(tmp_path / "mine") in message and re.search(r"\d B|KB|MB", message)


def test_protect_deletes_the_clean_copy_in_the_default_work_dir_and_stays_usable(clip, dataset, tmp_path, caplog):
    model, processor = clip
    small = dataset.select(range(16))
    transform = ProtectTransform(model, processor, QUICK, progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_unlearnable"):
        protected = transform.protect(small)
    root = transform._work.root
    assert root.parent == workdir.cache_root()
    message = next(r.getMessage() for r in caplog.records if "Deleted the clean copy" in r.getMessage())
    assert str(root) in message and re.search(r"\d B|KB|MB", message)
    needles = clean_needles(small, processor.tokenizer)
    assert leaks(workdir.cache_root(), needles) == []  # nothing clean anywhere under the library's cache
    # the fitted transform still maps its rows, protects new ones (even a single row) and saves
    mapped = small.map(transform, batched=True, with_indices=True, batch_size=5)
    assert mapped["caption"][:] == protected["caption"][:] and pixels(mapped) == pixels(protected)
    single = synthetic_captions(1, image_size=32, seed=77)
    out = single.map(transform, batched=True, with_indices=True)
    difference = np.abs(decode_png(out.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]).astype(int)
                        - prepare_image(single.cast_column("image", datasets.Image(decode=False))[0]["image"], 32))
    assert 0 < difference.max() <= QUICK.epsilon_levels
    transform.save_pretrained(tmp_path / "saved")
    assert leaks(tmp_path / "saved", needles) == []
    # a rerun reuses the cleaned work dir: same rows, no training, still no clean copy
    again = ProtectTransform(model, processor, QUICK, progress=False)
    rerun = again.protect(small)
    assert again._work.root == root and again.history == transform.history
    assert rerun["caption"][:] == protected["caption"][:] and pixels(rerun) == pixels(protected)
    assert leaks(root, needles) == []


def test_fit_alone_leaves_no_clean_copy_in_the_cache(clip, dataset):
    model, processor = clip
    small = dataset.select(range(20, 32))
    transform = ProtectTransform(model, processor, QUICK, progress=False).fit(small)
    assert transform._work.root.parent == workdir.cache_root()
    assert leaks(transform._work.root, clean_needles(small, processor.tokenizer)) == []
    assert len(small.map(transform, batched=True, with_indices=True)) == 12


def test_a_failed_ingest_leaves_no_partial_clean_copy(clip, dataset, tmp_path):
    model, processor = clip
    rows = dataset.select(range(40, 46)).to_list()
    rows[4]["caption"] = None
    bad = datasets.Dataset.from_list(rows, features=dataset.features)
    transform = ProtectTransform(model, processor, QUICK, progress=False)
    with pytest.raises(ValueError, match="row 4"):
        transform.fit(bad)
    assert leaks(workdir.cache_root(), clean_needles(bad.select(range(4)), processor.tokenizer)) == []
    with pytest.raises(ValueError, match="row 4"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "w", progress=False).fit(bad)
    assert not (tmp_path / "w" / "state").exists()


def test_keep_work_dir_keeps_the_clean_copy_in_the_cache(clip, dataset):
    model, processor = clip
    small = dataset.select(range(10))
    transform = ProtectTransform(model, processor, QUICK, keep_work_dir=True, progress=False)
    transform.protect(small)
    assert (transform._work.root / "state" / "images.npy").exists()
    assert leaks(transform._work.root, clean_needles(small, processor.tokenizer))


def test_cache_list_and_clean_show_and_remove_only_the_library_work_dirs(clip, dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    model, processor = clip
    transform = ProtectTransform(model, processor, QUICK, keep_work_dir=True, progress=False)
    transform.protect(dataset.select(range(10)))
    foreign = workdir.cache_root() / "not-ours"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("a user's file")
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "1 work dir(s)" in listed and str(transform._work.root) in listed
    assert "10 rows" in listed and "finished, clean copy kept" in listed and "not-ours" not in listed
    [entry] = list_work_dirs()
    assert entry["bytes"] > 10 * 32 * 32 * 3 and entry["finished"] and entry["created"] > 0
    assert main(["cache", "clean"]) == 0
    assert "deleted 1 work dir(s)" in capsys.readouterr().out
    assert not transform._work.root.exists() and (foreign / "keep.txt").exists()
    assert list_work_dirs() == []


def test_work_dir_identity_follows_library_and_algorithm_version(clip, dataset, tmp_path, monkeypatch):
    model, processor = clip
    small = dataset.select(range(8))
    transform = ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "w", progress=False).fit(small)
    identity = workdir.work_dir_identity(small, "t")
    monkeypatch.setattr(workdir, "ALGORITHM_VERSION", workdir.ALGORITHM_VERSION + 1)
    changed = workdir.work_dir_identity(small, "t")
    assert changed != identity
    assert workdir.WorkDir.choose(None, changed, transform.accelerator).root != workdir.WorkDir.choose(None, identity, transform.accelerator).root
    with pytest.raises(ValueError, match="another version of the algorithm"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "w", progress=False).fit(small)
    monkeypatch.setattr(workdir, "__version__", "99.0")
    assert workdir.work_dir_identity(small, "t")["library_version"] == "99.0"


def test_a_folder_the_library_did_not_make_is_never_deleted(clip, fitted, dataset, tmp_path):
    model, processor = clip
    users = tmp_path / "work" / "state"
    users.mkdir(parents=True)
    (users / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"Refusing to delete .*state.*did not\s+create it"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "work", progress=False).fit(dataset.select(range(8)))
    assert (users / "thesis.tex").read_text() == "mine"
    target = tmp_path / "saved"
    (target / "state").mkdir(parents=True)
    (target / "state" / "notes.txt").write_text("mine too")
    with pytest.raises(ValueError, match=r"Refusing to delete .*saved/state"):
        fitted[0].save_pretrained(target)
    assert (target / "state" / "notes.txt").read_text() == "mine too"
    fitted[0].save_pretrained(tmp_path / "twice")
    fitted[0].save_pretrained(tmp_path / "twice")  # its own earlier save is marked: replaced


def test_mapping_with_an_unfitted_transform_warns_once(clip, caplog):
    model, processor = clip
    transform = ProtectTransform(model, processor, QUICK, progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_unlearnable"):
        synthetic_captions(8, image_size=32, seed=4).map(transform, batched=True, with_indices=True, batch_size=4)
        synthetic_captions(6, image_size=32, seed=5).map(transform, batched=True, with_indices=True, batch_size=3)
    warnings = [r.getMessage() for r in caplog.records if "never fitted" in r.getMessage()]
    assert len(warnings) == 1
    assert "untrained" in warnings[0] and "transform.fit(ds)" in warnings[0]


def test_cli_protect_deletes_the_clean_copy_unless_keep_work_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    common = ["protect", "--rows", "12", "--max-rounds", "1", "--surrogate-steps", "2", "--pgd-steps", "1",
              "--batch-size", "6", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    [entry] = list_work_dirs()
    assert entry["finished"] and not entry["clean_copy"]
    assert main([*common, "--seed", "1", "--output", str(tmp_path / "b"), "--keep-work-dir"]) == 0
    assert sorted(entry["clean_copy"] for entry in list_work_dirs()) == [False, True]
