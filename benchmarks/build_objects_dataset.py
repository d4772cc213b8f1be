"""A real continuous-tone image-caption data set for the benchmarks: Tux Paint stamps and Sweet Home 3D furniture.

The icon set (``build_icon_dataset.py``) is line art: 76% of its channel values sit at exactly 0 or
255, where a bounded perturbation can move only one way. This script builds a third, real data set
of photographs and rendered objects at run time from three packages Debian ships (bookworm),
each fetched with ``apt-get download`` and checked against its pinned SHA-256:

- ``tuxpaint-stamps-default``: Tux Paint's stamps, mostly photographs of real things cut out on a
  transparent background (PNG), also drawings (SVG, rendered with resvg) and, under ``symbols/``,
  letters, digits and signs (``--exclude 'stamps/symbols/alphabets/*'`` drops the letters); each stamp's caption is
  the English first line of its own description file (``frog-1.txt``: ``"A frog."``), lower-cased
  without the final full stop (``"a frog"``). A ``_mirror`` image has no description file of its
  own and takes its stamp's, as Tux Paint does. Where a stamp ships both a PNG and an SVG, the PNG
  is used.
- ``sweethome3d-furniture`` and ``sweethome3d``: the 3D-rendered furniture icons of Sweet Home 3D's
  catalogs (the five ``.sh3f`` libraries and the default catalog inside ``sweethome3d.jar``); each
  caption is the piece's name, tags and category from the catalog's ``.properties`` file,
  lower-cased, comma-separated, repeats dropped, e.g. ``"stool, chair, seat, kitchen"``. The tags
  ``Blend Swap`` and ``Default`` name a catalog, not the object, and are left out.

Nothing is added to a caption that the package does not say. Each image is laid on a neutral grey
(``--background``, default ``#808080``, not white: a white ground would put half the channel
values at 255 again), trimmed to its opaque part, padded to a square and resized to
``--image-size`` (LANCZOS). Files that cannot be decoded or rendered, and stamps without a
description, are skipped and counted. The result is a ``datasets.DatasetDict`` with ``train`` and
``test`` splits (a seeded permutation of families: files of one source whose names differ only in
digits, ``_mirror``, case or folder, such as a stamp's numbered, mirrored and cartoon variants, and
identical pictures share a split; the same picture under the same caption is kept once; rows of
each split in a seeded random order, so any first N rows mix the sources) and columns ``image``,
``caption``, ``name`` (the file inside its package), ``source`` (package@version), ``license`` and
``creator``, saved with ``save_to_disk`` together with a dataset card (``README.md``) and a CLIP
tokenizer whose whole-word tokens cover the training captions (``tokenizer/``, built as the icon
builder builds it).

    python benchmarks/build_objects_dataset.py --output benchmarks/results/tmp/objects
    python -c "import datasets; print(datasets.load_from_disk('benchmarks/results/tmp/objects'))"

Needs ``apt-get`` with Debian bookworm in its sources (or ``--archive`` once per package with
downloaded copies: each is recognised by its SHA-256) and ``pip install
'hf-unlearnable[benchmarks]'`` for the SVG renderer.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
from build_icon_dataset import save_with_card, sha256_of, split_indices
from PIL import Image

from hf_unlearnable.images import prepare_image


class DebPackage(NamedTuple):
    """A pinned Debian package: name, version and the SHA-256 of its ``.deb`` (the ``SHA256`` field
    of Debian's package index for that version)."""

    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        """The file name ``apt-get download`` gives it (these packages are ``Architecture: all``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_all.deb"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


STAMPS = "tuxpaint-stamps-default"
FURNITURE = "sweethome3d-furniture"
SWEETHOME3D = "sweethome3d"
PACKAGES = {
    STAMPS: DebPackage(STAMPS, "2022.06.04-1", "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"),
    FURNITURE: DebPackage(FURNITURE, "1.8-1", "3ccb90c63f9525e887a767b9cd5c8b6933b8b6b2973a615a5359ee68a2118668"),
    SWEETHOME3D: DebPackage(
        SWEETHOME3D, "7.0.2+dfsg-3", "54bce4394ae763da1ffccff8f025565ce7161dc6934371e07480034ef155c411"
    ),
}
STAMPS_LICENSE = "GPL-2 (Tux Paint stamps, Copyright 2002-2022 Bill Kendrick; debian/copyright: Files: *)"
LICENSE = (
    "Tux Paint stamps: GPL-2. Sweet Home 3D furniture: per catalog, as its `license` line says (the "
    "`license` column): Blend Swap CC-0 public domain (CC0), Blend Swap CC-BY, Scopia, Kator Legaz and "
    "Reallusion CC-BY 3.0 (attribution: the `creator` column), the default catalog GNU GPL / CC-BY 3.0"
)
STAMPS_ROOT = "usr/share/tuxpaint/"
JAR = "usr/share/sweethome3d/sweethome3d.jar"
DEFAULT_CATALOG = "com/eteks/sweethome3d/io/DefaultFurnitureCatalog.properties"
#: Tags that name a catalog rather than the object: left out of the captions.
CATALOG_TAGS = frozenset({"blend swap", "default"})
DEFAULT_OUTPUT = "benchmarks/results/tmp/objects"
#: Bump when the rendering or caption template changes, so cached copies are not mistaken.
BUILD_FORMAT = "1"


def verify_archive(path: str | Path, package: str, expected_sha256: str | None = None) -> str:
    """Check the archive's SHA-256 against `expected_sha256` (default: `package`'s pinned one); return it.

    Raises ValueError on a mismatch.
    """
    pinned = PACKAGES[package]
    expected_sha256 = expected_sha256 if expected_sha256 is not None else pinned.sha256
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {expected_sha256} for {pinned}; "
            "delete it and download again, or pass the archive of exactly that version."
        )
    return actual


def identify_archives(paths: Iterable[str | Path]) -> dict[str, Path]:
    """Which pinned package each archive is, by its SHA-256: ``{package name: path}``.

    Raises ValueError for an archive that is none of them, or two archives of one package.
    """
    by_digest = {package.sha256: name for name, package in PACKAGES.items()}
    found: dict[str, Path] = {}
    for path in map(Path, paths):
        digest = sha256_of(path)
        if digest not in by_digest:
            pinned = ", ".join(f"{package} ({package.sha256[:12]}...)" for package in PACKAGES.values())
            raise ValueError(f"{path} (SHA-256 {digest}) is none of the pinned packages: {pinned}.")
        name = by_digest[digest]
        if name in found:
            raise ValueError(f"{found[name]} and {path} are both {PACKAGES[name]}; give each package once.")
        found[name] = path
    return found


def download_archive(directory: str | Path, package: DebPackage) -> Path:
    """Fetch `package` (exactly its pinned version) with ``apt-get download`` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            "apt-get is not on the PATH; on a Debian-based system run "
            f"`apt-get download {package.name}={package.version}` and pass the file with --archive."
        )
    result = subprocess.run(
        ["apt-get", "download", f"{package.name}={package.version}"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    path = directory / package.filename
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"apt-get download {package.name}={package.version} failed (is Debian bookworm in the apt "
            f"sources, and `apt-get update` run?):\n{result.stderr[-2000:]}"
        )
    return path


def read_deb(archive: str | Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The regular files of a ``.deb`` whose path (without the leading ``./``) `wanted` accepts.

    A ``.deb`` is an ``ar`` archive; its ``data.tar.*`` member (xz, gzip or bzip2) is streamed
    without unpacking anything to disk.
    """
    with open(archive, "rb") as stream:
        if stream.read(8) != b"!<arch>\n":
            raise ValueError(f"{archive} is not a Debian package (no ar header).")
        while True:
            header = stream.read(60)
            if len(header) < 60:
                raise ValueError(f"{archive} has no data.tar member; is it a Debian package?")
            member, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
            if member.startswith("data.tar"):
                data = stream.read(size)
                break
            stream.seek(size + size % 2, io.SEEK_CUR)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        for entry in tar:
            name = entry.name.removeprefix("./")
            if entry.isfile() and wanted(name):
                files[name] = tar.extractfile(entry).read()
    return files


def _phrase(text: str) -> str:
    """Lower-case words, whitespace runs as one space."""
    return " ".join(text.lower().split())


def stamp_caption(description: str) -> str:
    """The caption of a Tux Paint stamp from its description file's text: the first line (English),
    lower-cased, without the final full stop. ``"A frog.\\nde.utf8=Ein Frosch."`` -> ``"a frog"``.

    Raises ValueError when the first line is empty or is a translation (``xx.utf8=...``).
    """
    lines = description.lstrip("\ufeff").strip().splitlines()
    first = _phrase(lines[0]) if lines else ""
    if not first or re.match(r"^[a-z]{2,3}(_[a-z]{2})?(@\w+)?\.utf-?8=", first):
        raise ValueError("no English description on the first line")
    return first[:-1].rstrip() if first.endswith(".") and not first.endswith("..") else first


def furniture_caption(name: str, tags: str = "", category: str = "") -> str:
    """The caption of a catalog piece: its name, its tags (comma-separated in the catalog) and its
    category as lower-case phrases, comma-separated, no repeats, catalog-naming tags left out.

    E.g. ``("Stool", "Blend Swap, Chair, Seat", "Kitchen") -> "stool, chair, seat, kitchen"``.
    """
    phrases: list[str] = []
    for phrase in (name, *tags.split(","), category):
        words = _phrase(phrase)
        if words and words not in phrases and words not in CATALOG_TAGS:
            phrases.append(words)
    if not phrases:
        raise ValueError(f"piece {name!r} has no name, tag or category to caption it with.")
    return ", ".join(phrases)


def family(name: str) -> str:
    """Near-duplicates share it: the item's first path component (``stamps`` or its catalog) and its
    file's stem without digits, ``_mirror`` and separators, lower-cased, whatever the folder:
    ``stamps/animals/frog-1.png`` and ``stamps/animals/cartoon/Frog_mirror.svg`` -> ``stamps/frog``."""
    top = name.partition("/")[0]
    stem = name.rpartition("/")[2].rsplit(".", 1)[0].lower().removesuffix("_mirror")
    return top + "/" + " ".join(re.split(r"[\d\s_.-]+", stem)).strip()


def family_groups(names: Sequence[str], digests: Sequence[str]) -> list[str]:
    """One group label per row: rows that share a `family` or identical pixels (`digests`), directly
    or through a chain of such rows, share a label (the family of the group's first row)."""
    parent = list(range(len(names)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first: dict[tuple[str, str], int] = {}
    for index, (name, digest) in enumerate(zip(names, digests)):
        for key in (("family", family(name)), ("pixels", digest)):
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    return [family(names[root(index)]) for index in range(len(names))]


def parse_properties(text: str) -> dict[str, str]:
    """A Java ``.properties`` file as a dict: comments, continued lines, ``=``/``:``/space
    separators and ``\\uXXXX`` escapes handled (the file is read as ISO-8859-1 by the caller)."""

    def unescape(value: str) -> str:
        def one(match: re.Match) -> str:
            escaped = match.group(1)
            if len(escaped) == 5:  # uXXXX
                return chr(int(escaped[1:], 16))
            return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(escaped, escaped)

        value = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, value)
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

    entries, pending = {}, ""
    for raw in text.splitlines():
        line = pending + raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        if (len(line) - len(line.rstrip("\\"))) % 2:
            pending = line[:-1]
            continue
        pending = ""
        match = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:]?\s*(.*)$", line)
        entries[unescape(match.group(1))] = unescape(match.group(2))
    return entries


def catalog_pieces(
    properties: dict[str, str], read_icon: Callable[[str], bytes | None], prefix: str, source: str
) -> tuple[list[dict], collections.Counter]:
    """The pieces of one Sweet Home 3D furniture catalog: caption, icon bytes and provenance each.

    `read_icon` maps an icon path of the catalog (``/scopia/bed1.png``) to its bytes, or None when
    the library lacks it (counted as skipped, like a piece with nothing to caption it with).
    """
    license_ = " ".join(properties.get("license", "").split())
    pieces, skipped = [], collections.Counter()
    numbers = sorted(int(key.partition("#")[2]) for key in properties if re.fullmatch(r"id#\d+", key))
    for number in numbers:
        get = lambda field, number=number: properties.get(f"{field}#{number}", "")  # noqa: E731
        icon = get("icon")
        data = read_icon(icon) if icon else None
        if data is None:
            skipped["catalog piece without its icon"] += 1
            continue
        try:
            caption = furniture_caption(get("name"), get("tags"), get("category"))
        except ValueError:
            skipped["catalog piece with nothing to caption it with"] += 1
            continue
        pieces.append(
            {
                "name": prefix + "/" + icon.lstrip("/"),
                "caption": caption,
                "data": data,
                "kind": "raster",
                "source": source,
                "license": license_,
                "creator": get("creator"),
            }
        )
    return pieces, skipped


def read_stamps(archive: str | Path, source: str = str(PACKAGES[STAMPS])) -> tuple[list[dict], collections.Counter]:
    """The stamps of a ``tuxpaint-stamps-default`` package: caption, image bytes and kind each.

    Returns the items sorted by name and a count of what was skipped (stamps with no description).
    """
    files = read_deb(
        archive,
        lambda name: name.startswith(STAMPS_ROOT + "stamps/") and name.rsplit(".", 1)[-1] in ("png", "svg", "txt"),
    )
    files = {name.removeprefix(STAMPS_ROOT): data for name, data in files.items()}
    by_stem: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
    for name, data in files.items():
        stem, _, extension = name.rpartition(".")
        by_stem[stem][extension] = data
    items, skipped = [], collections.Counter()
    for stem in sorted(by_stem):
        kinds = by_stem[stem]
        kind = "png" if "png" in kinds else "svg" if "svg" in kinds else None
        if kind is None:
            continue  # a description file without an image
        description = kinds.get("txt") or by_stem.get(stem.removesuffix("_mirror"), {}).get("txt")
        try:
            caption = stamp_caption(description.decode("utf-8", "replace") if description else "")
        except ValueError:
            skipped["stamp without an English description"] += 1
            continue
        items.append(
            {
                "name": f"{stem}.{kind}",
                "caption": caption,
                "data": kinds[kind],
                "kind": "svg" if kind == "svg" else "raster",
                "source": source,
                "license": STAMPS_LICENSE,
                "creator": "",
            }
        )
    return items, skipped


def read_furniture(
    archive: str | Path, source: str = str(PACKAGES[FURNITURE])
) -> tuple[list[dict], collections.Counter]:
    """The pieces of every ``.sh3f`` library in a ``sweethome3d-furniture`` package."""
    libraries = read_deb(archive, lambda name: name.endswith(".sh3f"))
    items, skipped = [], collections.Counter()
    for path in sorted(libraries):
        with zipfile.ZipFile(io.BytesIO(libraries[path])) as library:
            members = set(library.namelist())
            if "PluginFurnitureCatalog.properties" not in members:
                raise ValueError(f"{archive}: {path} has no PluginFurnitureCatalog.properties.")
            properties = parse_properties(library.read("PluginFurnitureCatalog.properties").decode("iso-8859-1"))
            read_icon = lambda icon, library=library, members=members: (  # noqa: E731
                library.read(icon.lstrip("/")) if icon.lstrip("/") in members else None
            )
            found, missing = catalog_pieces(properties, read_icon, Path(path).name, source)
        items += found
        skipped += missing
    return items, skipped


def read_default_furniture(
    archive: str | Path, source: str = str(PACKAGES[SWEETHOME3D])
) -> tuple[list[dict], collections.Counter]:
    """The pieces of the default catalog inside a ``sweethome3d`` package's ``sweethome3d.jar``."""
    jar = read_deb(archive, lambda name: name == JAR)
    if JAR not in jar:
        raise ValueError(f"{archive} has no {JAR}; is it a sweethome3d package?")
    with zipfile.ZipFile(io.BytesIO(jar[JAR])) as library:
        members = set(library.namelist())
        properties = parse_properties(library.read(DEFAULT_CATALOG).decode("iso-8859-1"))
        read_icon = lambda icon: library.read(icon.lstrip("/")) if icon.lstrip("/") in members else None  # noqa: E731
        return catalog_pieces(properties, read_icon, "sweethome3d.jar", source)


READERS = {STAMPS: read_stamps, FURNITURE: read_furniture, SWEETHOME3D: read_default_furniture}


def render_svg(svg: bytes, longest_side: int) -> Image.Image:
    """SVG markup as an RGBA image (resvg), rendered with its longest side at least `longest_side`."""
    try:
        import resvg_py
    except ImportError as error:
        raise ImportError(
            "Rendering the SVG stamps needs resvg-py: pip install 'hf-unlearnable[benchmarks]' (or resvg-py)."
        ) from error
    text = svg.decode("utf-8", "replace")
    image = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=text, skip_system_fonts=True))))
    if max(image.size) < longest_side:
        zoom = longest_side / max(image.size)
        image = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=text, skip_system_fonts=True, zoom=zoom))))
    image.load()
    return image


