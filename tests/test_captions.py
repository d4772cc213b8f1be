"""Trigger vocabulary and token layout with trigger slots."""

import numpy as np
import pytest
import torch

from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.checks import check_caption
from hf_unlearnable.testing import clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_vocabulary_is_round_trip_safe_whole_words(tokenizer):
    vocabulary = TriggerVocabulary(tokenizer)
    assert len(vocabulary) > 300
    special = set(tokenizer.all_special_ids)
    for token_id in vocabulary.token_ids.tolist():
        word = tokenizer.decode([token_id])
        assert word.isalpha() and token_id not in special
        assert tokenizer(word, add_special_tokens=False)["input_ids"] == [token_id]
    # in the middle of a caption too
    rng = np.random.default_rng(0)
    trigger = vocabulary.sample((3,), rng)
    codec = CaptionCodec(tokenizer, 3, 77)
    assert codec.read_trigger(codec.apply(trigger, "a red circle.")) == trigger.tolist()


def test_build_places_start_trigger_body_end(tokenizer):
    codec = CaptionCodec(tokenizer, 2, 12)
    bodies, lengths = codec.encode_bodies(["a red circle", "a large blue square on the left"])
    ids, mask = codec.build(torch.tensor([[11, 12], [13, 14]]), torch.from_numpy(bodies), torch.from_numpy(lengths))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    first = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert ids[0, : 3 + len(first) + 1].tolist() == [bos, 11, 12, *first, eos]
    assert mask[0].sum() == 3 + len(first) + 1
    assert ids.shape[1] == 3 + int(lengths.max()) + 1
    assert (ids[1, 1:3] == torch.tensor([13, 14])).all() and ids[1, int(mask[1].sum()) - 1] == eos


def test_truncation_cuts_the_tail_never_the_trigger(tokenizer):
    codec = CaptionCodec(tokenizer, 3, 10)
    bodies, lengths = codec.encode_bodies([" ".join(["red"] * 100)])
    assert bodies.shape == (1, 5) and lengths.tolist() == [5]
    ids, mask = codec.build(torch.tensor([[7, 8, 9]]), torch.from_numpy(bodies), torch.from_numpy(lengths))
    assert ids.shape == (1, 10) and ids[0, 1:4].tolist() == [7, 8, 9] and ids[0, -1] == tokenizer.eos_token_id


def test_trigger_too_long_for_the_context(tokenizer):
    with pytest.raises(ValueError, match="trigger_length=8 does not fit.*trigger_length <= 7"):
        CaptionCodec(tokenizer, 8, 10)


def test_em_has_no_trigger_text(tokenizer):
    codec = CaptionCodec(tokenizer, 0, 77)
    assert codec.apply([], "a cat") == "a cat"


@pytest.mark.parametrize(
    "value, error", [(None, ValueError), ("", ValueError), ("  \n", ValueError), (3, TypeError), (["a"], TypeError)]
)
def test_bad_captions_name_row_and_column(value, error):
    with pytest.raises(error, match="'text'.*row 5"):
        check_caption(value, 5, "text")
