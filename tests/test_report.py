"""report.py: verify a protected copy against its clean data set, the sample grid, the history table.

The tamper helpers at the top are also used by tests/test_cli.py.
"""

from __future__ import annotations

import csv
import io

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_unlearnable.images import decode_png, encode_png, prepare_image
from hf_unlearnable.report import (
    VerifyReport,
    amplify_noise,
    history_table,
    sample_grid,
    split_trigger,
    verify_protected,
)
from hf_unlearnable.testing import synthetic_captions

from .conftest import FAST_CONFIG

K = FAST_CONFIG.trigger_length


# ------------------------------------------------------------------------------------ tamper helpers
def edit_rows(ds: datasets.Dataset, column: str, edits: dict[int, object]) -> datasets.Dataset:
    """A copy of ``ds`` with ``column`` replaced at the given rows (images as stored bytes)."""
    raw = (
        ds.cast_column("image", datasets.Image(decode=False))
        if isinstance(ds.features["image"], datasets.Image)
        else ds
    )
    data = raw.to_dict()
    for row, value in edits.items():
        data[column][row] = value(data[column][row]) if callable(value) else value
    return datasets.Dataset.from_dict(data, features=raw.features).cast_column("image", datasets.Image())


def shift_one_pixel(stored: dict, delta: int = 20) -> dict:
    """The stored PNG with one channel of one pixel raised by ``delta`` levels (no clipping)."""
    pixels = decode_png(stored["bytes"]).copy()
    y, x = np.argwhere(pixels[:, :, 0] <= 255 - delta)[0]
    pixels[y, x, 0] += delta
    return {"bytes": encode_png(pixels), "path": None}


def drop_trigger(caption: str) -> str:
    return caption.split(" ", K)[K]


def tamper_pixel(ds, row):
    return edit_rows(ds, "image", {row: shift_one_pixel})


def tamper_remove_row(ds, row):
    return ds.select([i for i in range(len(ds)) if i != row])


def tamper_note(ds, row):
    return edit_rows(ds, "note", {row: "changed"})


def tamper_trigger(ds, row):
    return edit_rows(ds, "caption", {row: drop_trigger})


TAMPERINGS = {"pixel": tamper_pixel, "removed": tamper_remove_row, "column": tamper_note, "trigger": tamper_trigger}


def handmade_protected(clean: datasets.Dataset, triggers: list[str], levels: int = 3) -> datasets.Dataset:
    """A protected copy built by hand: +-levels of noise on the clean base, trigger words on every caption."""
    raw = clean.cast_column("image", datasets.Image(decode=False))
    rng = np.random.default_rng(0)
    images, captions = [], []
    for row, (value, caption, trigger) in enumerate(zip(raw["image"], raw["caption"], triggers)):
        base = prepare_image(value, 32, row)
        noise = rng.integers(-levels, levels + 1, size=base.shape)
        images.append({"bytes": encode_png((base.astype(np.int16) + noise).clip(0, 255)), "path": None})
        prefix = f"{trigger} " if trigger else ""
        captions.append([prefix + text for text in caption] if isinstance(caption, list) else prefix + caption)
    data = raw.to_dict()
    data["image"], data["caption"] = images, captions
    return datasets.Dataset.from_dict(data, features=raw.features).cast_column("image", datasets.Image())


# ------------------------------------------------------------------------------------ verify
def test_a_fitted_copy_passes_every_check(fitted, dataset):
    transform, protected = fitted
    report = verify_protected(dataset, protected, trigger_length=K, tokenizer=transform.tokenizer)
    assert report.ok, report.summary()
    assert (report.rows_checked, report.image_size, report.allowed_levels) == (len(dataset), 32, 8)
    assert report.max_level_difference == FAST_CONFIG.epsilon_levels
    assert "OK: no violations" in report.summary()


@pytest.mark.parametrize("kind, check", [("pixel", "budget"), ("column", "column"), ("trigger", "trigger")])
def test_each_tampering_names_its_row(fitted, dataset, kind, check):
    _, protected = fitted
    report = verify_protected(dataset, TAMPERINGS[kind](protected, 7), trigger_length=K)
    assert not report.ok
    assert report.rows_with_violations == [7]
    assert [v.check for v in report.violations] == [check]
    assert "row 7" in report.summary()


