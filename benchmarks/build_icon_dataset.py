"""A real public image-caption data set for the benchmarks: Material Design Icons (npm ``@mdi/svg``).

The synthetic scenes of ``hf_unlearnable.testing`` are the library authors' own data; protection
figures on them alone are weak evidence. This script builds a second, real data set at run time
from a package the npm registry ships: the pinned ``@mdi/svg`` archive is fetched with ``npm pack``,
its SHA-256 is checked against the pinned value, each non-deprecated icon's SVG is rendered to an
RGB PNG (black glyph on white, the set's own colours: the icons are monochrome) with ``resvg-py``
(the Rust renderer resvg, shipped inside the wheel), and each caption is written from the icon's
metadata in ``meta.json`` only (its name, its aliases and its category tags, lower-cased,
hyphens as spaces), e.g. ``"cog pause outline, settings pause outline, gear pause outline,
settings"``. The result is a ``datasets.DatasetDict`` with ``train`` and ``test`` splits (a seeded
permutation of icon families: an icon and its outline variant share a split) and columns ``image``, ``caption``, ``name`` and ``source``, saved with
``save_to_disk`` together with a dataset card (``README.md``) and a CLIP tokenizer whose
whole-word tokens cover the training captions (``tokenizer/``; byte-level, so any text encodes).

    python benchmarks/build_icon_dataset.py --output benchmarks/results/tmp/icons
    python -c "import datasets; print(datasets.load_from_disk('benchmarks/results/tmp/icons'))"

Needs ``npm`` on the PATH (or ``--archive`` with a downloaded copy) and ``pip install
'hf-unlearnable[benchmarks]'`` for the renderer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import transformers
from PIL import Image
from tokenizers import pre_tokenizers

from hf_unlearnable.testing import clip_tokenizer

PACKAGE = "@mdi/svg"
VERSION = "7.4.47"
#: SHA-256 of the registry's archive ``svg-7.4.47.tgz`` (its SHA-1, f8e5516a..., is the registry's
#: ``dist.shasum``).
ARCHIVE_SHA256 = "de92e5dc9ce46c392ab5c53aa7190b19f82b40cb48872a083f788c7e13e91fef"
LICENSE = (
    "Pictogrammers Free License: icons under Apache-2.0 (some redistributed under their own "
    "licenses, see the package's LICENSE file); package.json declares Apache-2.0"
)
DEFAULT_OUTPUT = "benchmarks/results/tmp/icons"
#: Bump when the rendering or caption template changes, so cached copies are not mistaken.
BUILD_FORMAT = "1"


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: str | Path, expected_sha256: str | None = None) -> str:
    """Check the archive's SHA-256 against `expected_sha256` (default: the pinned one); return it.

    Raises ValueError on a mismatch.
    """
    expected_sha256 = expected_sha256 if expected_sha256 is not None else ARCHIVE_SHA256
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {expected_sha256} for {PACKAGE}@{VERSION}; "
            "delete it and download again, or pass the archive of exactly that version."
        )
    return actual


def download_archive(directory: str | Path, package: str = PACKAGE, version: str = VERSION) -> Path:
    """Fetch ``package@version`` from the npm registry with ``npm pack`` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise RuntimeError(
            "npm is not on the PATH; install Node.js/npm, or download the archive yourself "
            f"(`npm pack {package}@{version}`) and pass it with --archive."
        )
    result = subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--pack-destination", str(directory), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {package}@{version} failed:\n{result.stderr[-2000:]}")
    filename = json.loads(result.stdout)[0]["filename"]
    return directory / Path(filename).name


def _words(text: str) -> str:
    """Metadata text as plain lower-case words: hyphens, slashes and plus signs become spaces."""
    for separator in ("-", "/", "+", "_"):
        text = text.replace(separator, " ")
    return " ".join(text.lower().split())


def icon_caption(name: str, aliases: Sequence[str] = (), tags: Sequence[str] = ()) -> str:
    """The caption of one icon: its name, aliases and tags as words, comma-separated, no repeats.

    E.g. ``("cog-pause", ["settings-pause"], ["Settings"]) -> "cog pause, settings pause,
    settings"``; a category such as ``"Files / Folders"`` gives ``"files folders"``. Nothing is
    added that the metadata does not say.
    """
    phrases: list[str] = []
    for phrase in (name, *aliases, *tags):
        words = _words(phrase)
        if words and words not in phrases:
            phrases.append(words)
    if not phrases:
        raise ValueError(f"icon {name!r} has no name, alias or tag to caption it with.")
    return ", ".join(phrases)


