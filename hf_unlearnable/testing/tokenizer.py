"""An offline CLIP tokenizer: CLIP's byte-level BPE files, with merges learnt by the `tokenizers`
library's BPE trainer from a small built-in word list.

Same files (``vocab.json``, ``merges.txt``), special tokens and pre-tokenisation as
``openai/clip-vit-base-patch32``: ids 0-511 are the 256 byte symbols, bare and with the ``</w>``
end-of-word suffix, in CLIP's order (``a</w>`` is 320 in both); the learnt merges follow, and
``<|startoftext|>``, ``<|endoftext|>`` are the last two ids. Every word of the list, and every word
the synthetic captions use, is one whole-word token, so the trigger vocabulary is large.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from .scenes import CAPTION_WORDS

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "EXTRA_WORDS", "clip_tokenizer"]

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


BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_END_OF_WORD = "</w>"
#: Bump when the way the tokenizer files are built changes, so old caches are not reused.
#: 2: merges learnt by ``tokenizers``' BpeTrainer (ties go to the lower ids, not the lower string).
_TOKENIZER_FORMAT = "2"


def _byte_alphabet() -> list[str]:
    """The 256 byte-level symbols in CLIP's id order.

    The byte-to-character map (GPT-2's, which CLIP uses) sends the printable bytes to themselves
    and the others to U+0100 onwards in byte order, so CLIP's order is code-point order.
    """
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _train_bpe(words: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn BPE merges over `words` (each counted once) until every word is a single token.

    Returns the vocabulary in id order and the merges in rank order. CLIP's 512 base symbols are
    handed to the trainer as its leading tokens, so they keep CLIP's ids; as the trainer breaks
    ties between equally frequent pairs by their ids, the result depends only on the word list.
    """
    alphabet = _byte_alphabet()
    base = alphabet + [symbol + _END_OF_WORD for symbol in alphabet]
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=_END_OF_WORD))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        # Room for every merge: each one removes at least one symbol from some word.
        vocab_size=len(base) + sum(len(word.encode("utf-8")) for word in words),
        min_frequency=1,
        special_tokens=base,
        end_of_word_suffix=_END_OF_WORD,
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    if tokens[: len(base)] != base:
        raise RuntimeError(
            "tokenizers' BpeTrainer did not keep CLIP's 512 base symbols as the first ids; the "
            "offline tokenizer cannot be built with this tokenizers version."
        )
    # tokenizers >= 0.20 stores a merge as a pair, older releases as one "a b" string.
    merges = [
        (merge[0], merge[1]) if isinstance(merge, list) else tuple(merge.split(" ", 1)) for merge in state["merges"]
    ]
    return tokens, merges


def _tokenizer_files(words: Sequence[str]) -> dict[str, str]:
    """The text of vocab.json, merges.txt and tokenizer_config.json for a CLIP BPE over `words`."""
    tokens, merges = _train_bpe(words)
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


def clip_tokenizer(
    cache_dir: str | os.PathLike | None = None, extra_words: Sequence[str] = ()
) -> transformers.CLIPTokenizer:
    """A CLIP BPE tokenizer built offline, in which every caption and extra word is one token.

    The files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``; CLIP's format) are built
    deterministically on first use and kept under `cache_dir` (default ``$HF_UNLEARNABLE_CACHE`` or
    ``~/.cache/hf_unlearnable``) in a folder named after their content; parallel callers are safe.
    `extra_words` (lower-case letters) become whole-word tokens too, e.g. to plant a word piece or
    a blocklisted word in the vocabulary for a test.
    """
    words = sorted(set(CAPTION_WORDS) | set(EXTRA_WORDS) | {str(word).lower() for word in extra_words})
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
