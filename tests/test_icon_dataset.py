"""benchmarks/build_icon_dataset.py on a fake @mdi/svg archive made here (offline, 10 icons)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_icon_dataset", ROOT / "benchmarks" / "build_icon_dataset.py")
builder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(builder)

SVG = '<svg xmlns="http://www.w3.org/2000/svg" id="mdi-{name}" viewBox="0 0 24 24"><path d="{path}" /></svg>'
LEFT_HALF = "M0 0H12V24H0Z"
TOP_HALF = "M0 0H24V12H0Z"

# (name, aliases, tags, path): the layout of @mdi/svg's meta.json. Left-half glyphs for the first
# five, top-half for the rest, so a test can tell which SVG an image was rendered from.
ICONS = [
    ("arrow-left", ["arrow-back"], ["Arrow", "Navigation"], LEFT_HALF),
    ("arrow-left-bold", [], ["Arrow"], LEFT_HALF),
    ("cog", ["settings", "gear"], ["Settings"], LEFT_HALF),
    ("cog-outline", ["settings-outline"], ["Settings"], LEFT_HALF),
    ("file-document", [], ["Files / Folders"], LEFT_HALF),
    ("home", ["house"], ["Home Automation", "Places"], TOP_HALF),
    ("home-outline", ["house-outline"], ["Home Automation"], TOP_HALF),
    ("car", ["automobile"], ["Transportation + Road"], TOP_HALF),
    ("weather-sunny", ["sun"], ["Weather"], TOP_HALF),
    ("lock", [], [], TOP_HALF),
]
DEPRECATED = ("old-icon", [], ["Arrow"], LEFT_HALF)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_archive(path: Path, icons=ICONS, deprecated=(DEPRECATED,), drop_svg: str | None = None) -> Path:
    """A .tgz laid out like the registry's @mdi/svg archive: package/meta.json and package/svg/."""
    meta = [
        {"id": f"id-{name}", "name": name, "aliases": aliases, "tags": tags, "styles": [], "deprecated": False}
        for name, aliases, tags, _ in icons
    ] + [
        {"id": f"id-{name}", "name": name, "aliases": aliases, "tags": tags, "styles": [], "deprecated": True}
        for name, aliases, tags, _ in deprecated
    ]
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/package.json", json.dumps({"name": "@mdi/svg", "version": "0.0.0-test"}).encode())
        _add(tar, "package/meta.json", json.dumps(meta).encode())
        for name, _, _, svg_path in [*icons, *deprecated]:
            if name != drop_svg:
                _add(tar, f"package/svg/{name}.svg", SVG.format(name=name, path=svg_path).encode())
    return path


@pytest.fixture
def archive(tmp_path):
    return fake_archive(tmp_path / "mdi-svg-0.0.0-test.tgz")


def test_captions_come_from_the_metadata_only():
    assert builder.icon_caption("arrow-left", ["arrow-back"], ["Arrow", "Navigation"]) == (
        "arrow left, arrow back, arrow, navigation"
    )
    assert builder.icon_caption("file-document", [], ["Files / Folders"]) == "file document, files folders"
    assert (
        builder.icon_caption("car", ["automobile"], ["Transportation + Road"]) == "car, automobile, transportation road"
    )
    assert builder.icon_caption("cog", ["Cog"], ["COG"]) == "cog"  # repeats dropped after lower-casing
    assert builder.icon_caption("lock") == "lock"


def test_read_icons_skips_deprecated_and_sorts(archive):
    icons = builder.read_icons(archive)
    assert [icon["name"] for icon in icons] == sorted(name for name, *_ in ICONS)
    assert [icon["name"] for icon in builder.read_icons(archive, include_deprecated=True)].count("old-icon") == 1
    assert all(icon["svg"].startswith("<svg") for icon in icons)


def test_a_listed_icon_without_its_svg_is_refused(tmp_path):
    broken = fake_archive(tmp_path / "broken.tgz", drop_svg="cog")
    with pytest.raises(ValueError, match="cog"):
        builder.read_icons(broken)


def test_an_archive_with_the_wrong_sha256_is_refused(archive):
    with pytest.raises(ValueError, match="SHA-256"):
        builder.verify_archive(archive)  # the pinned digest of the real package
    assert builder.verify_archive(archive, builder.sha256_of(archive)) == builder.sha256_of(archive)


def test_render_svg_draws_the_glyph_black_on_white_rgb():
    left = np.asarray(builder.render_svg(SVG.format(name="x", path=LEFT_HALF), 16))
    assert left.shape == (16, 16, 3) and left.dtype == np.uint8
    assert left[:, :7].max() < 30 and left[:, 9:].min() > 225  # glyph black, background white
    top = np.asarray(builder.render_svg(SVG.format(name="x", path=TOP_HALF), 16))
    assert top[:7].max() < 30 and top[9:].min() > 225