def read_icons(archive: str | Path, include_deprecated: bool = False) -> list[dict]:
    """The icons of an ``@mdi/svg`` archive, sorted by name: name, caption and SVG text.

    Reads ``package/meta.json`` (a list of ``{"name", "aliases", "tags", "deprecated", ...}``) and
    ``package/svg/<name>.svg`` straight from the gzipped tar, without extracting it to disk.
    Deprecated icons are left out unless `include_deprecated`.
    """
    with tarfile.open(archive, "r:gz") as tar:
        members = {member.name: member for member in tar.getmembers() if member.isfile()}
        if "package/meta.json" not in members:
            raise ValueError(f"{archive} has no package/meta.json; is it an @mdi/svg archive?")
        meta = json.load(tar.extractfile(members["package/meta.json"]))
        icons = []
        for entry in meta:
            if entry.get("deprecated") and not include_deprecated:
                continue
            name = entry["name"]
            member = members.get(f"package/svg/{name}.svg")
            if member is None:
                raise ValueError(f"{archive}: meta.json lists icon {name!r} but package/svg/{name}.svg is missing.")
            icons.append(
                {
                    "name": name,
                    "caption": icon_caption(name, entry.get("aliases", []), entry.get("tags", [])),
                    "svg": tar.extractfile(member).read().decode("utf-8"),
                }
            )
    names = [icon["name"] for icon in icons]
    if len(set(names)) != len(names):
        raise ValueError(f"{archive}: meta.json lists an icon name twice.")
    return sorted(icons, key=lambda icon: icon["name"])


def render_svg(svg: str, image_size: int) -> Image.Image:
    """Render SVG markup to an `image_size` square RGB image on a white background (resvg)."""
    try:
        import resvg_py
    except ImportError as error:
        raise ImportError(
            "Rendering the icons needs resvg-py: pip install 'hf-unlearnable[benchmarks]' (or resvg-py)."
        ) from error
    png = resvg_py.svg_to_bytes(
        svg_string=svg, width=image_size, height=image_size, background="#ffffff", skip_system_fonts=True
    )
    image = Image.open(io.BytesIO(bytes(png)))
    image.load()
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BICUBIC)
    return image.convert("RGB")


def icon_family(name: str) -> str:
    """The icon's name without the word "outline": an icon and its outline variant share it."""
    return "-".join(word for word in name.split("-") if word != "outline") or name


def split_indices(
    count: int, test_size: int, seed: int = 0, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted train and test row indices from a seeded permutation.

    Without `groups` the permutation's first `test_size` rows are the test split. With `groups`
    (one label per row) whole groups are drawn in a seeded order until the test split holds at
    least `test_size` rows, so no group straddles the two splits.
    """
    if not 0 < test_size < count:
        raise ValueError(f"test_size must be between 1 and {count - 1} for {count} icons, got {test_size}.")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(count)
        return np.sort(order[test_size:]), np.sort(order[:test_size])
    if len(groups) != count:
        raise ValueError(f"groups has {len(groups)} labels for {count} rows; give one per row.")
    labels = np.asarray(groups)
    unique = np.unique(labels)
    chosen, size = [], 0
    for label in unique[rng.permutation(len(unique))]:
        if size >= test_size:
            break
        chosen.append(label)
        size += int((labels == label).sum())
    in_test = np.isin(labels, chosen)
    if in_test.all():
        raise ValueError(f"test_size={test_size} leaves no group for the train split; ask for fewer.")
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "name": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)


def build_dataset(
    archive: str | Path,
    image_size: int = 64,
    test_size: int = 1000,
    seed: int = 0,
    source: str = f"{PACKAGE}@{VERSION}",
    by_family: bool = True,
) -> datasets.DatasetDict:
    """The icons of `archive` as a ``DatasetDict`` with ``train``/``test`` splits (see the module doc).

    With `by_family` (default) an icon and its outline variant (``cog``, ``cog-outline``) land in
    the same split, so the test split does not reward recognising a training icon's twin.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    icons = read_icons(archive)
    groups = [icon_family(icon["name"]) for icon in icons] if by_family else None
    train_rows, test_rows = split_indices(len(icons), test_size, seed, groups)

    def split(rows: np.ndarray) -> datasets.Dataset:
        chosen = [icons[row] for row in rows]
        return datasets.Dataset.from_dict(
            {
                "image": [render_svg(icon["svg"], image_size) for icon in chosen],
                "caption": [icon["caption"] for icon in chosen],
                "name": [icon["name"] for icon in chosen],
                "source": [source] * len(chosen),
            },
            features=FEATURES,
        )

    return datasets.DatasetDict({"train": split(train_rows), "test": split(test_rows)})


def icon_tokenizer(captions: Sequence[str], vocab_size: int = 8000) -> transformers.CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer trained on `captions` (their words become whole tokens).

    Trained with the ``tokenizers`` library through ``train_new_from_iterator`` from the offline
    CLIP tokenizer of ``hf_unlearnable.testing`` (same normaliser, pre-tokeniser and special
    tokens), then given all 256 byte symbols with and without CLIP's end-of-word mark, so any text
    encodes without unknown tokens.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trained = clip_tokenizer().train_new_from_iterator(list(captions), vocab_size=vocab_size, initial_alphabet=alphabet)
    state = json.loads(trained.backend_tokenizer.to_str())
    vocab: dict[str, int] = dict(state["model"]["vocab"])
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in state["model"]["merges"]]
    bos, eos = trained.bos_token, trained.eos_token
    ordered = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1]) if token not in (bos, eos)]
    known = set(ordered)
    symbols = sorted(alphabet)
    ordered = [
        *[s for s in symbols if s not in known],
        *[s + "</w>" for s in symbols if s + "</w>" not in known],
        *ordered,
    ]
    ordered += [bos, eos]  # the last two ids, as in CLIP
    tokenizer = transformers.CLIPTokenizer(vocab={token: index for index, token in enumerate(ordered)}, merges=merges)
    tokenizer.model_max_length = 77
    return tokenizer