def test_pixel_tampering_reports_the_size_of_the_change(fitted, dataset):
    _, protected = fitted
    report = verify_protected(dataset, tamper_pixel(protected, 3))
    assert report.max_level_difference > 8
    assert "allowed 8" in report.violations[0].message and "1 pixel over budget" in report.violations[0].message


def test_a_removed_row_is_found_where_the_rows_shift(fitted, dataset):
    _, protected = fitted
    report = verify_protected(dataset, tamper_remove_row(protected, 30))
    assert report.violations[0].row is None and report.violations[0].check == "rows"
    assert "clean has 48 rows, protected has 47" in report.violations[0].message
    assert report.rows_with_violations[0] == 30


def test_lossy_reencoding_is_a_violation(fitted, dataset):
    _, protected = fitted
    raw = protected.cast_column("image", datasets.Image(decode=False))
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw[5]["image"]["bytes"])).save(buffer, format="JPEG", quality=60)
    report = verify_protected(dataset, edit_rows(protected, "image", {5: {"bytes": buffer.getvalue(), "path": None}}))
    assert report.rows_with_violations == [5]
    assert any("JPEG, not lossless PNG" in v.message for v in report.violations)


def test_a_smaller_budget_and_a_wrong_trigger_length_fail(fitted, dataset):
    _, protected = fitted
    tight = verify_protected(dataset, protected, epsilon=4 / 255)
    assert not tight.ok and {v.check for v in tight.violations} == {"budget"}
    longer = verify_protected(dataset, protected, trigger_length=K + 1)
    assert longer.violation_count == len(dataset) and {v.check for v in longer.violations} == {"trigger"}


def test_changed_columns_and_types_are_named(fitted, dataset):
    _, protected = fitted
    report = verify_protected(dataset, protected.remove_columns(["note"]))
    assert [v.check for v in report.violations] == ["columns"]
    cast = protected.cast_column("row_id", datasets.Value("int32"))
    assert [v.check for v in verify_protected(dataset, cast).violations] == ["features"]


def test_tokenizer_check_catches_a_trigger_that_splits_into_several_tokens(fitted, dataset):
    transform, protected = fitted
    # "zqxv" is no word of the tiny tokenizer: it splits into several tokens, so it is no valid trigger word
    edited = edit_rows(protected, "caption", {2: lambda c: "zqxv " + c.split(" ", 1)[1]})
    assert verify_protected(dataset, edited).ok  # the text shape alone is fine
    report = verify_protected(dataset, edited, tokenizer=transform.tokenizer)
    assert report.rows_with_violations == [2] and "tokenises to" in report.violations[0].message


def test_caption_lists_share_one_trigger_per_image():
    clean = synthetic_captions(6, image_size=32, seed=1, captions_per_image=2)
    triggers = ["red fox lamp", "blue owl ring", "cat dog sun", "sea sky tree", "one two three", "ice hot cold"]
    protected = handmade_protected(clean, triggers)
    assert verify_protected(clean, protected, epsilon=3 / 255).ok
    mixed = edit_rows(protected, "caption", {4: lambda texts: [texts[0], "other " + texts[1].split(" ", 1)[1]]})
    report = verify_protected(clean, mixed)
    assert report.rows_with_violations == [4] and "different triggers" in report.violations[0].message
    removed = edit_rows(protected, "caption", {1: lambda texts: [texts[0], drop_trigger(texts[1])]})
    assert "caption 1: caption has no trigger" in str(verify_protected(clean, removed).violations[0])


def test_em_keeps_captions_unchanged():
    clean = synthetic_captions(4, image_size=32, seed=2)
    protected = handmade_protected(clean, [""] * 4)
    assert verify_protected(clean, protected, trigger_length=0).ok
    assert verify_protected(clean, protected, trigger_length=3).violation_count == 4


def test_split_trigger_rules():
    assert split_trigger("a b c the cat", "the cat", 3) == ("a b c", None)
    assert split_trigger("a  b the cat", "the cat", 3)[1].startswith("trigger prefix")  # a double space is no word
    assert split_trigger("a b cthe cat", "the cat", 3)[1].startswith("trigger prefix")
    assert "does not end" in split_trigger("a b c the dog", "the cat", 3)[1]
    assert "no trigger" in split_trigger("the cat", "the cat", 3)[1]


