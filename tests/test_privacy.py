"""What the library keeps, where, for how long: neither clean data nor the noise (which with a
published image gives back the clean image) in a saved protector by default or anywhere in the
cache after protect; cache list/clean, work-dir identity, never deleting a folder the library did
not make, a warning for an unfitted transform."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest

import hf_unlearnable.workdir as workdir
from hf_unlearnable import ProtectTransform
from hf_unlearnable.cache import list_work_dirs
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


def noise_needles(ds: datasets.Dataset, protected: datasets.Dataset) -> dict[str, bytes]:
    """Byte strings of each row's noise (published image - clean image) in every dtype and layout the
    library or numpy might store it in: int8/int16/int32/float32 levels, float32 in [0, 1], HWC and CHW."""
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    needles = {}
    for row, (value, published) in enumerate(zip(raw, pixels(protected))):
        clean = prepare_image(value, 32, row).astype(np.int16)
        noise = np.frombuffer(published, np.uint8).reshape(clean.shape).astype(np.int16) - clean
        assert np.count_nonzero(noise) > noise.size // 4, f"row {row}: too little noise to make a needle"
        for layout, array in (("HWC", noise), ("CHW", noise.transpose(2, 0, 1))):
            for dtype in (np.int8, np.int16, np.int32, np.float32):
                needles[f"noise {row} {layout} {np.dtype(dtype).name}"] = np.ascontiguousarray(array, dtype).tobytes()
            needles[f"noise {row} {layout} float32/255"] = np.ascontiguousarray(array / 255.0, np.float32).tobytes()
    return needles


def every_needle(ds: datasets.Dataset, protected: datasets.Dataset, tokenizer) -> dict[str, bytes]:
    return {**clean_needles(ds, tokenizer), **noise_needles(ds, protected)}


def leaks(folder: Path, needles: dict[str, bytes]) -> list[str]:
    """Which needles occur in which file under ``folder`` (every file, read as bytes)."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{name} in {path}" for name, needle in needles.items() if needle in data]
    return found


def pixels(ds: datasets.Dataset) -> list[bytes]:
    return [
        decode_png(row["bytes"]).tobytes() for row in ds.cast_column("image", datasets.Image(decode=False))["image"]
    ]


def test_save_pretrained_holds_no_clean_data_and_no_noise_and_refuses_to_reprotect_fitted_rows(
    fitted, dataset, tmp_path
):
    transform, protected = fitted
    transform.save_pretrained(tmp_path / "saved")
    needles = every_needle(dataset, protected, transform.tokenizer)
    assert leaks(tmp_path / "saved", needles) == []
    saved_state = sorted(path.name for path in (tmp_path / "saved" / "state").iterdir())
    assert saved_state == [".hf_unlearnable", "digests.npy", "layout.json", "published.npy", "triggers.npy"]
    assert not list((tmp_path / "saved").rglob("KEEP_PRIVATE.txt"))
    loaded = ProtectTransform.from_pretrained(tmp_path / "saved", progress=False)
    with pytest.raises(ValueError, match=r"16 row\(s\) of this batch \(rows \[0, 1, .*saved without their noise"):
        loaded.apply(dataset)  # it recognises its rows and will not publish a second, differently noised copy
    new_rows = synthetic_captions(6, image_size=32, seed=123)
    out = loaded.apply(new_rows)  # new rows are protected as usual
    assert len(out) == 6 and all(
        caption.split()[0] != text.split()[0] for caption, text in zip(out["caption"], new_rows["caption"])
    )


def test_save_pretrained_with_the_noise_says_it_is_private_and_maps_its_rows_again(fitted, dataset, tmp_path):
    transform, protected = fitted
    transform.save_pretrained(tmp_path / "saved", include_fitted_noise=True)
    found = leaks(tmp_path / "saved", noise_needles(dataset, protected))  # the positive control of the noise scanner
    assert any(item.startswith("noise 0 HWC int8 ") for item in found)
    assert leaks(tmp_path / "saved", clean_needles(dataset, transform.tokenizer)) == []
    notice = (tmp_path / "saved" / "state" / "KEEP_PRIVATE.txt").read_text()
    assert "as private as your original" in notice and "give back the clean image" in notice
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
    assert any(item.startswith("image 0 ") for item in found) and any(
        item.startswith("caption ids 3 int32 ") for item in found
    )
    message = next(r.getMessage() for r in caplog.records if "keeps a clean copy" in r.getMessage())
    assert str(tmp_path / "mine") in message and re.search(r"\d B|KB|MB", message)


