"""Tests for hf_unlearnable.testing: the offline tokenizer, tiny CLIP models and synthetic data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading

import datasets
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from hf_unlearnable import testing
from hf_unlearnable.testing import (
    CAPTION_WORDS,
    EXTRA_WORDS,
    clip_tokenizer,
    synthetic_captions,
    tiny_clip,
    tiny_clip_config,
)
from hf_unlearnable.testing import tokenizer as tokenizer_module

#: sha256 of vocab.json + "\n" + merges.txt as built from the built-in word lists (format 2).
RECORDED_TOKENIZER_DIGEST = "4596b98d9615d42d551f770993ad9f1c232d2e956a03314fcc74691d1e06e253"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return clip_tokenizer(tmp_path_factory.mktemp("tokenizer-cache"))


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(image_size=32, seed=0)


# --------------------------------------------------------------------------------------------------
# clip_tokenizer
# --------------------------------------------------------------------------------------------------


def test_tokenizer_special_tokens_are_the_last_two_ids(tokenizer):
    assert isinstance(tokenizer, transformers.CLIPTokenizer)
    size = len(tokenizer)
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.bos_token_id == size - 2
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == size - 1
    assert tokenizer.pad_token_id == tokenizer.unk_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 77


def _clip_bytes_to_unicode() -> list[str]:
    """CLIP's (GPT-2's) byte-to-character map, written out as the reference: the symbol of each
    byte, in the order CLIP numbers them (printable bytes first, then the others from U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def test_tokenizer_base_alphabet_is_clip_byte_level(tokenizer):
    vocab = tokenizer.get_vocab()
    alphabet = _clip_bytes_to_unicode()
    assert [vocab[symbol] for symbol in alphabet] == list(range(256))
    assert [vocab[symbol + "</w>"] for symbol in alphabet] == list(range(256, 512))
    assert vocab["a</w>"] == 320  # the same id as in openai/clip-vit-base-patch32


def test_tokenizer_lowercases_and_wraps_in_start_and_end(tokenizer):
    ids = tokenizer("A Red circle.").input_ids
    assert ids == tokenizer("a red circle.").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "red</w>", "circle</w>", ".</w>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle ."


def test_every_listed_word_is_one_whole_word_token(tokenizer):
    words = sorted(set(CAPTION_WORDS) | set(EXTRA_WORDS))
    assert len(EXTRA_WORDS) >= 400
    assert all(re.fullmatch(r"[a-z]+", word) for word in words)
    encoded = tokenizer(words, add_special_tokens=False).input_ids
    vocab = tokenizer.get_vocab()
    for word, ids in zip(words, encoded):
        assert ids == [vocab[word + "</w>"]], word
        assert tokenizer.decode(ids) == word


def test_unknown_words_split_into_pieces(tokenizer):
    ids = tokenizer("zqxjvk 42 café!", add_special_tokens=False).input_ids
    assert len(ids) > 4
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "zqxjvk 4 2 café !"


def test_round_trip_safe_word_tokens_are_plenty(tokenizer):
    """Trigger material: whole alphabetic words with encode(decode(id)) == [id]."""
    words = {
        token[:-4]: token_id
        for token, token_id in tokenizer.get_vocab().items()
        if token.endswith("</w>") and re.fullmatch(r"[a-z]+", token[:-4])
    }
    encoded = tokenizer(list(words), add_special_tokens=False).input_ids
    safe = [word for word, ids in zip(words, encoded) if ids == [words[word]]]
    assert len(safe) >= len(set(CAPTION_WORDS) | set(EXTRA_WORDS))


def test_tokenizer_save_and_reload(tokenizer, tmp_path):
    text = ["A large striped red circle at the top left.", "unseen wordz here"]
    expected = tokenizer(text, padding=True).input_ids
    tokenizer.save_pretrained(tmp_path)
    reloaded = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, padding=True).input_ids == expected
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert auto(text, padding=True).input_ids == expected
    fast_class = getattr(transformers, "CLIPTokenizerFast", None)
    if fast_class is not None:
        assert fast_class.from_pretrained(tmp_path)(text, padding=True).input_ids == expected