def test_bad_arguments_raise_and_the_violation_list_is_capped(fitted, dataset):
    _, protected = fitted
    with pytest.raises(ValueError, match="caption_column='text'"):
        verify_protected(dataset, protected, caption_column="text")
    with pytest.raises(ValueError, match="epsilon=2"):
        verify_protected(dataset, protected, epsilon=2)
    with pytest.raises(TypeError, match="DatasetDict"):
        verify_protected(datasets.DatasetDict({"train": dataset}), protected)
    report = verify_protected(dataset, protected, epsilon=1 / 255, max_violations=5)
    assert isinstance(report, VerifyReport) and len(report.violations) == 5 and report.violation_count > 5
    assert "first 3 below" in report.summary(limit=3)


# ------------------------------------------------------------------------------------ sample grid
def find_tile(canvas: np.ndarray, tile: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner of an exact copy of ``tile`` inside ``canvas``, or None."""
    height, width = tile.shape[:2]
    limit_y, limit_x = canvas.shape[0] - height + 1, canvas.shape[1] - width + 1
    candidates = np.all(canvas[:limit_y, :limit_x] == tile[0, 0], axis=-1)
    for y, x in [(height // 2, width // 3), (height - 1, width - 1), (3, width - 2), (height // 3, 1)]:
        candidates &= np.all(canvas[y : y + limit_y, x : x + limit_x] == tile[y, x], axis=-1)
    for y, x in np.argwhere(candidates):
        if np.array_equal(canvas[y : y + height, x : x + width], tile):
            return int(y), int(x)
    return None


def trigger_coloured(pixels: np.ndarray) -> int:
    """Pixels in the trigger colour (bold red text)."""
    return int(np.all(np.abs(pixels.astype(int) - (200, 20, 30)) < 40, axis=-1).sum())


def test_grid_shows_clean_protected_and_amplified_noise(fitted, dataset, tmp_path):
    _, protected = fitted
    grid = sample_grid(dataset, protected, [0, 9], path=tmp_path / "grid.png")
    canvas = np.asarray(grid)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), canvas)
    raw_clean = dataset.cast_column("image", datasets.Image(decode=False))
    raw_protected = protected.cast_column("image", datasets.Image(decode=False))
    scale = 5  # 32 px images are shown at 160 px with NEAREST, so every pixel is a 5x5 block
    corners = []
    for row in (0, 9):
        base = prepare_image(raw_clean[row]["image"], 32, row)
        saved = decode_png(raw_protected[row]["image"]["bytes"])
        noise, factor = amplify_noise(saved.astype(np.int16) - base.astype(np.int16))
        assert factor == pytest.approx(127 / 8) and noise.min() == 128 - 127 and noise.max() == 128 + 127
        for tile in (base, saved, noise):
            corner = find_tile(canvas, tile.repeat(scale, 0).repeat(scale, 1))
            assert corner is not None, f"row {row}: tile not found"
            corners.append(corner)
    # three tiles side by side per sample, the second sample below the first
    assert corners[0][0] == corners[1][0] == corners[2][0] < corners[3][0]
    assert corners[0][1] < corners[1][1] < corners[2][1]
    # trigger words drawn in the highlight colour, caption text to the right of the images
    caption_area = canvas[:, corners[2][1] + 32 * scale :]
    assert trigger_coloured(caption_area) > 50


def test_grid_options_and_errors(fitted, dataset):
    _, protected = fitted
    two = sample_grid(dataset, protected, 2, image_size=64, amplify=4)
    four = sample_grid(dataset, protected, 4, image_size=64, amplify=4)
    assert four.height > two.height and four.width == two.width
    em = handmade_protected(synthetic_captions(3, image_size=32, seed=2), [""] * 3)
    plain = np.asarray(sample_grid(synthetic_captions(3, image_size=32, seed=2), em, 3))
    assert trigger_coloured(plain[:, 14 + 3 * (160 + 12) :]) == 0  # no trigger, no highlight in the caption column
    with pytest.raises(ValueError, match="row 48 is out of range"):
        sample_grid(dataset, protected, [1, 48])
    with pytest.raises(ValueError, match="caption_column='text'"):
        sample_grid(dataset, protected, caption_column="text")


def wide_protected(clean: datasets.Dataset) -> datasets.Dataset:
    """A protected copy whose images are 48 x 32 (the clean ones are fitted to that shape for the grid)
    and whose captions run past the lines a row has (the last one ends in an ellipsis)."""
    raw = clean.cast_column("image", datasets.Image(decode=False))
    rng = np.random.default_rng(1)
    data = raw.to_dict()
    images = []
    for value in raw["image"]:
        base = np.asarray(Image.open(io.BytesIO(value["bytes"])).convert("RGB").resize((48, 32)), dtype=np.int16)
        images.append({"bytes": encode_png((base + rng.integers(-5, 6, size=base.shape)).clip(0, 255)), "path": None})
    data["image"] = images
    data["caption"] = [
        "one two three four five six seven " + caption + " and more words" * 12 for caption in raw["caption"]
    ]
    return datasets.Dataset.from_dict(data, features=raw.features).cast_column("image", datasets.Image())


#: where the grid digests were taken: the PNG bytes depend on Pillow, its zlib and FreeType, and the font
GRID_CAPTURED = {"pillow": "13.0.0", "zlib": "1.2.13", "freetype2": "2.14.3", "matplotlib": "3.11.2"}


def test_grid_png_bytes_are_those_of_the_reference_figures(tmp_path):
    """Three fixed figures (triggers and an untriggered row; caption lists, image_size and amplify; images that
    are not square, shrunk with LANCZOS, captions cut with an ellipsis) give the PNG bytes they always gave."""
    import hashlib

    import matplotlib
    import PIL
    from PIL import features

    here = {
        "pillow": PIL.__version__,
        "zlib": features.version("zlib"),
        "freetype2": features.version("freetype2"),
        "matplotlib": matplotlib.__version__,
    }
    if here != GRID_CAPTURED:
        pytest.skip(f"digests were taken with {GRID_CAPTURED}; this is {here}")
    clean = synthetic_captions(3, image_size=32, seed=2)
    listed = synthetic_captions(2, image_size=32, seed=4, captions_per_image=3)
    figures = {
        "triggers": (clean, handmade_protected(clean, ["alpha beta", "", "delta epsilon zeta"]), 3, {}),
        "lists": (listed, handmade_protected(listed, ["kappa", "lambda mu"]), [1, 0], dict(image_size=64, amplify=4)),
        "wide": (clean, wide_protected(clean), [2, 0], dict(image_size=24)),
    }
    found = {}
    for name, (clean_ds, protected_ds, rows, options) in figures.items():
        grid = sample_grid(clean_ds, protected_ds, rows, path=tmp_path / name / f"{name}.png", **options)
        written = (tmp_path / name / f"{name}.png").read_bytes()
        found[name] = (grid.size, hashlib.sha256(written).hexdigest()[:16])
    assert found == {
        "triggers": ((896, 653), "9c8878a6620cd4bc"),
        "lists": ((576, 266), "dcd884b774dabf9c"),
        "wide": ((581, 208), "38dc3103e2e4e8c2"),
    }


def test_amplify_noise_formula():
    noise = np.array([[[-2, 0, 4]]], dtype=np.int16)
    shown, factor = amplify_noise(noise)
    assert factor == pytest.approx(127 / 4) and shown.tolist() == [[[round(128 - 254 / 4), 128, 255]]]
    assert amplify_noise(noise, 10)[0].tolist() == [[[108, 128, 168]]]
    assert amplify_noise(np.zeros((1, 1, 3), np.int16))[0].tolist() == [[[128, 128, 128]]]


# ------------------------------------------------------------------------------------ history table
def test_history_table_markdown_and_csv(fitted):
    transform, _ = fitted
    history = transform.history
    markdown = history_table(history)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| round | stage | surrogate_loss | protected_loss | clean_loss | seconds | surrogate_seconds |"
    assert len(lines) == len(history) + 2
    assert f"| {history[-1]['round']} | {history[-1]['stage']} | {history[-1]['surrogate_loss']:.4f} |" in lines[-1]
    parsed = list(csv.DictReader(io.StringIO(history_table(history, format="csv"))))
    assert [int(row["round"]) for row in parsed] == [record["round"] for record in history]
    assert [float(row["clean_loss"]) for row in parsed] == [
        record["clean_loss"] for record in history
    ]  # full precision


def test_history_table_edge_cases():
    assert history_table([]).splitlines()[0].startswith("| round |")
    table = history_table([{"round": 1, "seconds": 2.25, "note": "a|b"}, {"round": 2, "extra": None}])
    assert table.splitlines()[0] == "| round | seconds | note | extra |"
    assert "a\\|b" in table and "| 2.2 |" in table
    with pytest.raises(ValueError, match="format='json'"):
        history_table([], format="json")
    with pytest.raises(TypeError, match=r"history\[0\]"):
        history_table([1])
