"""`sample_grid`: clean image, protected image, amplified noise and triggered caption side by side.

Three steps: `check_rows` and `read_samples` read the rows (a `GridSample` each), `draw_grid` builds
the figure (sizes and fonts in `GridLayout`), `save_png` writes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..checks import check_dataset
from ..images import load_image, prepare_image, to_rgb
from .verify import raw_rows

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


@dataclasses.dataclass
class GridSample:
    """One row of the figure: the images as shown and the captions as stored."""

    row: int
    clean: np.ndarray  # uint8 (H, W, 3), resized and cropped like the protected image
    protected: np.ndarray  # uint8 (H, W, 3)
    noise: np.ndarray  # uint8 (H, W, 3), amplified around 128
    factor: float  # the amplification shown
    largest: int  # max |protected - clean| in levels
    protected_caption: Any
    clean_caption: Any


def check_rows(
    clean_ds: datasets.Dataset,
    protected_ds: datasets.Dataset,
    rows: Sequence[int] | int,
    image_column: str,
    caption_column: str,
    image_size: int | None,
) -> list[int]:
    """The row numbers to show, after checking both data sets and the options (ValueError naming the bad one)."""
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
    return chosen


def read_samples(
    clean_ds: datasets.Dataset,
    protected_ds: datasets.Dataset,
    rows: list[int],
    image_column: str,
    caption_column: str,
    amplify: float | None,
) -> list[GridSample]:
    """Each row's clean base, protected image, amplified noise and both captions."""
    clean_raw, protected_raw = raw_rows(clean_ds, image_column), raw_rows(protected_ds, image_column)
    samples = []
    for row in rows:
        protected = np.asarray(to_rgb(load_image(protected_raw[row][image_column], row)), dtype=np.uint8)
        base = _clean_base(clean_raw[row][image_column], protected, row)
        noise = protected.astype(np.int16) - base.astype(np.int16)
        shown, factor = amplify_noise(noise, amplify)
        samples.append(
            GridSample(
                row=row,
                clean=base,
                protected=protected,
                noise=shown,
                factor=factor,
                largest=int(np.abs(noise).max()),
                protected_caption=protected_raw[row][caption_column],
                clean_caption=clean_raw[row][caption_column],
            )
        )
    return samples


def caption_words(sample: GridSample) -> tuple[list[tuple[str, bool]], str | None]:
    """The first protected caption as (word, is_trigger) pairs (the trigger: what precedes the clean
    caption), and a note on further captions of a list (None for a single caption)."""
    protected, clean = sample.protected_caption, sample.clean_caption
    extra = None
    if isinstance(protected, (list, tuple)):
        extra = (
            f"(+{len(protected) - 1} more caption{'s' if len(protected) != 2 else ''}, same trigger)"
            if len(protected) > 1
            else None
        )
        protected = protected[0] if protected else ""
        clean = clean[0] if isinstance(clean, (list, tuple)) and clean else clean
    protected = str(protected)
    if isinstance(clean, str) and clean and protected.endswith(clean) and protected != clean:
        trigger, body = protected[: len(protected) - len(clean)], clean
    else:
        trigger, body = "", protected
    return [(w, True) for w in trigger.split()] + [(w, False) for w in body.split()], extra


