"""Reports on a protected data set: check it against the clean one, show samples, tabulate rounds.

- `verify_protected(clean, protected)` checks the published copy keeps every promise (row count,
  other columns, image budget, triggers) and names each row that does not (`hf-unlearnable verify`).
- `sample_grid(clean, protected)` draws clean image, protected image, amplified noise and the
  triggered caption side by side, like Figures 3-4 of the MEM paper (`hf-unlearnable show`).
- `history_table(transform.history)` renders the per-round losses as Markdown or CSV.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm.auto import tqdm

from .checks import check_dataset
from .images import load_image, prepare_image, to_rgb, undecoded

__all__ = ["Violation", "VerifyReport", "verify_protected", "sample_grid", "history_table"]

_DEFAULT_EPSILON = 8 / 255
_LEVEL_TOLERANCE = 1e-6
_VERIFY_BATCH = 256


# ---------------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------------


@dataclass
class Violation:
    """One broken promise: ``row`` None means the whole data set (row count, columns, features)."""

    row: int | None
    check: str  # "rows", "columns", "features", "column", "image", "budget", "caption", "trigger"
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "data set"
        return f"{where} [{self.check}]: {self.message}"


@dataclass
class VerifyReport:
    """What `verify_protected` found. ``violations`` keeps the first ``max_violations``;
    ``violation_count`` counts them all."""

    clean_rows: int
    protected_rows: int
    allowed_levels: int
    trigger_length: int
    rows_checked: int = 0
    image_size: int | None = None
    max_level_difference: int = 0
    unchanged_images: int = 0
    violation_count: int = 0
    violations: list[Violation] = field(default_factory=list)
    max_violations: int = 1000

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def rows_with_violations(self) -> list[int]:
        """Rows named by the kept violations, sorted."""
        return sorted({v.row for v in self.violations if v.row is not None})

    def add(self, row: int | None, check: str, message: str) -> None:
        self.violation_count += 1
        if len(self.violations) < self.max_violations:
            self.violations.append(Violation(row, check, message))

    def summary(self, limit: int = 10) -> str:
        """Human-readable summary: rows checked, largest pixel change, the first ``limit`` violations."""
        size = f"{self.image_size}x{self.image_size}" if self.image_size else "n/a"
        lines = [
            f"checked {self.rows_checked} rows (clean {self.clean_rows}, protected {self.protected_rows}), "
            f"protected images {size} px, trigger length {self.trigger_length}",
            f"  max level difference: {self.max_level_difference}/255 (allowed {self.allowed_levels}/255); "
            f"{self.unchanged_images} images identical to their clean base",
        ]
        if self.ok:
            lines.append("  OK: no violations")
        else:
            rows = self.rows_with_violations
            shown = min(limit, len(self.violations))
            lines.append(
                f"  FAILED: {self.violation_count} violation{'s' if self.violation_count != 1 else ''}"
                + (f" in {len(rows)} row{'s' if len(rows) != 1 else ''}" if rows else "")
                + f" (first {shown} below)"
            )
            lines += [f"    {violation}" for violation in self.violations[:limit]]
        return "\n".join(lines)


def _levels(epsilon: float) -> int:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (0 < epsilon <= 1):
        raise ValueError(f"epsilon={epsilon!r} must be in (0, 1] (pixel space; 8/255 = {8 / 255:.7f}).")
    levels = int(math.floor(epsilon * 255 + _LEVEL_TOLERANCE))
    if levels < 1:
        raise ValueError(f"epsilon={epsilon!r} is below 1/255; no 8-bit image change fits that budget.")
    return levels


def _raw(ds: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """Python-formatted rows with images as stored (bytes/paths), so decoding happens here, per row."""
    return undecoded(ds.with_format(None), image_column)


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (a float column with missing values stays 'unchanged')."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _short(value: Any, width: int = 40) -> str:
    return textwrap.shorten(repr(value), width=width, placeholder="...")


def split_trigger(protected: str, clean: str, trigger_length: int) -> tuple[str | None, str | None]:
    """(trigger words, problem): the trigger of a protected caption, or why it has none.

    A valid protected caption is exactly ``trigger_length`` space-separated words, one space, then
    the clean caption unchanged. With ``trigger_length == 0`` (EM) it equals the clean caption.
    """
    if not isinstance(protected, str):
        return None, f"caption is a {type(protected).__name__}, expected a string"
    if trigger_length == 0:
        return ("", None) if protected == clean else (None, "caption changed (EM keeps captions unchanged)")
    if protected == clean:
        return None, "caption has no trigger (identical to the clean caption)"
    if not protected.endswith(clean):
        return None, f"caption does not end with its clean caption {_short(clean)}"
    prefix = protected[: len(protected) - len(clean)]
    words = prefix[:-1].split(" ") if prefix.endswith(" ") else []
    if len(words) != trigger_length or not all(word and not any(ch.isspace() for ch in word) for word in words):
        return None, f"trigger prefix {prefix!r} is not exactly {trigger_length} words followed by one space"
    return prefix[:-1], None


def verify_protected(
    clean: datasets.Dataset,
    protected: datasets.Dataset,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = _DEFAULT_EPSILON,
    trigger_length: int = 3,
    tokenizer: Any = None,
    image_size: int | None = None,
    max_violations: int = 1000,
    progress: bool | None = False,
) -> VerifyReport:
    """Check that ``protected`` is a faithful protected copy of ``clean``.

    Checks: same row count; same columns, features and values of every other column; each
    protected image decodes, is a PNG at the protect resolution (``image_size``, default: the first
    protected image's) and differs from its clean base (``prepare_image(clean, size)``) by at most
    ``floor(epsilon * 255)`` levels; each caption is ``trigger_length`` words, one space, then its
    clean caption; all captions of one image share the trigger; with ``tokenizer``, the trigger
    re-tokenises to ``trigger_length`` tokens at the trigger slots. Bad arguments (missing columns,
    epsilon out of range) raise ValueError/TypeError; broken promises are collected in the report.
    """
    for name, ds in (("clean", clean), ("protected", protected)):
        check_dataset(ds, image_column, caption_column, name=name, min_rows=0)
    if isinstance(trigger_length, bool) or not isinstance(trigger_length, int) or trigger_length < 0:
        raise ValueError(f"trigger_length={trigger_length!r} must be an integer >= 0 (0 = EM, no trigger).")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive integer (pixels).")
    report = VerifyReport(
        clean_rows=len(clean), protected_rows=len(protected), allowed_levels=_levels(epsilon),
        trigger_length=trigger_length, image_size=image_size, max_violations=max_violations,
    )
    if len(clean) != len(protected):
        report.add(
            None, "rows",
            f"row count differs: clean has {len(clean)} rows, protected has {len(protected)}; rows must not be "
            "removed, added or reordered (the first rows that differ are named below)",
        )
    if clean.column_names != protected.column_names:
        report.add(None, "columns", f"columns differ: clean {clean.column_names}, protected {protected.column_names}")
    others = [c for c in clean.column_names if c in protected.column_names and c not in (image_column, caption_column)]
    for column in others:
        if clean.features[column] != protected.features[column]:
            report.add(None, "features", f"column {column!r} changed type: {clean.features[column]} -> {protected.features[column]}")

    clean_raw, protected_raw = _raw(clean, image_column), _raw(protected, image_column)
    total = min(len(clean), len(protected))
    bar = tqdm(total=total, desc="Verifying rows", unit="row", disable=None if progress is None else not progress)
    for start in range(0, total, _VERIFY_BATCH):
        stop = min(start + _VERIFY_BATCH, total)
        clean_batch, protected_batch = clean_raw[start:stop], protected_raw[start:stop]
        to_tokenize: list[tuple[int, str, str]] = []
        for offset in range(stop - start):
            row = start + offset
            for column in others:
                before, after = clean_batch[column][offset], protected_batch[column][offset]
                if not _same(before, after):
                    report.add(row, "column", f"column {column!r} changed: {_short(before)} -> {_short(after)}")
            _check_image(report, row, clean_batch[image_column][offset], protected_batch[image_column][offset])
            triggers = _check_captions(
                report, row, clean_batch[caption_column][offset], protected_batch[caption_column][offset], trigger_length
            )
            if tokenizer is not None and trigger_length and triggers:
                to_tokenize += [(row, trigger, caption) for trigger, caption in triggers[:1]]
        if to_tokenize:
            _check_tokens(report, to_tokenize, tokenizer, trigger_length)
        report.rows_checked = stop
        bar.update(stop - start)
    bar.close()
    return report


def _check_image(report: VerifyReport, row: int, clean_value: Any, protected_value: Any) -> None:
    try:
        image = load_image(protected_value, row)
        stored = image.format
        protected = np.asarray(to_rgb(image), dtype=np.uint8)
    except (ValueError, TypeError, OSError) as error:
        report.add(row, "image", f"protected image does not decode: {error}")
        return
    if stored is not None and stored != "PNG":
        report.add(row, "image", f"protected image is stored as {stored}, not lossless PNG (the noise does not survive lossy codecs)")
    height, width = protected.shape[:2]
    if report.image_size is None:
        if height != width:
            report.add(row, "image", f"protected image is {width}x{height}; the protect resolution is square")
            return
        report.image_size = width
    size = report.image_size
    if (height, width) != (size, size):
        report.add(row, "image", f"protected image is {width}x{height} px, expected {size}x{size} (the protect resolution)")
        return
    try:
        base = prepare_image(clean_value, size, row)
    except (ValueError, TypeError) as error:
        report.add(row, "image", f"clean image: {error}")
        return
    difference = np.abs(protected.astype(np.int16) - base.astype(np.int16))
    largest = int(difference.max())
    report.max_level_difference = max(report.max_level_difference, largest)
    if largest == 0:
        report.unchanged_images += 1
    elif largest > report.allowed_levels:
        y, x, channel = np.unravel_index(int(difference.argmax()), difference.shape)
        over = int((difference.max(axis=2) > report.allowed_levels).sum())
        report.add(
            row, "budget",
            f"image differs from its clean base by {largest} levels (allowed {report.allowed_levels}) at pixel "
            f"(x={x}, y={y}), channel {'RGB'[channel]}; {over} pixel{'s' if over != 1 else ''} over budget",
        )


def _check_captions(
    report: VerifyReport, row: int, clean_value: Any, protected_value: Any, trigger_length: int
) -> list[tuple[str, str]]:
    """Check one row's caption(s); return (trigger, protected caption) of the valid ones."""
    clean_is_list, protected_is_list = isinstance(clean_value, (list, tuple)), isinstance(protected_value, (list, tuple))
    if clean_is_list != protected_is_list:
        kind = "a list" if protected_is_list else "a single caption"
        report.add(row, "caption", f"caption became {kind}; a list of captions must stay a list and a string a string")
        return []
    pairs = list(zip(protected_value, clean_value)) if clean_is_list else [(protected_value, clean_value)]
    if clean_is_list and len(protected_value) != len(clean_value):
        report.add(row, "caption", f"the row has {len(protected_value)} captions, its clean row {len(clean_value)}")
        return []
    found: list[tuple[str, str]] = []
    for index, (protected, clean) in enumerate(pairs):
        trigger, problem = split_trigger(protected, clean, trigger_length)
        label = f"caption {index}: " if clean_is_list else ""
        if problem is not None:
            report.add(row, "trigger" if "trigger" in problem and trigger_length else "caption", label + problem)
        else:
            found.append((trigger, protected))
    if len({trigger for trigger, _ in found}) > 1:
        report.add(row, "trigger", f"captions of one image carry different triggers: {sorted({t for t, _ in found})}")
    return found


def _check_tokens(report: VerifyReport, items: list[tuple[int, str, str]], tokenizer: Any, trigger_length: int) -> None:
    rows, triggers, captions = zip(*items)
    alone = tokenizer(list(triggers), add_special_tokens=False)["input_ids"]
    full = tokenizer(list(captions), truncation=True, max_length=trigger_length + 2)["input_ids"]
    for row, trigger, ids, sequence in zip(rows, triggers, alone, full):
        if len(ids) != trigger_length:
            report.add(row, "trigger", f"trigger {trigger!r} tokenises to {len(ids)} tokens, expected {trigger_length}")
        elif list(sequence[1 : 1 + trigger_length]) != list(ids):
            report.add(row, "trigger", f"trigger {trigger!r} does not sit at the trigger slots when the caption is tokenised")


# ---------------------------------------------------------------------------------------------------
# sample grid (Figures 3-4 of the MEM paper)
# ---------------------------------------------------------------------------------------------------

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
_TRIGGER = (200, 20, 30)
_TRIGGER_BACKGROUND = (255, 236, 180)


def _fonts(size: int) -> tuple[ImageFont.ImageFont, ImageFont.ImageFont, bool]:
    """(regular, bold, bold_is_real): DejaVu Sans from matplotlib when installed, else Pillow's own."""
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return (
            ImageFont.truetype(str(folder / "DejaVuSans.ttf"), size),
            ImageFont.truetype(str(folder / "DejaVuSans-Bold.ttf"), size),
            True,
        )
    except (ImportError, OSError):
        font = ImageFont.load_default(size=size)
        return font, font, False


def _clean_base(clean_value: Any, protected: np.ndarray, row: int) -> np.ndarray:
    height, width = protected.shape[:2]
    if height == width:
        return prepare_image(clean_value, width, row)
    image = to_rgb(load_image(clean_value, row))
    return np.asarray(ImageOps.fit(image, (width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def amplify_noise(noise: np.ndarray, amplify: float | None = None) -> tuple[np.ndarray, float]:
    """Noise as a viewable uint8 image: ``noise * factor + 128`` with factor ``127 / max|noise|``
    (full range) unless ``amplify`` is given. Returns (image, factor)."""
    largest = int(np.abs(noise).max()) if noise.size else 0
    factor = float(amplify) if amplify is not None else (127.0 / largest if largest else 1.0)
    shown = np.clip(np.round(noise.astype(np.float32) * factor + 128.0), 0, 255).astype(np.uint8)
    return shown, factor


def _layout_words(
    words: list[tuple[str, bool]], regular: ImageFont.ImageFont, bold: ImageFont.ImageFont, width: int, max_lines: int
) -> list[list[tuple[str, bool]]]:
    """Greedy word wrap by pixel width; the last kept line ends with an ellipsis when text was cut."""
    lines: list[list[tuple[str, bool]]] = [[]]
    used = 0.0
    space = regular.getlength(" ")
    for word, highlighted in words:
        font = bold if highlighted else regular
        length = font.getlength(word)
        if lines[-1] and used + space + length > width:
            lines.append([])
            used = 0.0
        used += (space if lines[-1] else 0) + length
        lines[-1].append((word, highlighted))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = [*lines[-1][:-1], ("...", False)]
    return lines


def sample_grid(
    clean_ds: datasets.Dataset,
    protected_ds: datasets.Dataset,
    rows: Sequence[int] | int = 4,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    image_size: int | None = None,
    amplify: float | None = None,
    path: str | Path | None = None,
) -> Image.Image:
    """A figure like Figures 3-4 of the MEM paper: per row, the clean image (resized and cropped like
    the protected one), the protected image, the noise amplified to the full range (or ``amplify``
    times) and the protected caption with its trigger words in bold red.

    ``rows``: row numbers, or a count of first rows. ``image_size``: display size of each image
    (default: small images are upscaled with NEAREST to at least 160 px, so 32 px noise stays
    visible). Saves a PNG to ``path`` when given; returns the PIL image.
    """
    for name, ds in (("clean_ds", clean_ds), ("protected_ds", protected_ds)):
        check_dataset(ds, image_column, caption_column, name=name, min_rows=0)
    available = min(len(clean_ds), len(protected_ds))
    if isinstance(rows, int) and not isinstance(rows, bool):
        if rows < 1:
            raise ValueError(f"rows={rows} must be at least 1 (or a list of row numbers).")
        chosen = list(range(min(rows, available)))
    else:
        chosen = [int(row) for row in rows]
        if not chosen:
            raise ValueError("rows is empty; pass row numbers or a count.")
    for row in chosen:
        if not 0 <= row < available:
            raise ValueError(f"row {row} is out of range: the data sets have {available} rows in common.")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size={image_size!r} must be an integer >= 8 (display pixels per image).")

    clean_raw, protected_raw = _raw(clean_ds, image_column), _raw(protected_ds, image_column)
    samples = []
    for row in chosen:
        protected = np.asarray(to_rgb(load_image(protected_raw[row][image_column], row)), dtype=np.uint8)
        base = _clean_base(clean_raw[row][image_column], protected, row)
        noise = protected.astype(np.int16) - base.astype(np.int16)
        shown, factor = amplify_noise(noise, amplify)
        samples.append(
            dict(row=row, clean=base, protected=protected, noise=shown, factor=factor, largest=int(np.abs(noise).max()),
                 protected_caption=protected_raw[row][caption_column], clean_caption=clean_raw[row][caption_column])
        )

    source = samples[0]["protected"].shape[0]
    tile = image_size or (source * math.ceil(160 / source) if source < 160 else min(source, 224))
    font_size = max(12, min(18, tile // 9))
    regular, bold, real_bold = _fonts(font_size)
    small, small_bold, _ = _fonts(max(10, font_size - 3))
    title_font, _, _ = _fonts(font_size + 2)
    margin, gap = 14, 12
    line_height = int(font_size * 1.35)
    small_height = int((font_size - 3) * 1.5)
    caption_width = max(320, int(tile * 2.2))
    max_lines = max(3, (tile + small_height) // line_height)
    header_height = line_height + 8
    title_height = line_height + 6

    def caption_words(sample: dict) -> tuple[list[tuple[str, bool]], str | None]:
        protected, clean = sample["protected_caption"], sample["clean_caption"]
        extra = None
        if isinstance(protected, (list, tuple)):
            extra = f"(+{len(protected) - 1} more caption{'s' if len(protected) != 2 else ''}, same trigger)" if len(protected) > 1 else None
            protected = protected[0] if protected else ""
            clean = clean[0] if isinstance(clean, (list, tuple)) and clean else clean
        protected = str(protected)
        if isinstance(clean, str) and clean and protected.endswith(clean) and protected != clean:
            trigger, body = protected[: len(protected) - len(clean)], clean
        else:
            trigger, body = "", protected
        return [(w, True) for w in trigger.split()] + [(w, False) for w in body.split()], extra

    laid_out = []
    for sample in samples:
        words, extra = caption_words(sample)
        lines = _layout_words(words, regular, bold, caption_width, max_lines)
        laid_out.append((lines, extra))
    row_heights = [
        max(tile + small_height, len(lines) * line_height + (small_height if extra else 0) + small_height)
        for lines, extra in laid_out
    ]
    scale_note = f"images enlarged x{tile / source:g}, nearest" if tile != source else "images at native size"
    title = f"Clean vs protected ({scale_note}); trigger words in bold red"
    width = max(margin * 2 + 3 * tile + 3 * gap + caption_width, margin * 2 + int(title_font.getlength(title)) + 1)
    height = margin * 2 + title_height + header_height + sum(row_heights) + gap * (len(samples) - 1)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    draw.text((margin, margin), title, font=title_font, fill=_TEXT)
    top = margin + title_height
    column_x = [margin + i * (tile + gap) for i in range(4)]
    noise_title = "noise" if amplify is None else f"noise x{amplify:g}"
    for index, (x, text) in enumerate(zip(column_x, ("clean", "protected", noise_title, "caption"))):
        font = bold if index == 3 or bold.getlength(text) <= tile + gap // 2 else small_bold
        draw.text((x, top), text, font=font, fill=_TEXT)
    top += header_height

    def paste(array: np.ndarray, x: int, y: int) -> None:
        image = Image.fromarray(array)
        resample = Image.Resampling.NEAREST if tile >= image.width else Image.Resampling.LANCZOS
        canvas.paste(image.resize((tile, tile), resample), (x, y))

    for sample, (lines, extra), row_height in zip(samples, laid_out, row_heights):
        paste(sample["clean"], column_x[0], top)
        paste(sample["protected"], column_x[1], top)
        paste(sample["noise"], column_x[2], top)
        below = top + tile + 2
        labels = (
            (f"row {sample['row']}", str(sample["row"])),
            (f"max |noise| {sample['largest']}/255", f"|noise| {sample['largest']}", f"{sample['largest']}/255"),
            (f"shown x{sample['factor']:.3g}", f"x{sample['factor']:.3g}"),
        )
        for x, variants in zip(column_x, labels):
            # the longest label that fits under its image
            label = next((text for text in variants if small.getlength(text) <= tile + gap // 2), variants[-1])
            draw.text((x, below), label, font=small, fill=_MUTED)
        y = top
        for line in lines:
            x = float(column_x[3])
            for index, (word, highlighted) in enumerate(line):
                font = bold if highlighted else regular
                if index:
                    x += regular.getlength(" ")
                length = font.getlength(word)
                if highlighted:
                    draw.rectangle((x - 1, y, x + length + 1, y + line_height - 2), fill=_TRIGGER_BACKGROUND)
                    draw.text((x, y), word, font=font, fill=_TRIGGER, stroke_width=0 if real_bold else 1, stroke_fill=_TRIGGER)
                else:
                    draw.text((x, y), word, font=font, fill=_TEXT)
                x += length
            y += line_height
        if extra:
            draw.text((column_x[3], y), extra, font=small, fill=_MUTED)
        top += row_height + gap
    if path is not None:
        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path, format="PNG")
    return canvas


# ---------------------------------------------------------------------------------------------------
# history table
# ---------------------------------------------------------------------------------------------------

_PREFERRED = ("round", "surrogate_loss", "protected_loss", "clean_loss", "seconds")


def history_table(history: Sequence[dict[str, Any]], format: str = "markdown") -> str:
    """``transform.history`` (one dict per MEM round) as a Markdown table or CSV text.

    Columns: round, surrogate_loss, protected_loss, clean_loss, seconds, then any other keys in the
    order they first appear. Markdown rounds losses to 4 decimals and seconds to 1; CSV keeps full
    precision.
    """
    if format not in ("markdown", "csv"):
        raise ValueError(f"format={format!r} must be 'markdown' or 'csv'.")
    records = list(history)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"history[{index}] is a {type(record).__name__}; expected a dict (transform.history).")
    seen = [key for record in records for key in record]
    columns = [key for key in _PREFERRED if key in seen] + list(dict.fromkeys(k for k in seen if k not in _PREFERRED))
    if not columns:
        columns = list(_PREFERRED)
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({key: record.get(key, "") for key in columns})
        return buffer.getvalue()

    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if key == "seconds" else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(key, record.get(key)) for key in columns) + " |" for record in records]
    return "\n".join(lines) + "\n"
