"""Synthetic captioned scenes: coloured, textured shapes on a textured background, each described
in plain English.

A small CLIP trained from scratch on them learns real image-text alignment that protection must
then break. Row ``i`` depends only on (seed, ``i``), so the data set, and the figures measured on
it, are the same on every machine.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUNDS",
    "CAPTION_WORDS",
    "COLOURS",
    "FILLS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TEMPLATES",
    "synthetic_captions",
]

# The closed world the captions describe.

#: Colour names and RGB values, chosen to stay apart after downsampling to 16 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 165, 60),
    "blue": (35, 70, 220),
    "yellow": (245, 220, 40),
    "orange": (250, 140, 20),
    "purple": (135, 50, 185),
    "pink": (250, 135, 200),
    "cyan": (45, 215, 225),
    "brown": (125, 75, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "bar",
    "star",
    "crescent",
)
#: Half-width of a shape as a fraction of half a grid cell.
SIZES: dict[str, float] = {"small": 0.45, "medium": 0.68, "large": 0.92}
FILLS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy", "checkered")
#: The 3x3 grid, row by row, with the phrase that names each cell.
POSITIONS: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the center",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
#: Ways to say a whole scene. ``{shapes}`` joins the shape phrases with "and"; ``{next_to}`` links
#: the first two with "next to". The first template is the canonical caption. Every template has
#: its own fixed words, so two templates never give the same string for one scene.
TEMPLATES: tuple[str, ...] = (
    "{shapes} on a {background} background",
    "there is {shapes} on a {background} background",
    "an image of {shapes} on a {background} background",
    "a {background} background with {shapes}",
    "a picture showing {shapes} over a {background} background",
    "{next_to} on a {background} background",
    "on a {background} background there is {shapes}",
    "a drawing of a {background} background containing {shapes}",
)
_TEMPLATE_WORDS = "a and next to alone"  # words the templates add through the joins

#: Every word a synthetic caption can contain.
CAPTION_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            re.sub(
                r"\{\w+\}",
                " ",
                " ".join([*COLOURS, *SHAPES, *SIZES, *FILLS, *BACKGROUNDS, *POSITIONS, *TEMPLATES, _TEMPLATE_WORDS]),
            ).split()
        )
    )
)


def _contrast(colour: np.ndarray) -> np.ndarray:
    """A second tone of `colour` for textures: darker for light colours, lighter for dark ones."""
    luminance = colour @ np.array([0.299, 0.587, 0.114])
    return colour * 0.4 if luminance > 100 else colour + (255 - colour) * 0.55


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test for `shape` on coordinates scaled so the shape spans [-1, 1] (v points down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":
        return (v >= -0.9) & (v <= 0.8) & (au <= (v + 0.9) / 1.7)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        radius2 = u * u + v * v
        return (radius2 <= 1.0) & (radius2 >= 0.36)
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.35)
    if shape == "star":  # five points: the radius limit swings between 0.45 and 1
        angle = np.arctan2(u, -v) * (5 / (2 * np.pi))
        limit = 0.45 + 0.55 * np.abs(1 - 2 * (angle - np.floor(angle)))
        return u * u + v * v <= limit * limit
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.6)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern(fill: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray | bool:
    """Where a fill texture shows its second tone; x, y in output pixels, broadcastable."""
    if fill == "solid":
        return False
    if fill == "striped":  # diagonal stripes, so they never look like a bar's edge
        return np.floor((x + y) / (period / 2)) % 2 == 1
    if fill == "dotted":
        dx = (x % period) - period / 2
        dy = (y % period) - period / 2
        return dx * dx + dy * dy <= (0.3 * period) ** 2
    if fill == "checkered":
        return (np.floor(x / (period / 2)) + np.floor(y / (period / 2))) % 2 == 1
    raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")


def _scene(rng: np.random.Generator) -> dict:
    """Draw one scene: background colour and texture, and 1-3 shapes in distinct grid cells."""
    colour_names = list(COLOURS)
    background_colour = colour_names[rng.integers(len(colour_names))]
    shape_colours = [name for name in colour_names if name != background_colour]
    count = int(rng.integers(1, 4))
    cells = rng.permutation(len(POSITIONS))[:count]
    picks = rng.integers(0, [len(SHAPES), len(shape_colours), len(SIZES), len(FILLS)], (count, 4))
    jitter = rng.uniform(-1.0, 1.0, (count, 2))
    shapes = []
    for cell, (shape, colour, size, fill), offset in zip(cells, picks, jitter):
        shapes.append(
            {
                "shape": SHAPES[shape],
                "colour": shape_colours[colour],
                "size": list(SIZES)[size],
                "fill": FILLS[fill],
                "cell": int(cell),
                "jitter": offset,
            }
        )
    return {
        "background_colour": background_colour,
        "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        "gradient_direction": rng.integers(4),
        "shapes": shapes,
    }


def _background(scene: dict, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The textured background as an (image_size, image_size, 3) float32 array."""
    colour = np.array(COLOURS[scene["background_colour"]], dtype=np.float32)
    second = _contrast(colour)
    coords = np.arange(image_size, dtype=np.float32) + 0.5  # pixel centres
    x, y = coords[None, :], coords[:, None]
    texture = scene["background"]
    if texture == "plain":
        canvas = np.broadcast_to(colour, (image_size, image_size, 3))
    elif texture == "gradient":  # from the colour to its second tone, in one of four directions
        ramp = [x + 0 * y, y + 0 * x, (x + y) / 2, (image_size - x + y) / 2]
        weight = (ramp[scene["gradient_direction"]] / image_size)[..., None]
        canvas = colour + (second - colour) * weight
    elif texture == "noisy":  # mostly grey-level noise, a little colour noise
        grey = rng.normal(0.0, 24.0, (image_size, image_size, 1))
        tint = rng.normal(0.0, 8.0, (image_size, image_size, 3))
        canvas = colour + (grey + tint).astype(np.float32)
    elif texture == "checkered":  # a 4x4 board of the colour and its second tone
        tiles = (np.floor(x / (image_size / 4)) + np.floor(y / (image_size / 4))) % 2 == 1
        canvas = np.where(tiles[..., None], second, colour)
    else:
        raise ValueError(f"unknown background {texture!r}; expected one of {BACKGROUNDS}")
    return np.array(canvas, dtype=np.float32)  # a writable copy


