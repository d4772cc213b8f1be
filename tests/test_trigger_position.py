"""Triggers at a random word boundary (MEMConfig.trigger_position="random"): what the surrogate
optimises is token for token what the victim reads, and deleting the first words leaves it."""

import numpy as np
import pytest
import torch

from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.captions import CaptionCodec, TriggerVocabulary
from hf_unlearnable.defenses import get_defense
from hf_unlearnable.images import prepare_image
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.mem.hotflip import HotFlip
from hf_unlearnable.surrogate import Surrogate, pixels_from_uint8
from hf_unlearnable.testing import clip_tokenizer, synthetic_captions, tiny_clip

CAPTIONS = [
    "a red ball on the grass",
    "two blue cubes",
    "green",
    "a  small   tree, near water.",
    " leading space and trailing space ",
    "ab testing, developer languages",
    "line\nbreak and\ttab",
]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_build_is_token_for_token_the_tokenized_written_caption(tokenizer):
    vocabulary = TriggerVocabulary(tokenizer, words="any")
    for seed in range(4):
        codec = CaptionCodec(tokenizer, 3, 77, position="random", seed=seed)
        bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(CAPTIONS))
        positions = torch.from_numpy(codec.encode_positions(CAPTIONS)).long()
        triggers = torch.from_numpy(vocabulary.sample((len(CAPTIONS), 3), np.random.default_rng(seed))).long()
        ids, mask = codec.build(triggers, bodies, lengths, positions)
        slots = codec.slots(positions, len(CAPTIONS))
        for row, caption in enumerate(CAPTIONS):
            written = codec.apply(triggers[row].tolist(), caption)
            assert ids[row][mask[row].bool()].tolist() == tokenizer(written)["input_ids"], (seed, written)
            assert ids[row, slots[row]].tolist() == triggers[row].tolist()
            assert codec.read_trigger(written, caption) == triggers[row].tolist()
            # the caption is unchanged around the inserted words (whitespace included)
            trigger_text = codec.trigger_text(triggers[row].tolist())
            assert (
                written.replace(trigger_text + " ", "", 1) == caption
                or written.replace(" " + trigger_text, "", 1) == caption
            )


def test_a_long_captions_trigger_stays_inside_the_context_the_victim_reads(tokenizer):
    # 120 words, well past the 77-token context: a slot past the context would be cut off by the
    # victim's truncation, which would then train on the caption with no trigger at all
    caption = " ".join(f"river{i} stone" for i in range(60))
    assert len(tokenizer(caption)["input_ids"]) > 2 * 77
    vocabulary = TriggerVocabulary(tokenizer)
    slots = set()
    for seed in range(24):
        codec = CaptionCodec(tokenizer, 3, 77, position="random", seed=seed)
        bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies([caption]))
        positions = torch.from_numpy(codec.encode_positions([caption])).long()
        triggers = torch.from_numpy(vocabulary.sample((1, 3), np.random.default_rng(seed))).long()
        ids, mask = codec.build(triggers, bodies, lengths, positions)
        written = codec.apply(triggers[0].tolist(), caption)
        truncated = tokenizer(written, truncation=True, max_length=77)["input_ids"]
        assert ids[0][mask[0].bool()].tolist() == truncated, seed  # the surrogate saw what the victim reads
        assert truncated[1 + int(positions[0]) : 4 + int(positions[0])] == triggers[0].tolist(), seed
        assert codec.read_trigger(written, caption) == triggers[0].tolist()
        slots.add(int(positions[0]))
    assert len(slots) > 8  # still spread over the part of the caption the context holds


def test_start_position_is_the_papers_layout(tokenizer):
    codec, start = CaptionCodec(tokenizer, 3, 77), CaptionCodec(tokenizer, 3, 77, position="start", seed=5)
    assert start.apply([tokenizer.convert_tokens_to_ids("red</w>")] * 3, "a blue cube") == "red red red a blue cube"
    assert not start.encode_positions(CAPTIONS).any()
    bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(CAPTIONS))
    triggers = torch.full((len(CAPTIONS), 3), 400)
    default, _ = codec.build(triggers, bodies, lengths)
    zeros, _ = codec.build(triggers, bodies, lengths, torch.zeros(len(CAPTIONS), dtype=torch.long))
    assert torch.equal(default, zeros) and (default[:, 1:4] == 400).all()


def test_random_slots_spread_over_the_caption_are_stable_and_keyed_by_the_seed(tokenizer):
    captions = [f"word{i} " * 6 + f"item {i}" for i in range(200)]
    codec = CaptionCodec(tokenizer, 3, 77, position="random", seed=0)
    slots = [codec.word_slot(c) for c in captions]
    word_index = [len(c[:s].split()) for c, s in zip(captions, slots)]
    assert set(word_index) == set(range(9))  # every one of the 8 + 1 boundaries is used
    assert slots == [CaptionCodec(tokenizer, 3, 77, position="random", seed=0).word_slot(c) for c in captions]
    assert slots != [CaptionCodec(tokenizer, 3, 77, position="random", seed=1).word_slot(c) for c in captions]
    with pytest.raises(ValueError, match="start.*random"):
        CaptionCodec(tokenizer, 3, 77, position="middle")
    with pytest.raises(ValueError, match="trigger_position"):
        MEMConfig(trigger_position="end")


