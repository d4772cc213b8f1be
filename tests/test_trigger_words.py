"""Triggers read as words: the shipped list of neutral everyday words, less the blocklists (the
library's and the user's). The same on CLIP's real vocabulary: tests/test_trigger_vocabulary.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_unlearnable import MEMConfig, ProtectTransform, captions
from hf_unlearnable.captions import TriggerVocabulary, allowed_trigger_word, dictionary_words, trigger_vocabulary
from hf_unlearnable.cli import build_parser
from hf_unlearnable.commands import config_from_arguments
from hf_unlearnable.testing import clip_tokenizer, synthetic_captions

from .test_trigger_vocabulary import SENSITIVE_WORDS, sensitive_forms

# Word pieces a BPE keeps as whole-word tokens ("ttle", "mber"), and hyphenation debris that is
# frequent in written English ("tal", "int").
WORD_PIECES = ("ttle", "mber", "tal", "int")
# Sensitive words of the test's own list (every 40th: not words chosen by hand), planted as
# whole-word tokens.
SENSITIVE = tuple(SENSITIVE_WORDS[::40])

ONE_ROUND = MEMConfig(
    max_rounds=1,
    surrogate_steps=2,
    batch_size=8,
    pgd_steps=1,
    trigger_rounds=1,
    hotflip_candidates=4,
    online_rounds=1,
)


@pytest.fixture(scope="module")
def planted():
    """The test tokenizer with word pieces and sensitive words planted as whole-word tokens."""
    return clip_tokenizer(extra_words=(*WORD_PIECES, *SENSITIVE))


def words_of(tokenizer, vocabulary: TriggerVocabulary) -> set[str]:
    return {tokenizer.decode([int(token_id)]).strip() for token_id in vocabulary.token_ids}


def trigger_words_of(protected, k: int) -> list[str]:
    return [word for caption in protected["caption"] for word in caption.split()[:k]]


def test_planted_words_are_trigger_tokens_under_any(planted):
    # the premise of the next test: each planted word is a round-trip-safe token "any" may use
    words = words_of(planted, TriggerVocabulary(planted, words="any"))
    assert {*WORD_PIECES, *SENSITIVE, "lamp"} <= words


def test_dictionary_vocabulary_holds_only_listed_words_on_no_blocklist(planted):
    vocabulary = TriggerVocabulary(planted, words="dictionary", blocklist=("Lamp",))
    words = words_of(planted, vocabulary)
    assert len(words) > 300
    assert words <= dictionary_words()
    assert not words & sensitive_forms()  # the planted ones included
    assert "lamp" not in words  # the user's blocklist
    assert not words & set(WORD_PIECES)  # word pieces are gone
    assert {"river", "apple", "chair"} <= words  # ordinary words stay


def test_the_shipped_blocklist_applies_at_run_time(planted, monkeypatch):
    # a word added to data/trigger_blocklist.txt is left out before the word list is rebuilt
    assert allowed_trigger_word("lamps")
    monkeypatch.setattr(captions, "shipped_blocklist", lambda: frozenset({"lamp"}))
    assert not allowed_trigger_word("lamps") and not allowed_trigger_word("Lamp")
    assert "lamp" not in words_of(planted, TriggerVocabulary(planted))


def test_too_few_dictionary_words_names_the_counts_and_the_fix(planted):
    dictionary = sorted(words_of(planted, TriggerVocabulary(planted)))
    with pytest.raises(
        ValueError,
        match=r"Only 3 of the tokenizer's \d+ tokens \(\d+ round-trip-safe.*"
        r"at least 5.*trigger_words='any'",
    ):
        TriggerVocabulary(planted, blocklist=dictionary[3:], min_size=5)
    # "any" keeps today's behaviour: every round-trip-safe token, whatever min_size asks
    assert len(TriggerVocabulary(planted, words="any", min_size=10**6)) > len(dictionary)


def test_protect_writes_dictionary_triggers_and_honours_the_user_blocklist(clip, tmp_path):
    model, processor = clip
    tokenizer = processor.tokenizer
    dictionary = sorted(words_of(tokenizer, TriggerVocabulary(tokenizer)))
    allowed = set(dictionary[::20])  # ~23 words; the blocklist removes all the others
    config = ONE_ROUND.replace(trigger_blocklist=tuple(sorted(set(dictionary) - allowed)))
    ds = synthetic_captions(24, image_size=32, seed=3)
    transform = ProtectTransform(model, processor, config, work_dir=tmp_path / "work", progress=False)
    protected = transform.protect(ds)
    fitted_words = trigger_words_of(protected, config.trigger_length)
    assert len(fitted_words) == 3 * len(ds)
    assert set(fitted_words) <= allowed  # 72 words drawn from 23 of ~450: chance alone would not do it

    # rows it was not fitted on (online protection) and a saved-then-loaded protector agree
    unseen = synthetic_captions(8, image_size=32, seed=99)
    assert set(trigger_words_of(unseen.map(transform, batched=True, with_indices=True), 3)) <= allowed
    transform.save_pretrained(tmp_path / "protector")
    loaded = ProtectTransform.from_pretrained(tmp_path / "protector", progress=False)
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.vocabulary.token_ids, transform.vocabulary.token_ids)


def test_default_protect_triggers_are_dictionary_words(fitted):
    # the shared session fit runs with the default config: every trigger word is a listed word
    transform, protected = fitted
    assert transform.config.trigger_words == "dictionary"
    words = trigger_words_of(protected, transform.config.trigger_length)
    assert words and set(words) <= dictionary_words() and not set(words) & sensitive_forms()


def test_trigger_words_and_blocklist_enter_the_fingerprint(clip):
    model, processor = clip

    def fingerprint(**changes):
        return ProtectTransform(model, processor, ONE_ROUND.replace(**changes), progress=False).fingerprint

    base = fingerprint()
    assert fingerprint(trigger_words="any") != base
    assert fingerprint(trigger_blocklist=("lamp",)) != base
    assert fingerprint() == base


def test_config_values_round_trip_through_json():
    config = MEMConfig(trigger_words="any", trigger_blocklist=[" Lamp", "HARBOR"])
    assert config.trigger_blocklist == ("lamp", "harbor")
    again = MEMConfig.from_json(config.to_json())
    assert again == config and isinstance(again.trigger_blocklist, tuple)
    assert json.loads(config.to_json())["trigger_blocklist"] == ["lamp", "harbor"]
    assert MEMConfig().trigger_words == "dictionary" and MEMConfig().trigger_blocklist == ()
    assert MEMConfig.paper().trigger_words == "any"  # the paper's settings: any whole-word token


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trigger_words": "words"}, r"MEMConfig.trigger_words='words' is invalid.*\"dictionary\".*\"any\""),
        ({"trigger_words": None}, r"MEMConfig.trigger_words=None is invalid"),
        (
            {"trigger_blocklist": "lamp"},
            r"MEMConfig.trigger_blocklist='lamp' is invalid.*list or tuple.*not one string",
        ),
        ({"trigger_blocklist": ("lamp", 3)}, r"MEMConfig.trigger_blocklist=.*is invalid.*single words"),
        ({"trigger_blocklist": ("red lamp",)}, r"MEMConfig.trigger_blocklist=.*is invalid.*single words"),
        ({"trigger_blocklist": ("",)}, r"MEMConfig.trigger_blocklist=.*is invalid"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(changes, message):
    with pytest.raises(ValueError, match=message):
        MEMConfig(**changes)


def test_cli_flags_set_both_fields():
    arguments = build_parser().parse_args(["protect", "--trigger-words", "any", "--trigger-blocklist", "Lamp, harbor"])
    config = config_from_arguments(arguments)
    assert config.trigger_words == "any" and config.trigger_blocklist == ("lamp", "harbor")
    # the same comma-list parser serves every tuple field
    eot = config_from_arguments(build_parser().parse_args(["protect", "--eot-transforms", "jpeg,blur"]))
    assert eot.eot_transforms == ("jpeg", "blur")


def test_em_has_no_trigger_vocabulary(planted):
    assert trigger_vocabulary(planted, MEMConfig(trigger_length=0, shuffle_captions=False)) is None


def test_protector_saved_before_the_option_keeps_any(clip, tmp_path):
    # a protector saved by algorithm <= 3 has no trigger_words: its rows used every whole-word token
    model, processor = clip
    ProtectTransform(model, processor, ONE_ROUND, progress=False).save_pretrained(tmp_path)
    meta_file = tmp_path / "protect_config.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["trigger_words"], meta["config"]["trigger_blocklist"]
    meta_file.write_text(json.dumps(meta))
    loaded = ProtectTransform.from_pretrained(tmp_path, progress=False)
    assert loaded.config.trigger_words == "any"
    assert len(loaded.vocabulary) == len(TriggerVocabulary(processor.tokenizer, words="any"))
