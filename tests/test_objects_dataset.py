"""benchmarks/build_objects_dataset.py on fake Tux Paint / Sweet Home 3D .deb archives made here (offline)."""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:  # the builder imports build_icon_dataset, as the scripts import _common
    sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location(
    "build_objects_dataset", ROOT / "benchmarks" / "build_objects_dataset.py"
)
builder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(builder)

GREY = (128, 128, 128)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def gradient(seed: int, size: int = 40, alpha: bool = True) -> bytes:
    """A smooth, photo-like RGBA picture (values 40..215, never 0 or 255), distinct per seed, with a
    transparent left quarter when `alpha` (a cut-out stamp)."""
    ramp = np.linspace(40, 215, size)
    red, green = np.meshgrid(ramp, ramp[::-1])
    blue = np.full_like(red, 40 + 7 * seed)
    pixels = np.stack([red, green, blue, np.full_like(red, 255)], axis=-1).astype(np.uint8)
    if alpha:
        pixels[:, : size // 4, 3] = 0
    return png(pixels if alpha else pixels[..., :3])


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24"><rect width="24" height="12" fill="#3060c0"/></svg>'


def deb(path: Path, files: dict[str, bytes]) -> Path:
    """A .deb laid out as Debian's: an ar archive of debian-binary, control.tar.xz and data.tar.xz."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_xz({"control": b"Package: fake\n"})),
        ("data.tar.xz", tar_xz(files)),
    ]
    with open(path, "wb") as stream:
        stream.write(b"!<arch>\n")
        for name, data in members:
            stream.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
            stream.write(data + (b"\n" if len(data) % 2 else b""))
    return path


STAMP = "usr/share/tuxpaint/stamps/"
STAMP_FILES = {
    STAMP + "animals/frog.png": gradient(1),
    STAMP + "animals/frog.txt": b"A frog.\nde.utf8=Ein Frosch.\nfr.utf8=Une grenouille.\n",
    STAMP + "animals/frog-1.png": gradient(2),
    STAMP + "animals/frog-1.txt": b"A green frog.\n",
    STAMP + "animals/cartoon/frog.svg": SVG,
    STAMP + "animals/cartoon/frog.txt": "\ufeffA cartoon frog.\n".encode(),
    STAMP + "animals/frog.ogg": b"OggS not an image",
    STAMP + "town/sign.png": gradient(3),
    STAMP + "town/sign_mirror.png": gradient(4),  # no .txt of its own: takes sign.txt
    STAMP + "town/sign.txt": b"A Road Sign.\n",
    STAMP + "food/apple.png": gradient(5),
    STAMP + "food/apple.svg": SVG,  # the PNG twin is used
    STAMP + "food/apple.txt": b"An apple.\n",
    STAMP + "food/broken.png": b"\x89PNG\r\n\x1a\n not really",
    STAMP + "food/broken.txt": b"A broken picture.\n",
    STAMP + "food/silent.png": gradient(6),  # no description anywhere: skipped
    STAMP + "food/german.png": gradient(7),
    STAMP + "food/german.txt": b"de.utf8=Ein Apfel.\n",  # no English line: skipped
    STAMP + "plants/tree.png": gradient(8),
    STAMP + "plants/tree.txt": b"A tall tree, in the sun.\n",
    STAMP + "plants/bush.png": gradient(9),
    STAMP + "plants/bush.txt": b"A bush.\n",
    STAMP + "space/moon.png": gradient(10),
    STAMP + "space/moon.txt": b"The moon.\n",
    "usr/share/doc/tuxpaint-stamps-default/copyright": b"License: GPL-2\n",
}

CATALOG = """# PluginFurnitureCatalog.properties
id=Test#Models
name=Test catalog
license=Creative Commons Attribution 3.0 license  \\u00a9 Someone

id#1=Test#chair1
name#1=Chair
tags#1=Blend Swap, Seat, chair
category#1=Living room
icon#1=/test/chair1.png
creator#1=Ann

id#2=Test#chair2
name#2=Red chair
tags#2=Seat
category#2=Living room
icon#2=/test/chair2.png
creator#2=Ann

id#3=Test#bill
name#3=Bill 20\\u20ac
tags#3=Money, \\
  Paper
category#3=Miscellaneous
icon#3=/test/bill.png
creator#3=Bob

id#4=Test#ghost
name#4=Ghost
category#4=Miscellaneous
icon#4=/test/missing.png
"""

DEFAULT_CATALOG = """id=SweetHome3D#DefaultModels
license=GNU GPL / CC-BY 3.0
id#1=eTeks#bed
name#1=Bed 140x190
tags#1=Default, Double
category#1=Bedroom
icon#1=/com/eteks/sweethome3d/io/resources/bed.png
creator#1=eTeks
"""


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def archives(tmp_path):
    stamps = deb(tmp_path / "stamps.deb", STAMP_FILES)
    library = zipped(
        {
            "PluginFurnitureCatalog.properties": CATALOG.encode("iso-8859-1"),
            "test/chair1.png": gradient(11),
            "test/chair2.png": gradient(12),
            "test/bill.png": gradient(13, alpha=False),
        }
    )
    furniture = deb(tmp_path / "furniture.deb", {"usr/share/sweethome3d/furniture/Test.sh3f": library})
    jar = zipped(
        {
            builder.DEFAULT_CATALOG: DEFAULT_CATALOG.encode("iso-8859-1"),
            "com/eteks/sweethome3d/io/resources/bed.png": gradient(14),
        }
    )
    sweethome3d = deb(tmp_path / "sweethome3d.deb", {builder.JAR: jar})
    return {builder.STAMPS: stamps, builder.FURNITURE: furniture, builder.SWEETHOME3D: sweethome3d}


def test_captions_come_from_the_descriptions_and_catalogs_only():
    assert builder.stamp_caption("A frog.\nde.utf8=Ein Frosch.") == "a frog"
    assert (
        builder.stamp_caption("\ufeff  A US 10 cent piece ($.10)  called a dime.\n")
        == "a us 10 cent piece ($.10) called a dime"
    )
    assert builder.stamp_caption("Wait for it...") == "wait for it..."
    for bad in ("", "\n\n", "de.utf8=Ein Frosch.", "pt_BR.utf8=Um sapo."):
        with pytest.raises(ValueError, match="English"):
            builder.stamp_caption(bad)
    assert builder.furniture_caption("Stool", "Blend Swap, Chair, Seat", "Kitchen") == "stool, chair, seat, kitchen"
    assert (
        builder.furniture_caption("Bed 140x190", "Default, Double, DOUBLE", "Bedroom") == "bed 140x190, double, bedroom"
    )
    with pytest.raises(ValueError, match="caption"):
        builder.furniture_caption("", "Blend Swap", "")


def test_parse_properties_reads_java_escapes_continuations_and_comments():
    text = "# comment\n! also\nname#1=Bill 20\\u20ac\nkey\\:x : value\ntags#1=Money, \\\n    Paper\nempty=\npath=C:\\\\u0041\n"
    assert builder.parse_properties(text) == {
        "name#1": "Bill 20€",
        "key:x": "value",
        "tags#1": "Money, Paper",
        "empty": "",
        "path": "C:\\u0041",
    }  # an escaped backslash is no \\u escape


def test_family_joins_numbered_mirrored_and_cartoon_variants():
    assert (
        builder.family("stamps/animals/frog-1.png")
        == builder.family("stamps/animals/cartoon/Frog_mirror.svg")
        == "stamps/frog"
    )
    assert builder.family("stamps/vehicles/sail_boat2.png") == "stamps/sail boat"
    assert builder.family("Scopia.sh3f/scopia/bathroom3.png") == builder.family("Scopia.sh3f/scopia/bathroom4.png")
    assert builder.family("Scopia.sh3f/scopia/bed.png") != builder.family("KatorLegaz.sh3f/katorlegaz/bed.png")
    # identical pixels join families, transitively
    labels = builder.family_groups(
        ["stamps/a/x.png", "stamps/b/y.png", "stamps/c/y-2.png", "stamps/d/z.png"], ["p", "p", "q", "r"]
    )
    assert labels[0] == labels[1] == labels[2] != labels[3]


def test_read_stamps_captions_variants_and_skips(archives):
    items, skipped = builder.read_stamps(archives[builder.STAMPS], source="fake@1")
    captions = {item["name"]: item["caption"] for item in items}
    assert captions == {
        "stamps/animals/cartoon/frog.svg": "a cartoon frog",
        "stamps/animals/frog-1.png": "a green frog",
        "stamps/animals/frog.png": "a frog",
        "stamps/food/apple.png": "an apple",  # the PNG, not its SVG twin
        "stamps/food/broken.png": "a broken picture",  # its image fails later, when decoded
        "stamps/plants/bush.png": "a bush",
        "stamps/plants/tree.png": "a tall tree, in the sun",
        "stamps/space/moon.png": "the moon",
        "stamps/town/sign.png": "a road sign",
        "stamps/town/sign_mirror.png": "a road sign",  # the stamp's own description
    }
    assert skipped == {"stamp without an English description": 2}
    assert {item["source"] for item in items} == {"fake@1"} and all(
        item["license"].startswith("GPL-2") for item in items
    )


def test_read_furniture_and_default_catalog(archives):
    pieces, skipped = builder.read_furniture(archives[builder.FURNITURE], source="f@1")
    assert [(p["name"], p["caption"], p["creator"]) for p in pieces] == [
        ("Test.sh3f/test/chair1.png", "chair, seat, living room", "Ann"),
        ("Test.sh3f/test/chair2.png", "red chair, seat, living room", "Ann"),
        ("Test.sh3f/test/bill.png", "bill 20€, money, paper, miscellaneous", "Bob"),
    ]
    assert pieces[0]["license"] == "Creative Commons Attribution 3.0 license © Someone"
    assert skipped == {"catalog piece without its icon": 1}
    default, _ = builder.read_default_furniture(archives[builder.SWEETHOME3D])
    assert [(p["name"], p["caption"]) for p in default] == [
        ("sweethome3d.jar/com/eteks/sweethome3d/io/resources/bed.png", "bed 140x190, double, bedroom")
    ]


def test_flatten_keeps_continuous_tone_on_a_grey_ground():
    image = builder.flatten(Image.open(io.BytesIO(gradient(1, size=64))), 32)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (32, 32, 3)
    assert np.isin(pixels, (0, 255)).mean() == 0 and len(np.unique(pixels[..., 0])) > 15
    # trimmed to the opaque part (48 x 64), padded with grey to a square: grey columns at both sides
    assert (pixels[:, 0] == GREY).all() and (pixels[:, -1] == GREY).all() and (pixels[:, 16] != GREY).any()
    with pytest.raises(ValueError, match="transparent"):
        builder.flatten(Image.new("RGBA", (8, 8)), 8)


def test_build_dataset_splits_columns_images_and_skips(archives, capsys):
    sources = {name: f"{name}@test" for name in archives}
    dataset, skipped = builder.build_dataset(archives, image_size=16, test_size=3, seed=0, sources=sources)
    assert skipped == {
        "stamp without an English description": 2,
        "catalog piece without its icon": 1,
        "image that cannot be decoded or rendered": 1,
    }
    err = capsys.readouterr().err
    assert "skipped 1: image that cannot be decoded or rendered" in err and "skipped 2: stamp without" in err
    train, test = dataset["train"], dataset["test"]
    names = set(train["name"]) | set(test["name"])
    assert not set(train["name"]) & set(test["name"]) and len(names) == len(train) + len(test) == 13
    assert "stamps/food/broken.png" not in names and len(test) >= 3
    assert set(train["source"]) | set(test["source"]) == set(sources.values())
    for split in (train, test):
        for row in split:
            image = np.asarray(row["image"])
            assert row["image"].mode == "RGB" and image.shape == (16, 16, 3)
            if row["name"].endswith(".png"):  # the photo-like gradients stay continuous
                assert np.isin(image, (0, 255)).mean() == 0 and len(np.unique(image)) > 12, row["name"]
    assert builder.saturated_share(train["image"]) < 0.05
    for seed in range(6):  # variants never straddle the split
        split = builder.build_dataset(archives, image_size=8, test_size=3, seed=seed)[0]
        families = [{builder.family(name) for name in split[part]["name"]} for part in ("train", "test")]
        assert not families[0] & families[1], f"seed {seed}: a family straddles the splits"
    again, _ = builder.build_dataset(archives, image_size=16, test_size=3, seed=0, sources=sources)
    assert again["test"]["name"] == test["name"] and again["train"]["caption"] == train["caption"]
    by_item, _ = builder.build_dataset(
        archives, image_size=8, test_size=3, seed=0, by_family=False, exclude=["stamps/animals/*"]
    )
    assert len(by_item["test"]) == 3 and not any(n.startswith("stamps/animals/") for n in by_item["train"]["name"])


def test_an_archive_with_the_wrong_sha256_is_refused_and_archives_are_recognised(archives, monkeypatch):
    with pytest.raises(ValueError, match="SHA-256"):
        builder.verify_archive(archives[builder.STAMPS], builder.STAMPS)  # the pinned digest of the real package
    with pytest.raises(ValueError, match="none of the pinned packages"):
        builder.identify_archives([archives[builder.STAMPS]])
    for name, path in archives.items():
        monkeypatch.setitem(builder.PACKAGES, name, builder.DebPackage(name, "0-test", builder.sha256_of(path)))
    assert builder.identify_archives(archives.values()) == archives
    with pytest.raises(ValueError, match="give each package once"):
        builder.identify_archives([archives[builder.STAMPS]] * 2)
    with pytest.raises(ValueError, match="Debian package"):
        builder.read_deb(__file__, lambda name: True)


def test_main_writes_dataset_card_and_tokenizer(archives, tmp_path, monkeypatch, capsys):
    for name, path in archives.items():
        monkeypatch.setitem(builder.PACKAGES, name, builder.DebPackage(name, "0-test", builder.sha256_of(path)))
    output = tmp_path / "objects"
    arguments = [
        "--output",
        str(output),
        "--image-size",
        "8",
        "--test-size",
        "2",
        "--split",
        "item",
        "--cache",
        str(tmp_path / "none"),
    ]
    for path in archives.values():
        arguments += ["--archive", str(path)]
    builder.main(arguments)
    assert capsys.readouterr().out.strip() == str(output)
    loaded = datasets.load_from_disk(str(output))
    assert (len(loaded["train"]), len(loaded["test"])) == (11, 2)
    assert loaded["test"][0]["image"].size == (8, 8)
    card = (output / "README.md").read_text()
    for fact in (
        "tuxpaint-stamps-default",
        "sweethome3d-furniture",
        "0-test",
        builder.sha256_of(archives[builder.STAMPS]),
        "GPL-2",
        "CC-BY 3.0",
        "1 image that cannot be decoded or rendered",
    ):
        assert fact in card
    tokenizer_dir = output / "tokenizer"
    assert (tokenizer_dir / "tokenizer_config.json").is_file()