def _render(scene: dict, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `scene` as an (image_size, image_size, 3) uint8 array.

    Each shape is drawn supersampled (>= 128 px across the image) inside its own bounding box and
    box-filtered down, so edges stay smooth at 16 or 32 px. Textures have a fixed period relative
    to the image, so a scene looks the same at every size.
    """
    canvas = _background(scene, image_size, rng)
    scale = max(1, -(-128 // image_size))  # supersampling factor
    half_cell = image_size / 6
    period = max(2.0, image_size / 8)
    for item in scene["shapes"]:
        radius = SIZES[item["size"]] * half_cell
        row, column = divmod(item["cell"], 3)
        slack = (half_cell - radius) * 0.8  # jitter keeps the shape inside its cell
        centre_x = (2 * column + 1) * half_cell + item["jitter"][0] * slack
        centre_y = (2 * row + 1) * half_cell + item["jitter"][1] * slack
        # The output pixels the shape can touch, then their subpixel centres.
        left, right = int(centre_x - radius), min(image_size, int(np.ceil(centre_x + radius)))
        top, bottom = int(centre_y - radius), min(image_size, int(np.ceil(centre_y + radius)))
        sub_x = left + (np.arange((right - left) * scale, dtype=np.float32) + 0.5) / scale
        sub_y = top + (np.arange((bottom - top) * scale, dtype=np.float32) + 0.5) / scale
        box_x, box_y = sub_x[None, :], sub_y[:, None]
        u, v = (box_x - centre_x) / radius, (box_y - centre_y) / radius
        inside = _shape_mask(item["shape"], u, v)
        colour = np.array(COLOURS[item["colour"]], dtype=np.float32)
        second_tone = np.asarray(_pattern(item["fill"], box_x, box_y, period))[..., None]
        fill = np.where(second_tone, _contrast(colour), colour) * inside[..., None]
        # Box filter: coverage and mean shape colour per output pixel, blended over the background.
        shape = (bottom - top, scale, right - left, scale)
        coverage = inside.reshape(shape).mean(axis=(1, 3), dtype=np.float32)[..., None]
        painted = np.broadcast_to(fill, (*inside.shape, 3)).reshape(*shape, 3).mean(axis=(1, 3))
        region = canvas[top:bottom, left:right]
        region *= 1 - coverage
        region += painted
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _shape_phrase(item: dict) -> str:
    """E.g. "a large striped red circle at the top left"."""
    description = f"{item['size']} {item['fill']} {item['colour']} {item['shape']}"
    return f"a {description} {POSITIONS[item['cell']]}"


def _caption(scene: dict, template: str, order: Sequence[int]) -> str:
    """Fill `template` with the scene's shapes in `order`; ends with a period."""
    phrases = [_shape_phrase(scene["shapes"][index]) for index in order]
    if len(phrases) == 1:
        next_to = f"{phrases[0]} alone"
    else:
        next_to = " and ".join([f"{phrases[0]} next to {phrases[1]}", *phrases[2:]])
    background = f"{scene['background']} {scene['background_colour']}"
    text = template.format(shapes=" and ".join(phrases), next_to=next_to, background=background)
    return text + "."


def _captions(scene: dict, count: int, rng: np.random.Generator) -> list[str]:
    """The canonical caption, then `count - 1` other templates with the shapes reordered."""
    captions = [_caption(scene, TEMPLATES[0], range(len(scene["shapes"])))]
    others = 1 + rng.permutation(len(TEMPLATES) - 1)
    for template in others[: count - 1]:
        order = rng.permutation(len(scene["shapes"]))
        captions.append(_caption(scene, TEMPLATES[template], order))
    return captions


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def synthetic_captions(n: int, image_size: int = 32, seed: int = 0, captions_per_image: int = 1) -> datasets.Dataset:
    """`n` synthetic scenes (PNG ``image`` column) with English captions (``caption`` column).

    Each image holds 1-3 shapes (shape, colour, size, fill texture, grid cell) on a textured
    background, and its caption says all of it, so captions are nearly unique and a small CLIP
    learns retrieval from a few thousand pairs. Row ``i`` depends only on (`seed`, ``i``): the
    first rows do not change with `n`, nor the images with `captions_per_image`. With
    ``captions_per_image > 1`` the column holds a list of distinct phrasings of the same scene,
    the first being the single-caption text.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 pixels, got {image_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if not 1 <= captions_per_image <= len(TEMPLATES):
        raise ValueError(
            f"captions_per_image must be between 1 and {len(TEMPLATES)} (one per phrasing "
            f"template), got {captions_per_image!r}."
        )
    images, captions = [], []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        scene = _scene(rng)
        images.append({"bytes": _png_bytes(_render(scene, image_size, rng)), "path": None})
        texts = _captions(scene, captions_per_image, rng)
        captions.append(texts if captions_per_image > 1 else texts[0])
    # datasets >= 4 names a list column `List`; older releases call it `Sequence`.
    list_feature = getattr(datasets, "List", datasets.Sequence)
    text = datasets.Value("string")
    caption_feature = list_feature(text) if captions_per_image > 1 else text
    features = datasets.Features({"image": datasets.Image(), "caption": caption_feature})
    return datasets.Dataset.from_dict({"image": images, "caption": captions}, features=features)