def flatten(image: Image.Image, image_size: int, background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """An `image_size` square RGB image: `image` trimmed to its opaque part, laid on `background`,
    padded to a square of that colour and resized (LANCZOS)."""
    image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    if box is None:
        raise ValueError("the image is fully transparent")
    image = image.crop(box)
    side = max(image.size)
    canvas = Image.new("RGBA", (side, side), (*background, 255))
    canvas.alpha_composite(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.convert("RGB").resize((image_size, image_size), Image.LANCZOS)


def decode_item(item: dict, image_size: int, background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """The item's image as stored in the data set; raises ValueError when it cannot be decoded or rendered."""
    try:
        if item["kind"] == "svg":
            image = render_svg(item["data"], 4 * image_size)
        else:
            image = Image.open(io.BytesIO(item["data"]))
            image.load()
        return flatten(image, image_size, background)
    except ImportError:
        raise
    except Exception as error:  # PIL and resvg raise many kinds for a broken file
        raise ValueError(f"{item['name']}: {error}") from error


def saturated_share(images: Iterable, image_size: int = 32) -> float:
    """The mean share of channel values exactly 0 or 255 once resized as the benchmarks resize
    (``hf_unlearnable.images.prepare_image``); the icons: 0.76 at 32 px."""
    return float(np.mean([np.isin(prepare_image(image, image_size), (0, 255)).mean() for image in images]))


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "name": datasets.Value("string"),
        "source": datasets.Value("string"),
        "license": datasets.Value("string"),
        "creator": datasets.Value("string"),
    }
)


def build_dataset(
    archives: dict[str, str | Path],
    image_size: int = 64,
    test_size: int = 300,
    seed: int = 0,
    background: tuple[int, int, int] = (128, 128, 128),
    by_family: bool = True,
    exclude: Sequence[str] = (),
    sources: dict[str, str] | None = None,
) -> tuple[datasets.DatasetDict, collections.Counter]:
    """The stamps and pieces of `archives` (``{package name: .deb}``, any non-empty subset of
    `PACKAGES`) as a ``DatasetDict`` with ``train``/``test`` splits (see the module doc), and a
    count of the files skipped, by reason (printed to stderr too).

    `exclude`: ``fnmatch`` patterns of item names to leave out (e.g. ``stamps/symbols/alphabets/*``).
    `sources`: the ``source`` column per package (default: ``name@version`` of the pinned package).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    unknown = set(archives) - set(READERS)
    if unknown or not archives:
        raise ValueError(f"archives: expected some of {sorted(READERS)}, got {sorted(archives)}.")
    items, skipped = [], collections.Counter()
    for package in sorted(archives):
        source = (sources or {}).get(package, str(PACKAGES[package]))
        found, missing = READERS[package](archives[package], source=source)
        items += found
        skipped += missing
    items = [item for item in items if not any(fnmatch.fnmatchcase(item["name"], pattern) for pattern in exclude)]
    rows = []
    for item in sorted(items, key=lambda item: item["name"]):
        try:
            rows.append({**item, "image": decode_item(item, image_size, background)})
        except ValueError:
            skipped["image that cannot be decoded or rendered"] += 1
    digests = [hashlib.sha256(row["image"].tobytes()).hexdigest() for row in rows]
    kept, seen = [], set()
    for row, digest in zip(rows, digests):  # the same picture under the same caption twice: keep one
        if (digest, row["caption"]) in seen:
            skipped["exact duplicate of another item (same pixels, same caption)"] += 1
        else:
            seen.add((digest, row["caption"]))
            kept.append((row, digest))
    rows, digests = [row for row, _ in kept], [digest for _, digest in kept]
    for reason, count in sorted(skipped.items()):
        print(f"skipped {count}: {reason}", file=sys.stderr)
    groups = family_groups([row["name"] for row in rows], digests) if by_family else None
    train_rows, test_rows = split_indices(len(rows), test_size, seed, groups)
    order = np.random.default_rng(seed)

    def split(indices: np.ndarray) -> datasets.Dataset:
        chosen = [rows[index] for index in order.permutation(indices)]
        columns = {column: [row[column] for row in chosen] for column in FEATURES}
        return datasets.Dataset.from_dict(columns, features=FEATURES)

    return datasets.DatasetDict({"train": split(train_rows), "test": split(test_rows)}), skipped


SPLIT_NOTES = {
    "family": "files of one source whose names differ only in digits, `_mirror`, case or folder (a "
    "stamp's numbered, mirrored and cartoon variants), and identical pictures, are always in the same split",
    "item": "items drawn one by one, so a variant of a training item may sit in the test split",
}


def dataset_card(
    dataset: datasets.DatasetDict,
    digests: dict[str, str],
    image_size: int,
    seed: int,
    split: str,
    background: str,
    skipped: collections.Counter,
    share: float,
    exclude: Sequence[str] = (),
) -> str:
    """The README.md written beside the saved data set: packages, versions, licences, SHA-256s, recipe."""
    packages = "\n".join(
        f"  - Debian `{name}` version `{PACKAGES[name].version}` (`apt-get download {name}={PACKAGES[name].version}`), "
        f"SHA-256 `{digest}`"
        for name, digest in sorted(digests.items())
    )
    counts = collections.Counter(row for split_ in dataset.values() for row in split_["source"])
    per_source = ", ".join(f"{count} from `{source}`" for source, count in sorted(counts.items()))
    skipped_text = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "none"
    example = dataset["train"][0]
    return f"""# Tux Paint stamps and Sweet Home 3D furniture as image-caption pairs

Built by `benchmarks/build_objects_dataset.py` of hf_unlearnable (format {BUILD_FORMAT}).

- Packages (Debian bookworm):
{packages}
- Licence: {LICENSE}
- Rows: {len(dataset["train"])} train, {len(dataset["test"])} test ({per_source}); a seeded permutation, seed
  {seed}; split by {split}: {SPLIT_NOTES[split]}; rows of each split in a seeded random order
- Skipped: {skipped_text}{f"; left out by pattern: {', '.join(exclude)}" if exclude else ""}
- Images: photographs and drawings (Tux Paint; SVG rendered by resvg) and 3D renders (Sweet Home 3D),
  trimmed to their opaque part, laid on {background}, padded to a square and resized to
  {image_size}x{image_size} (LANCZOS), RGB PNG. Channel values exactly 0 or 255 at 32 px (as the
  benchmarks resize): {share:.1%} of the train split's (the icon set: 76%)
- Captions: a stamp's English description (first line of its `.txt`), lower-cased, final full stop
  dropped; a piece's name, tags and category from its catalog's `.properties`, lower-cased,
  comma-separated, repeats and the catalog-naming tags `Blend Swap` and `Default` dropped; nothing
  else. Example: `{example["caption"]}` (`{example["name"]}`)
- Columns: `image`, `caption`, `name` (the file inside its package), `source` (package@version),
  `license` (the stamps' licence, or the piece's catalog's `license` line), `creator` (the catalog's
  credit for the piece; empty for the stamps)
- `tokenizer/`: a CLIP BPE tokenizer trained on the train captions (byte-level: any text encodes)
"""


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"#808080"`` -> ``(128, 128, 128)``."""
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a colour as #rrggbb")
    return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for save_to_disk (replaced)")
    parser.add_argument("--image-size", type=int, default=64, help="stored width and height in pixels")
    parser.add_argument(
        "--test-size", type=int, default=300, help="rows in the test split (at least; a family split may add a few)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split and of the row order")
    parser.add_argument(
        "--split",
        choices=("family", "item"),
        default="family",
        help="family: variants share a split (default); item: rows drawn singly",
    )
    parser.add_argument("--background", default="#808080", help="colour under transparent parts (#rrggbb)")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out items whose name matches this fnmatch pattern (repeatable), e.g. 'stamps/symbols/alphabets/*'",
    )
    parser.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="PATH",
        help="an already downloaded .deb of one of the packages (repeatable; recognised by its pinned SHA-256)",
    )
    parser.add_argument(
        "--cache", default="benchmarks/results/tmp/downloads", help="where apt-get download puts the packages"
    )
    arguments = parser.parse_args(argv)
    background = parse_colour(arguments.background)

    for path in arguments.archive:
        if not Path(path).is_file():
            raise SystemExit(f"--archive {path} does not exist.")
    archives = identify_archives(arguments.archive)
    for name, package in PACKAGES.items():
        if name not in archives:
            cached = Path(arguments.cache) / package.filename
            archives[name] = cached if cached.is_file() else download_archive(arguments.cache, package)
    digests = {name: verify_archive(path, name) for name, path in archives.items()}
    dataset, skipped = build_dataset(
        archives,
        arguments.image_size,
        arguments.test_size,
        arguments.seed,
        background,
        by_family=arguments.split == "family",
        exclude=arguments.exclude,
    )
    share = saturated_share(dataset["train"]["image"])

    output = Path(arguments.output)
    card = dataset_card(
        dataset,
        digests,
        arguments.image_size,
        arguments.seed,
        arguments.split,
        arguments.background,
        skipped,
        share,
        arguments.exclude,
    )
    save_with_card(dataset, card, output)
    print(
        f"{', '.join(map(str, PACKAGES.values()))}: {len(dataset['train'])} train, {len(dataset['test'])} test pairs "
        f"at {arguments.image_size} px; {share:.1%} of the train channel values at 0 or 255 at 32 px",
        file=sys.stderr,
    )
    print(output)
    return output


if __name__ == "__main__":
    main()
