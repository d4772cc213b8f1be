"""Captions and text triggers.

A protected caption is ``"<trigger words> <original caption>"``. Token-wise the surrogate sees
``[start] t_1 .. t_k body_1 .. body_n [end]``: the k trigger slots sit right after the start token.
With ``MEMConfig.trigger_position="random"`` the trigger words go before a word of the caption
instead (``[start] body_1 .. body_p t_1 .. t_k body_p+1 .. [end]``), the word picked by a hash of
the caption, and the codec builds exactly the tokens the written caption tokenises to.
Trigger tokens come only from a *round-trip-safe* vocabulary (whole-word alphabetic tokens whose
decode-then-encode gives back the same single token), so tokenising the saved text gives back
exactly the optimised ids. By default (``trigger_words="dictionary"``) that vocabulary is further
cut to a shipped list of neutral everyday words (``data/trigger_words.txt``, `dictionary_words`),
built by inclusion from WordNet: things, food, plants, animals, places, weather, colours, sizes,
with every word that has a main sense about people, bodies, health, sex, religion, ethnicity or
nationality, weapons, violence, death, crime, drugs or terrorism left out, and so are slurs,
first names and the words of a blocklist (``data/trigger_blocklist.txt`` and the user's, matched
on the word and its inflections: `blocked`). On CLIP's tokenizer that leaves 6,235 of its 32,875
round-trip-safe whole-word tokens. Over-long captions lose tokens at the tail, never the trigger.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TRIGGER_WORDS, MEMConfig

_WORD = re.compile(r"^[a-z]+$")
_END_OF_WORD = "</w>"
_WORDS = re.compile(r"\S+")

_DATA = Path(__file__).resolve().parent / "data"
#: Shortest trigger word. The one- and two-letter tokens of a BPE vocabulary are mostly letters,
#: contraction pieces and abbreviations ("s", "ll", "tv", "uk", "mr").
MIN_WORD_LETTERS = 3
#: Endings that English inflection and agent nouns add, each with the ending of the base form it
#: came from: WordNet's morphological rules for nouns, verbs and adjectives ("wolves" needs its
#: exception list, the rest do not), plus "-er"/"-ers" ("wanker", "wankers" -> "wank").
_INFLECTIONS = (
    ("s", ""),
    ("es", ""),
    ("es", "e"),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("ies", "y"),
    ("men", "man"),
    ("ed", ""),
    ("ed", "e"),
    ("ied", "y"),
    ("ing", ""),
    ("ing", "e"),
    ("er", ""),
    ("er", "e"),
    ("ier", "y"),
    ("ers", ""),
    ("ers", "e"),
    ("iers", "y"),
    ("est", ""),
    ("est", "e"),
    ("iest", "y"),
)


def word_forms(word: str) -> frozenset[str]:
    """`word` lower-cased and every base form it may be an inflection of, by suffix rules applied
    up to twice, with a doubled final consonant undone ("Cats" -> "cat", "shopping" -> "shop",
    "killings" -> "kill"). Over-generates ("cater" -> "cat"): it only ever blocks more words."""
    forms = {word.strip().lower()}
    for _ in range(2):
        for form in list(forms):
            for ending, base in _INFLECTIONS:
                if form.endswith(ending) and len(form) - len(ending) + len(base) >= 2:
                    stem = form[: len(form) - len(ending)] + base
                    forms.add(stem)
                    if not base and len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiou":
                        forms.add(stem[:-1])  # "shopp" -> "shop"
    return frozenset(forms)


def blocked(word: str, blocklist: Collection[str]) -> bool:
    """Whether `word` is on `blocklist` (lower-case words) as written or as an inflection of a word
    on it, in any case: with "cat" on the list, "cat", "Cats", "catting" are blocked."""
    return not word_forms(word).isdisjoint(blocklist)


def _read_words(name: str) -> frozenset[str]:
    lines = (line.split("#", 1)[0].strip().lower() for line in (_DATA / name).read_text(encoding="utf-8").splitlines())
    return frozenset(line for line in lines if line)


@functools.lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """The words a ``trigger_words="dictionary"`` trigger may use: the shipped list
    ``hf_unlearnable/data/trigger_words.txt`` (9,945 everyday English word forms).

    It was built once by ``tools/build_trigger_words.py`` from WordNet 3.0 by inclusion: a word is
    on it when one of its senses is a concrete thing or a physical property (artifacts, food,
    plants, animals, natural objects, shapes, substances, places, weather, times, quantities;
    colours, sizes, shapes, textures) and no main sense of it or of its base form is sensitive
    (people, bodies, health, sex, religion, peoples and nationalities, weapons, war, violence,
    death, crime, drugs, alcohol, gambling, terrorism; slurs and slang; capitalised names of
    peoples and places), it is no common first name, and neither it nor its base form is on
    `shipped_blocklist` or better-profanity's list. Reading it needs no
    network and no WordNet."""
    return _read_words("trigger_words.txt")


@functools.lru_cache(maxsize=1)
def shipped_blocklist() -> frozenset[str]:
    """The library's own blocklist, ``hf_unlearnable/data/trigger_blocklist.txt``: words that
    WordNet's domains let through but a data owner would not publish at the start of every caption
    ("sexy", "shoot"). Matched like ``MEMConfig.trigger_blocklist`` (`blocked`)."""
    return _read_words("trigger_blocklist.txt")


def allowed_trigger_word(word: str, blocklist: Collection[str] = ()) -> bool:
    """Whether `word` may be a trigger word under ``trigger_words="dictionary"``: on the shipped
    list (`dictionary_words`), and neither it nor a base form of it (`word_forms`) on the shipped
    blocklist or `blocklist` (lower-case words)."""
    word = word.lower()
    return word in dictionary_words() and not blocked(word, shipped_blocklist()) and not blocked(word, blocklist)


class TriggerVocabulary:
    """The token ids a trigger may use, found once per tokenizer.

    A token qualifies when it is a whole lower-case alphabetic word (ends with ``</w>``), is no
    special token, and ``encode(decode(id)) == [id]`` without special tokens. With
    ``words="dictionary"`` (the default) its word must also be on the shipped list of neutral
    everyday words (`dictionary_words`) and blocked neither by the shipped blocklist
    (`shipped_blocklist`) nor by `blocklist`; ``words="any"`` keeps every round-trip-safe token
    (word pieces included) not blocked by `blocklist`. A word is blocked when it or a base form of
    it is on the list, in any case (`blocked`: "cat" blocks "cats", "Cat").

    Args:
        tokenizer: the surrogate's CLIP tokenizer.
        words: "dictionary" or "any" (``MEMConfig.trigger_words``).
        blocklist: extra words never to use (``MEMConfig.trigger_blocklist``), any case.
        min_size: fewest tokens the filtered vocabulary may have (``hotflip_candidates + 1``, so a
            HotFlip candidate list is full besides the current token); capped at the round-trip-safe
            count, so ``words="any"`` without a blocklist only needs one token, as before.
    """

    def __init__(self, tokenizer: Any, words: str = "dictionary", blocklist: Iterable[str] = (), min_size: int = 1):
        if words not in TRIGGER_WORDS:
            raise ValueError(f"TriggerVocabulary words={words!r} is invalid: it must be one of {TRIGGER_WORDS}.")
        user_blocklist = frozenset(str(word).strip().lower() for word in blocklist)
        vocab: dict[str, int] = tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_ids", []))
        words_found, ids = [], []
        for token, token_id in vocab.items():
            if token_id in special or not token.endswith(_END_OF_WORD):
                continue
            word = token[: -len(_END_OF_WORD)]
            if _WORD.match(word):
                words_found.append(word)
                ids.append(token_id)
        encoded = tokenizer(words_found, add_special_tokens=False)["input_ids"] if words_found else []
        safe = sorted(
            token_id
            for word, token_id, got in zip(words_found, ids, encoded)
            if list(got) == [token_id] and tokenizer.decode([token_id]).strip() == word
        )
        if not safe:
            raise ValueError(
                "The tokenizer has no round-trip-safe whole-word tokens to build triggers from; "
                "use a CLIP-style BPE tokenizer (words end with '</w>'), or set trigger_length=0 (EM)."
            )
        # every round-trip-safe token under "any"; the filter may only cut it down to min_size
        needed = max(1, min(min_size, len(safe)))
        self.words, self.round_trip_safe = words, len(safe)
        word_of = dict(zip(ids, words_found))
        if words == "dictionary":
            safe = [token_id for token_id in safe if allowed_trigger_word(word_of[token_id], user_blocklist)]
        elif user_blocklist:
            safe = [token_id for token_id in safe if not blocked(word_of[token_id], user_blocklist)]
        if len(safe) < needed:
            raise ValueError(
                f"Only {len(safe)} of the tokenizer's {len(tokenizer)} tokens ({self.round_trip_safe} round-trip-safe "
                f"whole words) may be trigger words with MEMConfig.trigger_words={words!r} and {len(user_blocklist)} "
                f"blocklisted word(s); at least {needed} are needed (MEMConfig.hotflip_candidates + 1). "
                "Set MEMConfig.trigger_words='any' to allow every whole-word token, shorten "
                "MEMConfig.trigger_blocklist, or use a tokenizer with a larger English vocabulary."
            )
        self.token_ids = np.asarray(safe, dtype=np.int64)
        self.vocab_size = max(len(tokenizer), max(vocab.values()) + 1)
        self.mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.mask[torch.from_numpy(self.token_ids)] = True

    def __len__(self) -> int:
        return len(self.token_ids)

    def sample(self, shape: tuple[int, ...], generator: np.random.Generator) -> np.ndarray:
        """Random trigger ids (the initial t of Algorithm 1)."""
        return self.token_ids[generator.integers(0, len(self.token_ids), size=shape)].astype(np.int32)


def trigger_vocabulary(tokenizer: Any, config: MEMConfig) -> TriggerVocabulary | None:
    """The trigger vocabulary `config` asks for (None for EM, ``trigger_length=0``): one place, so
    fitting, online protection of unseen rows, the baselines and a loaded protector agree."""
    if not config.trigger_length:
        return None
    return TriggerVocabulary(
        tokenizer, config.trigger_words, config.trigger_blocklist, min_size=config.hotflip_candidates + 1
    )


TRIGGER_POSITIONS = ("start", "random")


class CaptionCodec:
    """Token ids with trigger slots, built with tensor operations (no loop over samples).

    Args:
        tokenizer: the surrogate's CLIP tokenizer.
        trigger_length: k, number of trigger slots.
        max_tokens: the whole sequence budget (start + trigger + body + end).
        position: where the trigger goes: "start" (right after the start token, as in the paper)
            or "random" (before a word of the caption chosen from a hash of the caption and
            ``seed``, so it is the same wherever the caption is seen, and an attacker cannot
            delete it by position).
        seed: keys the random word boundary.
    """

    def __init__(self, tokenizer: Any, trigger_length: int, max_tokens: int, position: str = "start", seed: int = 0):
        if position not in TRIGGER_POSITIONS:
            raise ValueError(f"trigger position {position!r} is invalid: it must be one of {TRIGGER_POSITIONS}.")
        self.position = position
        self.seed = seed
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer needs start and end tokens (a CLIP tokenizer has both).")
        body_budget = max_tokens - 2 - trigger_length
        if body_budget < 1:
            raise ValueError(
                f"trigger_length={trigger_length} does not fit the text context of {max_tokens} tokens "
                f"(start + trigger + at least one caption token + end). Use trigger_length <= {max_tokens - 3}."
            )
        self.tokenizer = tokenizer
        self.trigger_length = trigger_length
        self.max_tokens = max_tokens
        self.body_budget = body_budget
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad = int(pad) if pad is not None else self.eos

    def encode_bodies(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Caption bodies as ids without special tokens, cut to the body budget at the tail.

        Returns (ids int32 (n, body_budget) padded with the pad id, lengths int32 (n,)).
        """
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        ids = np.full((len(encoded), self.body_budget), self.pad, dtype=np.int32)
        lengths = np.zeros(len(encoded), dtype=np.int32)
        for index, tokens in enumerate(encoded):
            tokens = tokens[: self.body_budget]
            ids[index, : len(tokens)] = tokens
            lengths[index] = len(tokens)
        return ids, lengths

    # -- where the trigger goes -----------------------------------------------------------
    def word_slot(self, caption: str) -> int:
        """The character index where the trigger is inserted: the start of a word of ``caption``
        (or its end), 0 for "start"; "random" picks one of the n + 1 boundaries from a hash.

        Only boundaries with at most ``body_budget`` tokens before them are candidates, so the
        trigger always lies inside the text context: a victim that truncates a long caption at
        ``max_tokens`` still reads it (and reads exactly what the surrogate optimised). Captions
        that fit the context keep all n + 1 boundaries."""
        if self.position == "start":
            return 0
        boundaries = [match.start() for match in _WORDS.finditer(caption)] + [len(caption.rstrip())]
        if len(self.tokenizer(caption, add_special_tokens=False)["input_ids"]) > self.body_budget:
            # token counts of the prefixes grow with the boundary: bisect for the last one that fits
            low, high = 1, len(boundaries)  # boundaries[0] has no word before it, so it always fits
            while low < high:
                middle = (low + high) // 2
                before = len(self.tokenizer(caption[: boundaries[middle]], add_special_tokens=False)["input_ids"])
                low, high = (middle + 1, high) if before <= self.body_budget else (low, middle)
            boundaries = boundaries[:low]
        digest = hashlib.blake2b(f"{self.seed}\x00{caption}".encode(), digest_size=8).digest()
        return boundaries[int.from_bytes(digest, "little") % len(boundaries)]

    def encode_positions(self, captions: Sequence[str]) -> np.ndarray:
        """For each caption, the number of body tokens before the trigger (int32 (n,)), within
        the body budget; zeros for "start"."""
        positions = np.zeros(len(captions), dtype=np.int32)
        if self.position == "start":
            return positions
        prefixes = [caption[: self.word_slot(caption)] for caption in captions]
        encoded = self.tokenizer(prefixes, add_special_tokens=False)["input_ids"]
        for index, tokens in enumerate(encoded):
            positions[index] = min(len(tokens), self.body_budget)
        return positions

    def slots(self, positions: torch.Tensor | None, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """Columns of the trigger tokens in `build`'s input_ids: (B, k) long."""
        offsets = torch.arange(1, 1 + self.trigger_length, device=device)
        if positions is None:
            return offsets.expand(batch, -1)
        return positions.long().to(device).unsqueeze(1) + offsets

    # -- token ids ----------------------------------------------------------------------------
    def build(
        self, triggers: torch.Tensor, bodies: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[start] body[:p] trigger body[p:] [end] pad..`` for a batch, padded to the longest
        sequence (p = 0 without ``positions``: the trigger right after the start token).

        Args: triggers (B, k) long, bodies (B, body_budget) long, lengths (B,) long, positions (B,)
        long, each <= its length (`encode_positions`).
        Returns: input_ids (B, L) long and attention_mask (B, L) long, L = 2 + k + max(lengths).
        """
        k, batch = self.trigger_length, triggers.shape[0]
        longest = int(lengths.max()) if batch else 0
        device = bodies.device
        width = 2 + k + longest
        column = torch.arange(width, device=device).unsqueeze(0)  # (1, L)
        length = lengths.long().to(device).unsqueeze(1)
        start = (
            torch.zeros_like(length)
            if positions is None
            else torch.minimum(positions.long().to(device).unsqueeze(1), length)
        )
        body = torch.cat(
            [bodies[:, :longest].long(), torch.full((batch, 1), self.pad, dtype=torch.long, device=device)], 1
        )
        trigger = torch.cat(
            [triggers.long().to(device).reshape(batch, k), torch.zeros((batch, 1), dtype=torch.long, device=device)], 1
        )
        # column c holds: 0 start | 1..p body[c-1] | p+1..p+k trigger[c-1-p] | p+k+1..n+k body[c-1-k] | n+k+1 end | pad
        before = (column >= 1) & (column <= start)
        in_trigger = (column > start) & (column <= start + k)
        after = (column > start + k) & (column <= length + k)
        body_before = body.gather(1, (column - 1).clamp(0, longest).expand(batch, -1))
        body_after = body.gather(1, (column - 1 - k).clamp(0, longest).expand(batch, -1))
        trigger_ids = trigger.gather(1, (column - 1 - start).clamp(0, k))
        ids = torch.full((batch, width), self.pad, dtype=torch.long, device=device)
        ids = torch.where(before, body_before, ids)
        ids = torch.where(in_trigger, trigger_ids, ids)
        ids = torch.where(after, body_after, ids)
        ids = torch.where(column == length + k + 1, torch.full_like(ids, self.eos), ids)
        ids[:, 0] = self.bos
        mask = (column <= length + k + 1).long().expand(batch, -1).contiguous()
        return ids, mask

    def trigger_text(self, trigger_ids: Sequence[int]) -> str:
        """The trigger as words, e.g. ``"harbor quiet lamp"``: each trigger token is a whole word
        (``"harbor</w>"``). Read from the token strings, not with ``tokenizer.decode``: transformers'
        CLIPTokenizer patches its decoder when it is built, and a pickled copy (a ``ds.map(num_proc=...)``
        worker) decodes ``"harbor</w>"`` instead of ``"harbor"``."""
        tokens = self.tokenizer.convert_ids_to_tokens([int(t) for t in trigger_ids])
        return " ".join(token.removesuffix(_END_OF_WORD) for token in tokens)

    def apply(self, trigger_ids: Sequence[int], caption: str) -> str:
        """The protected caption: the caption unchanged, with the trigger words and one space
        inserted at its word slot (before the first word for "start")."""
        if self.trigger_length == 0:
            return caption
        cut = self.word_slot(caption)
        trigger = self.trigger_text(trigger_ids)
        if cut >= len(caption.rstrip()) and cut > 0:  # after the last word
            return f"{caption[:cut]} {trigger}{caption[cut:]}"
        return f"{caption[:cut]}{trigger} {caption[cut:]}"

    def read_trigger(self, text: str, caption: str | None = None) -> list[int]:
        """Tokenise a saved caption and return the ids at the trigger slots (for verification);
        with "random" placement the clean ``caption`` says where the slots are."""
        position = 0
        if self.position != "start":
            if caption is None:
                raise ValueError(
                    "read_trigger with trigger_position='random' needs the clean caption to find the slots."
                )
            position = int(self.encode_positions([caption])[0])
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return [int(t) for t in ids[1 + position : 1 + position + self.trigger_length]]
