"""`verify_protected`: does a protected copy keep every promise of its clean data set?"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..checks import check_dataset
from ..images import load_image, prepare_image, to_rgb, undecoded

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


def raw_rows(ds: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """Python-formatted rows with images as stored (bytes/paths), so decoding happens here, per row."""
    return undecoded(ds.with_format(None), image_column)


def nan_equal(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (a float column with missing values stays 'unchanged')."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[key], b[key]) for key in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _short(value: Any, width: int = 40) -> str:
    return textwrap.shorten(repr(value), width=width, placeholder="...")


def split_trigger(
    protected: str, clean: str, trigger_length: int, position: str = "start"
) -> tuple[str | None, str | None]:
    """(trigger words, problem): the trigger of a protected caption, or why it has none.

    A valid protected caption is exactly ``trigger_length`` space-separated words, one space, then
    the clean caption unchanged ("start"), or the clean caption with those words and one space
    inserted before one of its words or appended after its last ("random"). With
    ``trigger_length == 0`` (EM) it equals the clean caption.
    """
    if not isinstance(protected, str):
        return None, f"caption is a {type(protected).__name__}, expected a string"
    if trigger_length == 0:
        return ("", None) if protected == clean else (None, "caption changed (EM keeps captions unchanged)")
    if protected == clean:
        return None, "caption has no trigger (identical to the clean caption)"
    if position == "random":
        return _inserted_trigger(protected, clean, trigger_length)
    if not protected.endswith(clean):
        return None, f"caption does not end with its clean caption {_short(clean)}"
    prefix = protected[: len(protected) - len(clean)]
    if not (prefix.endswith(" ") and _is_words(prefix[:-1], trigger_length)):
        return None, f"trigger prefix {prefix!r} is not exactly {trigger_length} words followed by one space"
    return prefix[:-1], None


def _is_words(text: str, count: int) -> bool:
    words = text.split(" ")
    return len(words) == count and all(word and not any(ch.isspace() for ch in word) for word in words)


def _inserted_trigger(protected: str, clean: str, trigger_length: int) -> tuple[str | None, str | None]:
    """The words inserted into ``clean`` at a word boundary (``"w1 w2 "`` before a word, or
    ``" w1 w2"`` after the last), the leftmost boundary that explains ``protected``."""
    extra = len(protected) - len(clean)
    end = len(clean.rstrip())
    for boundary in [match.start() for match in re.finditer(r"\S+", clean)] + [end]:
        inserted = protected[boundary : boundary + extra]
        if protected[:boundary] != clean[:boundary] or protected[boundary + extra :] != clean[boundary:]:
            continue
        if boundary < end and inserted.endswith(" ") and _is_words(inserted[:-1], trigger_length):
            return inserted[:-1], None
        if boundary == end and inserted.startswith(" ") and _is_words(inserted[1:], trigger_length):
            return inserted[1:], None
    return (
        None,
        f"caption is not its clean caption {_short(clean)} with {trigger_length} trigger words inserted at a word boundary",
    )


def verify_protected(
    clean: datasets.Dataset,
    protected: datasets.Dataset,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = _DEFAULT_EPSILON,
    trigger_length: int = 3,
    trigger_position: str = "start",
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
    clean caption (``trigger_position="random"``: those words inserted at a word boundary of the
    clean caption); all captions of one image share the trigger; with ``tokenizer``, the trigger
    re-tokenises to ``trigger_length`` tokens at the trigger slots. Bad arguments (missing columns,
    epsilon out of range) raise ValueError/TypeError; broken promises are collected in the report.
    """
    for name, ds in (("clean", clean), ("protected", protected)):
        check_dataset(ds, image_column, caption_column, name=name, min_rows=0)
    if isinstance(trigger_length, bool) or not isinstance(trigger_length, int) or trigger_length < 0:
        raise ValueError(f"trigger_length={trigger_length!r} must be an integer >= 0 (0 = EM, no trigger).")
    if trigger_position not in ("start", "random"):
        raise ValueError(
            f'trigger_position={trigger_position!r} must be "start" or "random" (MEMConfig.trigger_position).'
        )
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive integer (pixels).")
    report = VerifyReport(
        clean_rows=len(clean),
        protected_rows=len(protected),
        allowed_levels=_levels(epsilon),
        trigger_length=trigger_length,
        image_size=image_size,
        max_violations=max_violations,
    )
    if len(clean) != len(protected):
        report.add(
            None,
            "rows",
            f"row count differs: clean has {len(clean)} rows, protected has {len(protected)}; rows must not be "
            "removed, added or reordered (the first rows that differ are named below)",
        )
    if clean.column_names != protected.column_names:
        report.add(None, "columns", f"columns differ: clean {clean.column_names}, protected {protected.column_names}")
    others = [c for c in clean.column_names if c in protected.column_names and c not in (image_column, caption_column)]
    for column in others:
        if clean.features[column] != protected.features[column]:
            report.add(
                None,
                "features",
                f"column {column!r} changed type: {clean.features[column]} -> {protected.features[column]}",
            )

    clean_raw, protected_raw = raw_rows(clean, image_column), raw_rows(protected, image_column)
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
                if not nan_equal(before, after):
                    report.add(row, "column", f"column {column!r} changed: {_short(before)} -> {_short(after)}")
            _check_image(report, row, clean_batch[image_column][offset], protected_batch[image_column][offset])
            triggers = _check_captions(
                report,
                row,
                clean_batch[caption_column][offset],
                protected_batch[caption_column][offset],
                trigger_length,
                trigger_position,
            )
            if tokenizer is not None and trigger_length and triggers:
                to_tokenize += [(row, trigger, caption) for trigger, caption in triggers[:1]]
        if to_tokenize:
            _check_tokens(report, to_tokenize, tokenizer, trigger_length, trigger_position)
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
        report.add(
            row,
            "image",
            f"protected image is stored as {stored}, not lossless PNG (the noise does not survive lossy codecs)",
        )
    height, width = protected.shape[:2]
    if report.image_size is None:
        if height != width:
            report.add(row, "image", f"protected image is {width}x{height}; the protect resolution is square")
            return
        report.image_size = width
    size = report.image_size
    if (height, width) != (size, size):
        report.add(
            row, "image", f"protected image is {width}x{height} px, expected {size}x{size} (the protect resolution)"
        )
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
            row,
            "budget",
            f"image differs from its clean base by {largest} levels (allowed {report.allowed_levels}) at pixel "
            f"(x={x}, y={y}), channel {'RGB'[channel]}; {over} pixel{'s' if over != 1 else ''} over budget",
        )