SPLIT_NOTES = {
    "family": "an icon and its outline variant are always in the same split",
    "icon": "icons drawn one by one, so an icon's outline twin may sit in the other split",
}


def dataset_card(dataset: datasets.DatasetDict, archive_sha256: str, image_size: int, seed: int, split: str) -> str:
    """The README.md written beside the saved data set: package, version, licence, SHA-256, recipe."""
    example = dataset["train"][0]
    return f"""# Material Design Icons as image-caption pairs

Built by `benchmarks/build_icon_dataset.py` of hf_unlearnable (format {BUILD_FORMAT}).

- Package: npm `{PACKAGE}` version `{VERSION}` (fetched with `npm pack {PACKAGE}@{VERSION}`)
- Archive SHA-256: `{archive_sha256}`
- Licence: {LICENSE}
- Icons: every non-deprecated icon of `meta.json`; {len(dataset["train"])} train, {len(dataset["test"])} test
  (a seeded permutation, seed {seed}; split by {split}: {SPLIT_NOTES[split]})
- Images: the icon's SVG rendered by resvg (`resvg-py`) at {image_size}x{image_size}, black glyph on
  white, RGB PNG
- Captions: the icon's name, aliases and category tags from `meta.json`, lower-cased, `-`, `/`,
  `+` as spaces, comma-separated, repeats dropped; nothing else. Example: `{example["caption"]}`
  (icon `{example["name"]}`)
- Columns: `image`, `caption`, `name`, `source` (`{PACKAGE}@{VERSION}`)
- `tokenizer/`: a CLIP BPE tokenizer trained on the train captions (byte-level: any text encodes)
"""


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for save_to_disk (replaced)")
    parser.add_argument("--image-size", type=int, default=64, help="rendered width and height in pixels")
    parser.add_argument(
        "--test-size", type=int, default=1000, help="icons in the test split (at least; a family split may add a few)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument(
        "--split",
        choices=("family", "icon"),
        default="family",
        help="family: an icon and its outline variant share a split (default); icon: rows drawn singly",
    )
    parser.add_argument("--archive", help="an already downloaded @mdi/svg archive (checked against the pinned SHA-256)")
    parser.add_argument("--cache", default="benchmarks/results/tmp/downloads", help="where npm pack puts the archive")
    arguments = parser.parse_args(argv)

    archive = Path(arguments.archive) if arguments.archive else Path(arguments.cache) / f"mdi-svg-{VERSION}.tgz"
    if not archive.is_file():
        if arguments.archive:
            raise SystemExit(f"--archive {archive} does not exist.")
        archive = download_archive(arguments.cache)
    archive_sha256 = verify_archive(archive)
    dataset = build_dataset(
        archive, arguments.image_size, arguments.test_size, arguments.seed, by_family=arguments.split == "family"
    )

    output = Path(arguments.output)
    save_with_card(
        dataset, dataset_card(dataset, archive_sha256, arguments.image_size, arguments.seed, arguments.split), output
    )
    print(
        f"{PACKAGE}@{VERSION}: {len(dataset['train'])} train, {len(dataset['test'])} test pairs at "
        f"{arguments.image_size} px",
        file=sys.stderr,
    )
    print(output)
    return output


def save_with_card(dataset: datasets.DatasetDict, card: str, output: Path) -> None:
    """``save_to_disk`` with the card (README.md) and a tokenizer of the training captions
    (``tokenizer/``), written to a staging folder first: ``output`` is replaced only once the new
    copy is complete."""
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent if output.parent.exists() else None))
    try:
        dataset.save_to_disk(str(staging / "data"))
        (staging / "data" / "README.md").write_text(card)
        icon_tokenizer(dataset["train"]["caption"]).save_pretrained(str(staging / "data" / "tokenizer"))
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            shutil.rmtree(output)
        shutil.move(str(staging / "data"), str(output))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
