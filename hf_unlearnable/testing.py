"""Offline stand-ins for tests, examples and benchmarks: a CLIP tokenizer, tiny CLIP models, and a
synthetic captioned image data set.

Nothing here touches the network. The tokenizer is a real CLIP-style byte-level BPE (same files,
same special tokens, same pre-tokenisation as ``openai/clip-vit-base-patch32``) whose merges are
trained on a small built-in word list, so every word of that list, and every word the synthetic
captions use, is one whole-word token. The models are randomly initialised ``CLIPModel``
instances built from a config. The data set draws compositional scenes (coloured, textured
shapes on a textured background) and describes each in plain English, so a small CLIP trained
from scratch on it learns real image-text alignment that protection must then break.

Example::

    model, processor = tiny_clip(image_size=32)
    dataset = synthetic_captions(256, image_size=32)
    batch = processor(images=dataset[:4]["image"], text=dataset[:4]["caption"],
                      return_tensors="pt", padding=True)
    outputs = model(**batch)
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from PIL import Image

__all__ = [
    "CAPTION_WORDS",
    "EXTRA_WORDS",
    "clip_tokenizer",
    "synthetic_captions",
    "tiny_clip",
    "tiny_clip_config",
]

# --------------------------------------------------------------------------------------------------
# Synthetic scenes: the closed world the captions describe.
# --------------------------------------------------------------------------------------------------

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
    "circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star", "crescent",
)
#: Half-width of a shape as a fraction of half a grid cell.
SIZES: dict[str, float] = {"small": 0.45, "medium": 0.68, "large": 0.92}
FILLS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy", "checkered")
#: The 3x3 grid, row by row, with the phrase that names each cell.
POSITIONS: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
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
                " ".join([*COLOURS, *SHAPES, *SIZES, *FILLS, *BACKGROUNDS, *POSITIONS, *TEMPLATES,
                          _TEMPLATE_WORDS]),
            ).split()
        )
    )
)

#: Common English words added to the tokenizer's training list so that the trigger vocabulary
#: (round-trip-safe whole-word tokens) is large, as in a real CLIP vocabulary.
EXTRA_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            """
    able above accept across act add afraid after again age agree air alive allow almost
    along alright always amount angry animal answer apple area arm army around arrive art
    ask attack aunt autumn away baby back bad bag ball bank basket bath bear beat beautiful
    bed bee before begin behind bell belt bench berry big bird birth bite bitter blade
    blanket blind blood blow board boat body bone book boot born borrow boss both bottle
    bowl box boy brain branch brave bread break breakfast breath brick bridge bright bring
    broad brother brush bucket build burn bus busy butter button buy cake call calm camera
    camp candle cap car card care carry cart castle cat catch cause chain chair chalk chance
    change cheap check cheese chicken child choose church city clean clear climb clock close
    cloth cloud clown coat coffee cold collect comb come cook cool copper corn corner cost
    cotton count country cousin cover cow crack cream crowd crown cry cup curtain cut dance
    danger dark daughter day dead deal dear decide deep deer desk dinner dirty dish doctor
    dog doll door dream dress drink drive drop drum dry duck dust eagle ear early earth east
    easy eat edge egg empty engine enjoy enter evening event exact eye face fact fair fall
    family famous far farm fast fat father feather feel fence field fight finger finish
    fire fish flag flat floor flower fly fog follow food foot forest forget fork free fresh
    friend frog fruit full funny game garden gate gentle ghost gift girl give glass glove
    go goat gold good grain grape grass great ground grow guard guess guide hair hall hammer
    hand happy hard hat heart heat heavy help hill hold hole holiday home honey hook hope
    horn horse hospital hot hotel hour house hunt hurry husband ice idea island jacket jam
    jelly jewel job join joke journey judge juice jump key kick kind king kitchen kite knee
    knife knock know ladder lady lake lamp land laugh lazy lead leaf learn leg lemon letter
    library lift light lion lip listen little live lock long look lose loud love low lucky
    lunch machine magic mail make man map market meat meet melon metal milk mind minute
    mirror money monkey moon morning mother mountain mouse mouth move music nail name narrow
    near neck needle nest net new night noise north nose note number nurse ocean offer office
    oil old onion open orange owl paint pan paper parent park party pass path pay peace pear
    pen pencil people pepper pet piano pick pig pillow pin pipe plane plant plate play pocket
    poem point polite pool poor potato pour powder power prince proud pull pump puppy push
    queen quick quiet rabbit race radio rain read real remember rich ride ring river road
    rock roof room root rope rose rough round row rub rule run sad safe sail salt sand save
    school sea seat secret seed sell send shadow sharp sheep shelf shell ship shirt shoe
    shop short shout shut silver sing sister sit skin sky sleep slow smell smile smoke snake
    snow soap sock soft soldier son song soup south space speak spoon spring stamp stand
    station stay steel stick stone storm story strange stream street strong student sugar
    summer sun supper sweet swim table tail talk tall taste tea teach team tent thick thin
    thing think thirsty throw thumb ticket tiger tired toe tomato tongue tool tooth towel
    tower town toy train tree trouble truck true turn uncle under useful valley village
    visit voice wait walk wall warm wash watch water wave weak wear weather wet wheel whisper
    wide wife wild wind window wing winter wise wish wolf woman wood wool word work world
    write yard year young zebra zero
            """.split()
        )
    )
)

# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_END_OF_WORD = "</w>"
#: Bump when the way the tokenizer files are built changes, so old caches are not reused.
_TOKENIZER_FORMAT = "1"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _train_bpe(words: Sequence[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is a single symbol (each word counted once).

    The most frequent adjacent pair is merged first; ties go to the lexicographically smallest
    pair, so the result depends only on the word list.
    """
    byte_to_char = _bytes_to_unicode()
    words_as_symbols: list[list[str]] = []
    for word in words:
        symbols = [byte_to_char[byte] for byte in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        words_as_symbols.append(symbols)

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    words_with_pair: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(words_as_symbols):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += 1
            words_with_pair[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue  # a stale heap entry
        merges.append(pair)
        first, second = pair
        touched: set[tuple[str, str]] = set()
        for index in sorted(words_with_pair.pop(pair)):
            symbols = words_as_symbols[index]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= 1
                touched.add(old)
            merged, position = [], 0
            while position < len(symbols):
                if (
                    position + 1 < len(symbols)
                    and symbols[position] == first
                    and symbols[position + 1] == second
                ):
                    merged.append(first + second)
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            words_as_symbols[index] = merged
            for new in zip(merged, merged[1:]):
                pair_counts[new] += 1
                words_with_pair[new].add(index)
                touched.add(new)
        for changed in touched:
            if pair_counts[changed] > 0:
                heapq.heappush(heap, (-pair_counts[changed], changed))
            else:
                del pair_counts[changed]
    return merges


def _tokenizer_files(words: Sequence[str]) -> dict[str, str]:
    """The text of vocab.json, merges.txt and tokenizer_config.json for a CLIP BPE over `words`."""
    merges = _train_bpe(words)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [symbol + _END_OF_WORD for symbol in alphabet]
    known = set(tokens)
    for first, second in merges:
        if first + second not in known:
            tokens.append(first + second)
            known.add(first + second)
    tokens += [BOS_TOKEN, EOS_TOKEN]  # the last two ids, as in CLIP (49406, 49407)
    vocab = {token: index for index, token in enumerate(tokens)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "model_max_length": 77,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
    }


def _default_cache_root() -> Path:
    root = os.environ.get("HF_UNLEARNABLE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "hf_unlearnable"


def clip_tokenizer(cache_dir: str | os.PathLike | None = None) -> transformers.CLIPTokenizer:
    """A CLIP BPE tokenizer built offline, in which every caption and extra word is one token.

    The files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``; CLIP's format) are built
    deterministically on first use and kept under `cache_dir` (default ``$HF_UNLEARNABLE_CACHE`` or
    ``~/.cache/hf_unlearnable``) in a folder named after their content; parallel callers are safe.
    """
    words = sorted(set(CAPTION_WORDS) | set(EXTRA_WORDS))
    digest = hashlib.sha256(f"{_TOKENIZER_FORMAT}\n{' '.join(words)}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    folder = root / f"clip-tokenizer-v{_TOKENIZER_FORMAT}-{digest}"
    if not (folder / "tokenizer_config.json").is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".clip-tokenizer-", dir=root))
        except OSError as error:
            raise OSError(
                f"Cannot write the offline tokenizer files under {root}: {error}. Pass a writable "
                "cache_dir= or set HF_UNLEARNABLE_CACHE."
            ) from error
        try:
            # Write everything aside, then move the folder into place in one step: a reader sees
            # either no folder or a complete one, and a process that loses the race keeps the
            # winner's (identical) files.
            for name, text in _tokenizer_files(words).items():
                (staging / name).write_text(text, encoding="utf-8")
            try:
                os.replace(staging, folder)
            except OSError:
                if not (folder / "tokenizer_config.json").is_file():
                    raise  # not a lost race: a real error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return transformers.CLIPTokenizer.from_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# Tiny CLIP models
# --------------------------------------------------------------------------------------------------


def tiny_clip_config(
    image_size: int = 32,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 32,
    patch_size: int | None = None,
    max_text_length: int = 77,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
) -> transformers.CLIPConfig:
    """A small two-tower CLIP config matching `tokenizer` (default: :func:`clip_tokenizer`).

    Text and vision towers share width, depth and heads; patches default to a 4x4 grid.
    Use it to train a surrogate or victim from scratch with ``CLIPModel(config)``.
    """
    patch_size = patch_size if patch_size is not None else max(1, image_size // 4)
    if image_size % patch_size:
        raise ValueError(
            f"image_size={image_size} is not a multiple of patch_size={patch_size}; "
            "pick a patch_size that divides image_size."
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}; change either."
        )
    tokenizer = tokenizer if tokenizer is not None else clip_tokenizer()
    shared = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "projection_dim": projection_dim,
    }
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shared,
    )
    vision_config = transformers.CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, **shared
    )
    return transformers.CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=projection_dim,
    )