def test_split_is_disjoint_complete_and_seeded():
    train, test = builder.split_indices(10, 3, seed=0)
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(10))
    again = builder.split_indices(10, 3, seed=0)
    assert (again[0] == train).all() and (again[1] == test).all()
    assert any((builder.split_indices(10, 3, seed=s)[1] != test).any() for s in range(1, 5))
    with pytest.raises(ValueError, match="test_size"):
        builder.split_indices(10, 10)


def test_family_split_keeps_an_icon_and_its_outline_together():
    names = [name for name, *_ in ICONS]
    families = [builder.icon_family(name) for name in names]
    assert builder.icon_family("cog-outline") == "cog" and builder.icon_family("cog-pause-outline") == "cog-pause"
    assert builder.icon_family("outline") == "outline"
    for seed in range(8):
        train, test = builder.split_indices(len(names), 3, seed, families)
        assert not set(train) & set(test) and sorted([*train, *test]) == list(range(len(names)))
        assert len(test) >= 3
        test_families = {families[i] for i in test}
        assert not test_families & {families[i] for i in train}, f"seed {seed}: a family straddles the splits"
    with pytest.raises(ValueError, match="one per row"):
        builder.split_indices(len(names), 3, 0, families[:-1])


def test_build_dataset_splits_columns_images_and_captions(archive):
    dataset = builder.build_dataset(
        archive, image_size=16, test_size=3, seed=0, source="@mdi/svg@0.0.0-test", by_family=False
    )
    assert set(dataset) == {"train", "test"} and (len(dataset["train"]), len(dataset["test"])) == (7, 3)
    assert isinstance(dataset["train"].features["image"], datasets.Image)
    train_names, test_names = set(dataset["train"]["name"]), set(dataset["test"]["name"])
    assert not train_names & test_names and train_names | test_names == {name for name, *_ in ICONS}
    by_name = {name: (aliases, tags, path) for name, aliases, tags, path in ICONS}
    for split in dataset.values():
        for row in split:
            aliases, tags, path = by_name[row["name"]]
            assert row["caption"] == builder.icon_caption(row["name"], aliases, tags)
            assert row["source"] == "@mdi/svg@0.0.0-test"
            image = row["image"]
            assert image.mode == "RGB" and image.size == (16, 16)
            pixels = np.asarray(image)
            dark = pixels[:, :7] if path == LEFT_HALF else pixels[:7]
            assert dark.max() < 30, f"{row['name']} was not rendered from its own SVG"

    again = builder.build_dataset(
        archive, image_size=16, test_size=3, seed=0, source="@mdi/svg@0.0.0-test", by_family=False
    )
    for name in ("train", "test"):
        assert again[name]["name"] == dataset[name]["name"]
        assert [np.asarray(i).tobytes() for i in again[name]["image"]] == [
            np.asarray(i).tobytes() for i in dataset[name]["image"]
        ]
    other = builder.build_dataset(archive, image_size=16, test_size=3, seed=1, by_family=False)
    assert other["test"]["name"] != dataset["test"]["name"]
    family = builder.build_dataset(archive, image_size=16, test_size=3, seed=0)  # the default
    test_families = {builder.icon_family(name) for name in family["test"]["name"]}
    assert not test_families & {builder.icon_family(name) for name in family["train"]["name"]}


def test_icon_tokenizer_keeps_caption_words_whole_and_encodes_anything():
    tokenizer = builder.icon_tokenizer([builder.icon_caption(n, a, t) for n, a, t, _ in ICONS])
    assert tokenizer.tokenize("cog outline, settings") == ["cog</w>", "outline</w>", ",</w>", "settings</w>"]
    ids = tokenizer("zebra ünï 42")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "zebraünï42"


def test_main_writes_dataset_card_and_tokenizer(archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(builder, "ARCHIVE_SHA256", builder.sha256_of(archive))
    output = tmp_path / "icons"
    builder.main(
        ["--archive", str(archive), "--output", str(output), "--image-size", "8", "--test-size", "2", "--split", "icon"]
    )
    assert capsys.readouterr().out.strip() == str(output)
    loaded = datasets.load_from_disk(str(output))
    assert (len(loaded["train"]), len(loaded["test"])) == (8, 2)
    assert loaded["test"][0]["image"].size == (8, 8)
    card = (output / "README.md").read_text()
    for fact in ("@mdi/svg", builder.VERSION, builder.sha256_of(archive), "Apache-2.0"):
        assert fact in card
    assert (output / "tokenizer" / "tokenizer_config.json").is_file()