def test_protect_leaves_nothing_in_the_cache_and_the_transform_stays_usable(clip, dataset, tmp_path, caplog):
    model, processor = clip
    small = dataset.select(range(16))
    transform = ProtectTransform(model, processor, QUICK, progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_unlearnable"):
        protected = transform.protect(small)
    root = transform._work.root
    assert root.parent == workdir.cache_root() and not root.exists()
    message = next(r.getMessage() for r in caplog.records if "Deleted the work dir" in r.getMessage())
    assert str(root) in message and re.search(r"\d B|KB|MB", message)
    needles = every_needle(small, protected, processor.tokenizer)
    assert leaks(workdir.cache_root(), needles) == []  # neither clean data nor noise anywhere under the library's cache
    # the fitted transform still maps its rows (through its open files), protects new ones (even a single row) and saves
    mapped = small.map(transform, batched=True, with_indices=True, batch_size=5)
    assert mapped["caption"][:] == protected["caption"][:] and pixels(mapped) == pixels(protected)
    single = synthetic_captions(1, image_size=32, seed=77)
    out = single.map(transform, batched=True, with_indices=True)
    difference = np.abs(
        decode_png(out.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]).astype(int)
        - prepare_image(single.cast_column("image", datasets.Image(decode=False))[0]["image"], 32)
    )
    assert 0 < difference.max() <= QUICK.epsilon_levels
    transform.save_pretrained(tmp_path / "saved")
    assert leaks(tmp_path / "saved", needles) == []
    # protect() on the fitted transform maps with its fit; a new transform computes again, to the same rows
    assert pixels(transform.protect(small)) == pixels(protected)
    again = ProtectTransform(model, processor, QUICK, progress=False)
    rerun = again.protect(small)
    assert (
        not again.summary()["reused"] and again.history[-1]["protected_loss"] == transform.history[-1]["protected_loss"]
    )
    assert rerun["caption"][:] == protected["caption"][:] and pixels(rerun) == pixels(protected)
    assert leaks(workdir.cache_root(), needles) == []


def test_fit_alone_leaves_nothing_in_the_cache_and_workers_read_the_deleted_state(clip, dataset):
    model, processor = clip
    small = dataset.select(range(20, 32))
    transform = ProtectTransform(model, processor, QUICK, progress=False).fit(small)
    assert transform._work.root.parent == workdir.cache_root() and not transform._work.root.exists()
    mapped = small.map(transform, batched=True, with_indices=True, batch_size=4)
    assert leaks(workdir.cache_root(), every_needle(small, mapped, processor.tokenizer)) == []
    in_workers = small.map(transform, batched=True, with_indices=True, batch_size=4, num_proc=2)  # two real processes
    assert pixels(in_workers) == pixels(mapped) and in_workers["caption"][:] == mapped["caption"][:]


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


def test_keep_work_dir_keeps_the_clean_copy_and_the_noise_with_a_notice_and_is_reused(clip, dataset):
    model, processor = clip
    small = dataset.select(range(10))
    transform = ProtectTransform(model, processor, QUICK, keep_work_dir=True, progress=False)
    protected = transform.protect(small)
    root = transform._work.root
    assert (root / "state" / "images.npy").exists() and (root / "state" / "noise.npy").exists()
    found = leaks(root, every_needle(small, protected, processor.tokenizer))
    assert any(item.startswith("image 0 ") for item in found) and any(
        item.startswith("noise 0 HWC int8 ") for item in found
    )
    assert "as private as your original" in (root / "KEEP_PRIVATE.txt").read_text()
    again = ProtectTransform(model, processor, QUICK, keep_work_dir=True, progress=False)
    assert pixels(again.protect(small)) == pixels(protected) and again.summary()["reused"]


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
    assert main(["cache", "clean", "--yes"]) == 0
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
    assert (
        workdir.WorkDir.choose(None, changed, transform.accelerator).root
        != workdir.WorkDir.choose(None, identity, transform.accelerator).root
    )
    with pytest.raises(ValueError, match="another version of the algorithm"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "w", progress=False).fit(small)
    monkeypatch.setattr(workdir, "__version__", "99.0")
    assert workdir.work_dir_identity(small, "t")["library_version"] == "99.0"


def test_a_folder_the_library_did_not_make_is_never_deleted(clip, fitted, dataset, tmp_path):
    model, processor = clip
    users = tmp_path / "work" / "state"
    users.mkdir(parents=True)
    (users / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"work_dir .*work is not empty and hf_unlearnable did not create it"):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "work", progress=False).fit(
            dataset.select(range(8))
        )
    assert snapshot(tmp_path / "work") == {"state/thesis.tex": b"mine"}  # not even a lock file was written
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


def test_cli_protect_deletes_the_work_dir_unless_keep_work_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    common = [
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
    ]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    assert list_work_dirs() == []
    assert main([*common, "--seed", "1", "--output", str(tmp_path / "b"), "--keep-work-dir"]) == 0
    [entry] = list_work_dirs()
    assert entry["finished"] and entry["clean_copy"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_saved_protector_given_as_work_dir_is_refused_and_left_byte_identical(clip, fitted, dataset, tmp_path):
    model, processor = clip
    fitted[0].save_pretrained(tmp_path / "saved", include_fitted_noise=True)
    before = snapshot(tmp_path / "saved")
    with pytest.raises(
        ValueError,
        match=r"work_dir .*saved is a saved ProtectTransform \(save_pretrained\) made by "
        r"hf_unlearnable, not a work dir; nothing was written to it",
    ):
        ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "saved", progress=False).fit(
            dataset.select(range(8))
        )
    assert snapshot(tmp_path / "saved") == before


def test_a_work_dir_given_to_save_pretrained_is_refused_and_left_byte_identical(clip, fitted, dataset, tmp_path):
    model, processor = clip
    ProtectTransform(model, processor, QUICK, work_dir=tmp_path / "work", progress=False).fit(dataset.select(range(8)))
    before = snapshot(tmp_path / "work")
    with pytest.raises(ValueError, match=r"save_pretrained directory .*work is a work dir made by hf_unlearnable"):
        fitted[0].save_pretrained(tmp_path / "work")
    assert snapshot(tmp_path / "work") == before