class GridLayout:
    """Sizes and fonts of the figure, from the images' side and the requested display size."""

    margin, gap = 14, 12

    def __init__(self, source: int, image_size: int | None):
        self.source = source
        self.tile = image_size or (source * math.ceil(160 / source) if source < 160 else min(source, 224))
        font_size = max(12, min(18, self.tile // 9))
        self.regular, self.bold, self.real_bold = _fonts(font_size)
        self.small, self.small_bold, _ = _fonts(max(10, font_size - 3))
        self.title_font, _, _ = _fonts(font_size + 2)
        self.line_height = int(font_size * 1.35)
        self.small_height = int((font_size - 3) * 1.5)
        self.caption_width = max(320, int(self.tile * 2.2))
        self.max_lines = max(3, (self.tile + self.small_height) // self.line_height)
        self.header_height = self.line_height + 8
        self.title_height = self.line_height + 6
        self.column_x = [self.margin + i * (self.tile + self.gap) for i in range(4)]

    def row_height(self, lines: list, extra: str | None) -> int:
        """A sample's height: its images and labels, or its caption lines and note if taller."""
        return max(
            self.tile + self.small_height,
            len(lines) * self.line_height + (self.small_height if extra else 0) + self.small_height,
        )


def draw_grid(samples: list[GridSample], image_size: int | None, amplify: float | None) -> Image.Image:
    """The figure: a title, column headers, and per sample its three images, their labels and the caption."""
    layout = GridLayout(samples[0].protected.shape[0], image_size)
    tile, margin, gap = layout.tile, layout.margin, layout.gap
    laid_out = []
    for sample in samples:
        words, extra = caption_words(sample)
        laid_out.append(
            (_layout_words(words, layout.regular, layout.bold, layout.caption_width, layout.max_lines), extra)
        )
    row_heights = [layout.row_height(lines, extra) for lines, extra in laid_out]
    scale_note = (
        f"images enlarged x{tile / layout.source:g}, nearest" if tile != layout.source else "images at native size"
    )
    title = f"Clean vs protected ({scale_note}); trigger words in bold red"
    width = max(
        margin * 2 + 3 * tile + 3 * gap + layout.caption_width, margin * 2 + int(layout.title_font.getlength(title)) + 1
    )
    height = margin * 2 + layout.title_height + layout.header_height + sum(row_heights) + gap * (len(samples) - 1)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    draw.text((margin, margin), title, font=layout.title_font, fill=_TEXT)
    top = margin + layout.title_height
    noise_title = "noise" if amplify is None else f"noise x{amplify:g}"
    for index, (x, text) in enumerate(zip(layout.column_x, ("clean", "protected", noise_title, "caption"))):
        font = layout.bold if index == 3 or layout.bold.getlength(text) <= tile + gap // 2 else layout.small_bold
        draw.text((x, top), text, font=font, fill=_TEXT)
    top += layout.header_height
    for sample, (lines, extra), row_height in zip(samples, laid_out, row_heights):
        _draw_sample(canvas, draw, layout, sample, lines, extra, top)
        top += row_height + gap
    return canvas


def _draw_sample(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    layout: GridLayout,
    sample: GridSample,
    lines: list,
    extra: str | None,
    top: int,
) -> None:
    """One sample at height `top`: clean, protected and noise tiles with their labels, then the caption."""
    tile, column_x, small = layout.tile, layout.column_x, layout.small
    for array, x in zip((sample.clean, sample.protected, sample.noise), column_x):
        image = Image.fromarray(array)
        resample = Image.Resampling.NEAREST if tile >= image.width else Image.Resampling.LANCZOS
        canvas.paste(image.resize((tile, tile), resample), (x, top))
    below = top + tile + 2
    labels = (
        (f"row {sample.row}", str(sample.row)),
        (f"max |noise| {sample.largest}/255", f"|noise| {sample.largest}", f"{sample.largest}/255"),
        (f"shown x{sample.factor:.3g}", f"x{sample.factor:.3g}"),
    )
    for x, variants in zip(column_x, labels):
        # the longest label that fits under its image
        label = next((text for text in variants if small.getlength(text) <= tile + layout.gap // 2), variants[-1])
        draw.text((x, below), label, font=small, fill=_MUTED)
    y = top
    for line in lines:
        x = float(column_x[3])
        for index, (word, highlighted) in enumerate(line):
            font = layout.bold if highlighted else layout.regular
            if index:
                x += layout.regular.getlength(" ")
            length = font.getlength(word)
            if highlighted:
                draw.rectangle((x - 1, y, x + length + 1, y + layout.line_height - 2), fill=_TRIGGER_BACKGROUND)
                stroke = 0 if layout.real_bold else 1
                draw.text((x, y), word, font=font, fill=_TRIGGER, stroke_width=stroke, stroke_fill=_TRIGGER)
            else:
                draw.text((x, y), word, font=font, fill=_TEXT)
            x += length
        y += layout.line_height
    if extra:
        draw.text((column_x[3], y), extra, font=small, fill=_MUTED)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write `image` as PNG to `path`, creating its folder."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


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
    chosen = check_rows(clean_ds, protected_ds, rows, image_column, caption_column, image_size)
    samples = read_samples(clean_ds, protected_ds, chosen, image_column, caption_column, amplify)
    canvas = draw_grid(samples, image_size, amplify)
    if path is not None:
        save_png(canvas, path)
    return canvas