def _check_captions(
    report: VerifyReport, row: int, clean_value: Any, protected_value: Any, trigger_length: int, position: str = "start"
) -> list[tuple[str, str]]:
    """Check one row's caption(s); return (trigger, protected caption) of the valid ones."""
    clean_is_list, protected_is_list = (
        isinstance(clean_value, (list, tuple)),
        isinstance(protected_value, (list, tuple)),
    )
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
        trigger, problem = split_trigger(protected, clean, trigger_length, position)
        label = f"caption {index}: " if clean_is_list else ""
        if problem is not None:
            report.add(row, "trigger" if "trigger" in problem and trigger_length else "caption", label + problem)
        else:
            found.append((trigger, protected))
    if len({trigger for trigger, _ in found}) > 1:
        report.add(row, "trigger", f"captions of one image carry different triggers: {sorted({t for t, _ in found})}")
    return found


def _check_tokens(
    report: VerifyReport,
    items: list[tuple[int, str, str]],
    tokenizer: Any,
    trigger_length: int,
    position: str = "start",
) -> None:
    rows, triggers, captions = zip(*items)
    alone = tokenizer(list(triggers), add_special_tokens=False)["input_ids"]
    full = tokenizer(list(captions), truncation=position == "start", max_length=trigger_length + 2)["input_ids"]
    for row, trigger, ids, sequence in zip(rows, triggers, alone, full):
        ids, sequence = list(ids), list(sequence)
        if len(ids) != trigger_length:
            report.add(row, "trigger", f"trigger {trigger!r} tokenises to {len(ids)} tokens, expected {trigger_length}")
        elif position == "random" and not any(sequence[i : i + trigger_length] == ids for i in range(1, len(sequence))):
            report.add(
                row, "trigger", f"trigger {trigger!r} is not a run of its own tokens when the caption is tokenised"
            )
        elif position == "start" and sequence[1 : 1 + trigger_length] != ids:
            report.add(
                row, "trigger", f"trigger {trigger!r} does not sit at the trigger slots when the caption is tokenised"
            )