def test_tokenizer_files_are_deterministic_and_cached(tmp_path):
    first = clip_tokenizer(tmp_path / "one")
    second = clip_tokenizer(tmp_path / "two")
    [folder_one] = (tmp_path / "one").iterdir()
    [folder_two] = (tmp_path / "two").iterdir()
    assert folder_one.name == folder_two.name
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (folder_one / name).read_bytes() == (folder_two / name).read_bytes()
    assert first.get_vocab() == second.get_vocab()
    assert json.loads((folder_one / "vocab.json").read_text())["<|endoftext|>"] == len(first) - 1
    assert (folder_one / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_tokenizer_files_do_not_depend_on_hash_seed_or_threads():
    """Set iteration order changes with PYTHONHASHSEED, and the BPE trainer counts pairs on a
    thread pool when tokenizers' parallelism is on; the files must change with neither."""
    # The child imports the testing package without hf_unlearnable/__init__.py (which loads the
    # whole library) to start quickly.
    script = (
        "import hashlib, sys, types\n"
        "package = types.ModuleType('hf_unlearnable')\n"
        "package.__path__ = [sys.argv[1]]\n"
        "sys.modules['hf_unlearnable'] = package\n"
        "from hf_unlearnable.testing import tokenizer as module\n"
        "words = sorted(set(module.CAPTION_WORDS) | set(module.EXTRA_WORDS))\n"
        "files = module._tokenizer_files(words)\n"
        "print(hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest())\n"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    threads = "true" if os.environ.get("TOKENIZERS_PARALLELISM") == "false" else "false"
    child = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(os.path.dirname(testing.__file__))],
        env={**os.environ, "PYTHONHASHSEED": hash_seed, "TOKENIZERS_PARALLELISM": threads, "RAYON_NUM_THREADS": "4"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    files = tokenizer_module._tokenizer_files(sorted(set(CAPTION_WORDS) | set(EXTRA_WORDS)))
    assert child.stdout.strip() == hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()


def test_tokenizer_files_are_the_recorded_ones():
    """The benchmarks' recorded figures depend on these ids. If this fails, the word lists or the
    tokenizers library's BPE trainer changed: bump _TOKENIZER_FORMAT, record the new digest, and
    rerun the benchmarks whose figures are recorded."""
    files = tokenizer_module._tokenizer_files(sorted(set(CAPTION_WORDS) | set(EXTRA_WORDS)))
    digest = hashlib.sha256((files["vocab.json"] + "\n" + files["merges.txt"]).encode("utf-8")).hexdigest()
    assert digest == RECORDED_TOKENIZER_DIGEST


def test_parallel_first_use_is_safe(tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(clip_tokenizer(tmp_path).get_vocab())
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4 and all(vocab == results[0] for vocab in results)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------------
# tiny_clip
# --------------------------------------------------------------------------------------------------


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_tiny_clip_config_matches_tokenizer(tokenizer):
    config = tiny_clip_config(48, hidden_size=32, num_layers=1, num_heads=4, projection_dim=16, max_text_length=40)
    text, vision = config.text_config, config.vision_config
    assert text.vocab_size == len(tokenizer)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert text.max_position_embeddings == 40
    assert (vision.image_size, vision.patch_size) == (48, 12)
    assert (text.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 1, 4)
    assert config.projection_dim == 16
    with pytest.raises(ValueError, match="patch_size"):
        tiny_clip_config(32, patch_size=5)
    with pytest.raises(ValueError, match="num_heads"):
        tiny_clip_config(32, hidden_size=30, num_heads=4)


def test_tiny_clip_forward(tiny):
    model, processor = tiny
    rows = synthetic_captions(3, image_size=32)[:]
    batch = processor(images=rows["image"], text=rows["caption"], return_tensors="pt", padding=True)
    assert batch.pixel_values.shape == (3, 3, 32, 32)
    assert batch.input_ids[0, 0] == processor.tokenizer.bos_token_id
    with torch.no_grad():
        text = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        image = model.get_image_features(pixel_values=batch.pixel_values)
        output = model(**batch, return_loss=True)
    text = getattr(text, "pooler_output", text)  # an output object in transformers 5
    image = getattr(image, "pooler_output", image)
    assert text.shape == image.shape == (3, 32)
    assert output.logits_per_image.shape == (3, 3)
    assert torch.isfinite(output.loss)


def test_tiny_clip_is_seeded_and_leaves_global_rng_alone(tiny):
    model, _ = tiny
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    again, _ = tiny_clip(image_size=32, seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert _same_weights(model, again)
    other, _ = tiny_clip(image_size=32, seed=1)
    assert not _same_weights(model, other)


def test_tiny_clip_save_and_load_offline(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = transformers.CLIPModel.from_pretrained(tmp_path)
    loaded_processor = transformers.CLIPProcessor.from_pretrained(tmp_path)
    assert _same_weights(model, loaded)
    rows = synthetic_captions(2, image_size=32)[:]
    inputs = dict(images=rows["image"], text=rows["caption"], return_tensors="pt", padding=True)
    expected, got = processor(**inputs), loaded_processor(**inputs)
    assert torch.equal(expected.input_ids, got.input_ids)
    assert torch.equal(expected.pixel_values, got.pixel_values)


@pytest.mark.parametrize("image_size", [16, 48])
def test_tiny_clip_processor_resizes_to_image_size(image_size):
    model, processor = tiny_clip(image_size=image_size, hidden_size=32, num_layers=1, max_text_length=32)
    picture = Image.new("RGB", (70, 50), (10, 200, 30))
    pixels = processor(images=[picture], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, image_size, image_size)
    assert processor.tokenizer.model_max_length == 32
    tokens = processor(text=["word " * 100], return_tensors="pt", truncation=True).input_ids
    assert tokens.shape == (1, 32)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
        text_features = model.get_text_features(input_ids=tokens)
    assert getattr(features, "pooler_output", features).shape == (1, 32)
    assert getattr(text_features, "pooler_output", text_features).shape == (1, 32)


# --------------------------------------------------------------------------------------------------
# synthetic_captions
# --------------------------------------------------------------------------------------------------


def test_synthetic_captions_columns_and_images():
    data = synthetic_captions(6, image_size=32, seed=3)
    assert isinstance(data, datasets.Dataset) and len(data) == 6
    assert data.column_names == ["image", "caption"]
    assert isinstance(data.features["image"], datasets.Image)
    assert data.features["caption"] == datasets.Value("string")
    for row in data:
        assert isinstance(row["image"], Image.Image)
        assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
        assert isinstance(row["caption"], str)
    raw = data.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"].startswith(b"\x89PNG")


@pytest.mark.parametrize("image_size", [16, 224])
def test_synthetic_captions_any_size(image_size):
    data = synthetic_captions(3, image_size=image_size)
    assert all(image.size == (image_size, image_size) for image in data[:]["image"])


def test_synthetic_captions_are_deterministic():
    first = synthetic_captions(8, seed=5).cast_column("image", datasets.Image(decode=False))
    second = synthetic_captions(8, seed=5).cast_column("image", datasets.Image(decode=False))
    assert first[:] == second[:]
    prefix = synthetic_captions(3, seed=5).cast_column("image", datasets.Image(decode=False))
    assert prefix[:] == first[:3]  # row i depends only on (seed, i)
    other = synthetic_captions(8, seed=6).cast_column("image", datasets.Image(decode=False))
    assert other[:]["caption"] != first[:]["caption"]
    assert all(a["bytes"] != b["bytes"] for a, b in zip(other[:]["image"], first[:]["image"]))


def test_synthetic_captions_leave_global_rngs_alone():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    synthetic_captions(4)
    assert np.random.rand() == expected


def test_several_captions_per_image_are_distinct_phrasings():
    single = synthetic_captions(20, seed=2)
    several = synthetic_captions(20, seed=2, captions_per_image=3)
    assert several.features["caption"] == datasets.List(datasets.Value("string"))
    rows_single, rows_several = single[:], several[:]
    images = single.cast_column("image", datasets.Image(decode=False))[:]["image"]
    assert images == several.cast_column("image", datasets.Image(decode=False))[:]["image"]
    for caption, phrasings in zip(rows_single["caption"], rows_several["caption"]):
        assert len(phrasings) == 3 and len(set(phrasings)) == 3
        assert phrasings[0] == caption
        # Same words (a multiset, up to the template's own words): the same scene.
        shared = {
            "a",
            "and",
            "next",
            "to",
            "alone",
            "there",
            "is",
            "an",
            "image",
            "of",
            "with",
            "picture",
            "showing",
            "over",
            "on",
            "drawing",
            "containing",
        }
        words = [sorted(w for w in text[:-1].split() if w not in shared) for text in phrasings]
        assert words[1] == words[0] and words[2] == words[0]
    with pytest.raises(ValueError, match="captions_per_image"):
        synthetic_captions(2, captions_per_image=len(testing.TEMPLATES) + 1)


def test_caption_words_are_plain_and_single_tokens(tokenizer):
    data = synthetic_captions(200, seed=1, captions_per_image=len(testing.TEMPLATES))
    vocab = tokenizer.get_vocab()
    seen = set()
    for phrasings in data[:]["caption"]:
        for caption in phrasings:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*\.", caption), caption
            seen.update(caption[:-1].split())
    assert seen <= set(CAPTION_WORDS)
    assert all(word + "</w>" in vocab for word in seen)
    ids = tokenizer(data[0]["caption"][0], add_special_tokens=False).input_ids
    assert len(ids) == len(data[0]["caption"][0].split()) + 1  # words plus the final period


def test_captions_are_nearly_unique():
    captions = synthetic_captions(500, seed=0)[:]["caption"]
    unique_fraction = len(set(captions)) / len(captions)
    assert unique_fraction >= 0.98, unique_fraction


def test_scene_is_visible_in_pixels():
    """Shapes are drawn over the background: images are not flat and differ across rows."""
    pixels = np.stack([np.asarray(image) for image in synthetic_captions(20)[:]["image"]])
    assert pixels.dtype == np.uint8 and pixels.shape == (20, 32, 32, 3)
    assert all(image.reshape(-1, 3).std(axis=0).max() > 5 for image in pixels)
    assert len({image.tobytes() for image in pixels}) == 20


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="n must be"):
        synthetic_captions(-1)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_captions(2, image_size=4)
    with pytest.raises(ValueError, match="seed"):
        synthetic_captions(2, seed=-3)
    assert len(synthetic_captions(0)) == 0