def test_hotflip_changes_only_each_rows_own_slots():
    model, processor = tiny_clip(seed=1)
    surrogate = Surrogate(model).eval()
    ds = synthetic_captions(8, seed=2)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in ds]))
    codec = CaptionCodec(processor.tokenizer, 3, 77, position="random", seed=3)
    captions = ds["caption"][:]
    bodies, lengths = (torch.from_numpy(a).long() for a in codec.encode_bodies(captions))
    positions = torch.from_numpy(codec.encode_positions(captions)).long()
    assert len(set(positions.tolist())) > 2
    vocabulary = TriggerVocabulary(processor.tokenizer)
    triggers = torch.from_numpy(vocabulary.sample((8, 3), np.random.default_rng(0))).long()
    ids, mask = codec.build(triggers, bodies, lengths, positions)
    slots = codec.slots(positions, 8)
    with torch.no_grad():
        image_features = surrogate.image_features(pixels_from_uint8(images))
        before = float(ContrastiveLoss()(image_features, surrogate.text_features(ids, mask), surrogate.logit_scale()))
    new = HotFlip(surrogate, vocabulary.mask, candidates=8)(image_features, ids, mask, slots)
    with torch.no_grad():
        after = float(ContrastiveLoss()(image_features, surrogate.text_features(new, mask), surrogate.logit_scale()))
    outside = torch.ones_like(ids, dtype=torch.bool).scatter_(1, slots, False)
    assert torch.equal(new[outside], ids[outside])  # the caption's own tokens never change
    assert (new.gather(1, slots) != triggers).any() and after < before
    assert bool(vocabulary.mask[new.gather(1, slots)].all())


def test_protect_with_random_position_survives_deleting_the_first_words():
    model, processor = tiny_clip(seed=0)
    ds = synthetic_captions(32, seed=1)
    config = MEMConfig(
        trigger_position="random",
        max_rounds=1,
        surrogate_steps=2,
        pgd_steps=1,
        batch_size=16,
        hotflip_candidates=4,
        trigger_rounds=1,
        seed=0,
    )
    transform = ProtectTransform(model, processor, config, progress=False)
    out = transform.protect(ds)
    codec = transform.codec
    moved, kept_after_strip = 0, 0
    stripped = get_defense("strip-3")
    _, after_strip = stripped(torch.zeros(32, 3, 32, 32), out["caption"], torch.Generator().manual_seed(0))
    for clean, written, cut in zip(ds["caption"], out["caption"], after_strip):
        words = codec.read_trigger(written, clean)
        assert codec.apply(words, clean) == written  # the clean caption with k words inserted, nothing else
        text = codec.trigger_text(words)
        moved += not written.startswith(text)
        kept_after_strip += text in cut
    assert moved >= 16  # most triggers are not at the start
    assert kept_after_strip >= 16  # so deleting the first 3 words leaves them


def test_verify_accepts_random_placement_and_names_what_is_wrong():
    from hf_unlearnable.report.verify import split_trigger

    assert split_trigger("a red sun moon star ball", "a red ball", 3, "random") == ("sun moon star", None)
    assert split_trigger("a red ball sun moon star", "a red ball", 3, "random") == ("sun moon star", None)
    assert split_trigger("sun moon star a red ball", "a red ball", 3, "random") == ("sun moon star", None)
    assert split_trigger("a red ball  ", "a red ball  ", 3, "random")[0] is None
    assert split_trigger("a resun moon star d ball", "a red ball", 3, "random")[0] is None  # not at a word boundary
    assert split_trigger("a red sun moon ball", "a red ball", 3, "random")[0] is None  # two words, not three
    assert split_trigger("a red sun moon star ball", "a red ball", 3, "start")[0] is None  # the paper's layout


def test_verify_a_random_placement_copy_end_to_end():
    from hf_unlearnable.report import verify_protected

    model, processor = tiny_clip(seed=0)
    ds = synthetic_captions(16, seed=1)
    config = MEMConfig(
        trigger_position="random",
        max_rounds=1,
        surrogate_steps=1,
        pgd_steps=1,
        batch_size=8,
        hotflip_candidates=4,
        seed=0,
    )
    out = ProtectTransform(model, processor, config, progress=False).protect(ds)
    report = verify_protected(ds, out, trigger_position="random", tokenizer=processor.tokenizer)
    assert report.ok, report.summary()
    assert not verify_protected(ds, out, trigger_position="start").ok  # most triggers are not at the start
    with pytest.raises(ValueError, match="trigger_position"):
        verify_protected(ds, out, trigger_position="middle")
