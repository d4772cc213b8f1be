"""Offline stand-ins for tests, examples and benchmarks: a CLIP tokenizer, tiny CLIP models, and a
synthetic captioned image data set.

Nothing here touches the network. ``tokenizer`` builds a real CLIP-style byte-level BPE (CLIP's
files, special tokens and pre-tokenisation) whose merges the ``tokenizers`` library learns from a
small built-in word list, so every listed word and every caption word is one whole-word token.
``models`` builds randomly initialised ``CLIPModel`` and ``SiglipModel`` instances from a config. ``scenes`` draws
compositional scenes (coloured, textured shapes on a textured background) and describes each in
plain English, so a small CLIP trained from scratch on them learns real image-text alignment that
protection must then break.

Example::

    model, processor = tiny_clip(image_size=32)
    dataset = synthetic_captions(256, image_size=32)
    batch = processor(images=dataset[:4]["image"], text=dataset[:4]["caption"],
                      return_tensors="pt", padding=True)
    outputs = model(**batch)
"""

from .models import (
    TinyClipSizes,
    TinySiglipSizes,
    tiny_clip,
    tiny_clip_config,
    tiny_siglip,
    tiny_siglip_config,
    tiny_siglip_processor,
)
from .scenes import (
    BACKGROUNDS,
    CAPTION_WORDS,
    COLOURS,
    FILLS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    synthetic_captions,
)
from .tokenizer import BOS_TOKEN, EOS_TOKEN, EXTRA_WORDS, clip_tokenizer

__all__ = [
    "CAPTION_WORDS",
    "EXTRA_WORDS",
    "clip_tokenizer",
    "synthetic_captions",
    "tiny_clip",
    "tiny_clip_config",
    "tiny_siglip",
    "tiny_siglip_config",
    "tiny_siglip_processor",
]