def _image_processor(image_size: int) -> transformers.image_processing_utils.BaseImageProcessor:
    """CLIP's preprocessing (resize shortest edge, centre crop, CLIP mean/std) at `image_size`."""
    # transformers 5 backs CLIPImageProcessor with torchvision and, without it, falls back to the
    # PIL class with a warning; ask for the PIL class directly in that case.
    if transformers.utils.is_torchvision_available() or not hasattr(
        transformers, "CLIPImageProcessorPil"
    ):
        processor_class = transformers.CLIPImageProcessor
    else:
        processor_class = transformers.CLIPImageProcessorPil
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def tiny_clip(
    image_size: int = 32,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 32,
    patch_size: int | None = None,
    max_text_length: int = 77,
) -> tuple[transformers.CLIPModel, transformers.CLIPProcessor]:
    """A randomly initialised small ``CLIPModel`` (in eval mode) and its matching processor.

    Weights depend only on `seed` and the sizes; the global torch RNG is left untouched.
    """
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = max_text_length
    config = tiny_clip_config(
        image_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        projection_dim=projection_dim,
        patch_size=patch_size,
        max_text_length=max_text_length,
        tokenizer=tokenizer,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config)
    processor = transformers.CLIPProcessor(
        image_processor=_image_processor(image_size), tokenizer=tokenizer
    )
    return model.eval(), processor


# --------------------------------------------------------------------------------------------------
# Synthetic captioned images
# --------------------------------------------------------------------------------------------------


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


def synthetic_captions(
    n: int, image_size: int = 32, seed: int = 0, captions_per_image: int = 1
) -> datasets.Dataset:
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
