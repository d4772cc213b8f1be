"""The default trigger vocabulary on CLIP's real BPE vocabulary: neutral everyday words only.

A real ``transformers.CLIPTokenizer`` is built from CLIP's merges (``tests/data``, see its README),
so `TriggerVocabulary` is checked end to end on the 32,875 round-trip-safe whole-word tokens a
published CLIP has, not on the test tokenizer's few hundred words. The sensitive words checked
against it (``tests/data/sensitive_words.txt``) are written for this test, apart from the library's
blocklist.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from hf_unlearnable import MEMConfig
from hf_unlearnable.captions import (
    MIN_WORD_LETTERS,
    TriggerVocabulary,
    allowed_trigger_word,
    blocked,
    dictionary_words,
    shipped_blocklist,
    trigger_vocabulary,
    word_forms,
)

DATA = Path(__file__).parent / "data"
CATEGORIES = (
    "profanity",
    "sex",
    "slurs",
    "religions",
    "ethnicities",
    "violence",
    "death",
    "disease",
    "drugs",
    "terrorism",
    "first names",
)
ORDINARY = (
    "apple",
    "chair",
    "blue",
    "river",
    "tree",
    "bread",
    "lamp",
    "boat",
    "garden",
    "cloud",
    "orange",
    "table",
    "window",
    "mountain",
    "coffee",
    "bicycle",
    "yellow",
    "green",
    "stone",
    "cat",
    "cats",
)


def sensitive_words() -> dict[str, list[str]]:
    """The test's sensitive words: category (its comment line) -> base forms."""
    words: dict[str, list[str]] = {}
    category = None
    for line in (DATA / "sensitive_words.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):  # a category (the header's lines get no words)
            category = line[1:].strip()
            words[category] = []
        elif line.strip() and category is not None:
            words[category] += line.split()
    return {category: found for category, found in words.items() if found}


SENSITIVE = sensitive_words()
SENSITIVE_WORDS = sorted({word for found in SENSITIVE.values() for word in found})


def inflections(word: str, name: bool = False) -> set[str]:
    """`word` with the endings English adds to it, spelled as written (plural, -ed, -ing, -er,
    -ers; a final "e" or consonant + "y" changed, a final consonant doubled or not), each also
    capitalised and upper-cased. A first name only gets its plural."""
    forms = {word}
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    elif word.endswith("y") and word[-2:-1] not in set("aeiou"):
        forms.add(word[:-1] + "ies")
    else:
        forms.add(word + "s")
    if not name:
        if word.endswith("ie"):
            forms |= {word + "d", word[:-2] + "ying", word + "r", word + "rs"}
        elif word.endswith("e"):
            forms |= {word + "d", word[:-1] + "ing", word + "r", word + "rs"}
        elif word.endswith("y") and word[-2:-1] not in set("aeiou"):
            forms |= {word[:-1] + "ied", word + "ing", word[:-1] + "ier", word[:-1] + "iers"}
        else:
            stems = {word}
            if re.search(r"[^aeiou][aeiou][^aeiouwxy]$", word):
                stems.add(word + word[-1])  # "stab" -> "stabbing"
            forms |= {stem + ending for stem in stems for ending in ("ed", "ing", "er", "ers")}
    return {variant for form in forms for variant in (form, form.capitalize(), form.upper())}


def sensitive_forms() -> set[str]:
    return {
        form
        for category, found in SENSITIVE.items()
        for word in found
        for form in inflections(word, name=category == "first names")
    }


@pytest.fixture(scope="module")
def real_clip(tmp_path_factory) -> CLIPTokenizer:
    """CLIP's tokenizer (openai/clip-vit-base-patch32's vocab.json and merges.txt), built offline
    from its merges as open_clip's SimpleTokenizer builds its vocabulary."""
    merges = gzip.open(DATA / "clip_bpe_merges.txt.gz", "rt", encoding="utf-8").read().splitlines()
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    symbols = [chr(code) for code in printable] + [chr(256 + index) for index in range(len(others))]
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + [merge.replace(" ", "") for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    (folder / "vocab.json").write_text(
        json.dumps({token: index for index, token in enumerate(tokens)}), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 77,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder)


def words_of(tokenizer, vocabulary: TriggerVocabulary) -> set[str]:
    return {tokenizer.decode([int(token_id)]).strip() for token_id in vocabulary.token_ids}


@pytest.fixture(scope="module")
def default_words(real_clip) -> set[str]:
    return words_of(real_clip, TriggerVocabulary(real_clip))


@pytest.fixture(scope="module")
def any_words(real_clip) -> set[str]:
    return words_of(real_clip, TriggerVocabulary(real_clip, words="any"))


def test_the_fixture_is_clips_tokenizer(real_clip):
    # CLIP's ids for "a photo of a cat" and its vocabulary size (49,408), as in openai/clip-vit-base-patch32
    assert len(real_clip) == 49408
    assert real_clip("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_the_sensitive_list_covers_every_category_and_is_not_the_blocklist():
    assert all(any(category.startswith(name) for category in SENSITIVE) for name in CATEGORIES)
    assert len(SENSITIVE_WORDS) >= 300
    # most of them are kept out by WordNet's domains, not by the library's blocklist
    assert len(set(SENSITIVE_WORDS) - shipped_blocklist()) >= 300


def test_clip_has_the_sensitive_words_as_trigger_tokens_under_any(any_words):
    # the premise of the next test: CLIP's vocabulary holds hundreds of them as whole-word tokens
    assert len(sensitive_forms() & any_words) >= 300


def test_default_vocabulary_on_clip_holds_no_sensitive_word_nor_inflection(default_words):
    forms = sensitive_forms()
    assert sorted(forms & default_words) == []
    assert [form for form in sorted(forms) if allowed_trigger_word(form)] == []


def test_default_vocabulary_on_clip_is_thousands_of_everyday_words(real_clip, default_words, any_words):
    assert 3000 <= len(default_words) <= 8000  # 6,235 of CLIP's 32,875 round-trip-safe whole words
    assert default_words <= dictionary_words() and default_words <= any_words
    assert set(ORDINARY) <= default_words
    # enough for the paper's HotFlip (16 candidates + the current token), with room to spare
    vocabulary = trigger_vocabulary(real_clip, MEMConfig.paper(trigger_words="dictionary"))
    assert len(vocabulary) == len(default_words)


def test_the_user_blocklist_blocks_a_word_with_its_inflections_in_any_case(real_clip, default_words, any_words):
    assert {"cat", "cats"} <= default_words
    config = MEMConfig(trigger_blocklist=("Cat",))
    words = words_of(real_clip, trigger_vocabulary(real_clip, config))
    assert not {"cat", "cats"} & words
    removed = default_words - words
    assert removed and all("cat" in word_forms(word) for word in removed)  # and nothing else
    # the same under "any", and word by word
    words = words_of(real_clip, TriggerVocabulary(real_clip, words="any", blocklist=("CAT",)))
    assert not {"cat", "cats"} & words and {"catalog", "dog"} <= words
    assert allowed_trigger_word("Cats") and not allowed_trigger_word("Cats", ("cat",))
    assert not allowed_trigger_word("CAT", ("cat",))


def test_word_forms_undo_inflections():
    assert {"wankers", "wanker", "wank"} <= word_forms("Wankers")
    assert {"killing", "kill"} <= word_forms("killings")
    assert "shop" in word_forms("shopping") and "city" in word_forms("cities") and "box" in word_forms("boxes")
    assert "nazi" in word_forms("NAZIS") and "cry" in word_forms("cried")
    assert blocked("Shooters", {"shoot"}) and not blocked("shot", {"shoot"})  # irregular forms need their own entry


def test_the_shipped_lists_are_lower_case_words_and_agree():
    words, blocklist = dictionary_words(), shipped_blocklist()
    assert len(words) > 5000
    assert all(re.fullmatch(rf"[a-z]{{{MIN_WORD_LETTERS},}}", word) for word in words)
    assert all(re.fullmatch(r"[a-z]+", word) for word in blocklist)
    assert [word for word in sorted(words) if blocked(word, blocklist)] == []


def test_the_documented_sizes_are_the_measured_ones(default_words):
    # the README and MEMConfig's docstring state the list's size and its share of CLIP's tokens
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    from hf_unlearnable import config

    for text in (readme, " ".join(config.MEMConfig.__doc__.split())):
        assert f"{len(dictionary_words()):,} words" in text
        assert f"{len(default_words):,} of" in text
