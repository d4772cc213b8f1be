"""Captions and text triggers.

A protected caption is ``"<trigger words> <original caption>"``. Token-wise the surrogate sees
``[start] t_1 .. t_k body_1 .. body_n [end]``: the k trigger slots sit right after the start token.
With ``MEMConfig.trigger_position="random"`` the trigger words go before a word of the caption
instead (``[start] body_1 .. body_p t_1 .. t_k body_p+1 .. [end]``), the word picked by a hash of
the caption, and the codec builds exactly the tokens the written caption tokenises to.
Trigger tokens come only from a *round-trip-safe* vocabulary (whole-word alphabetic tokens whose
decode-then-encode gives back the same single token), so tokenising the saved text gives back
exactly the optimised ids. By default that vocabulary is further cut to English dictionary words
(`pyspellchecker`'s dictionary and `wordfreq`'s frequent words) that are on no blocklist
(`better-profanity`'s word list plus the user's), so a trigger reads as words, not as word pieces
("gue", "ttle") or slurs. Over-long captions lose tokens at the tail, never the trigger.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import check_caption  # noqa: F401  (re-exported: it used to live here)
from .config import TRIGGER_WORDS, MEMConfig

_WORD = re.compile(r"^[a-z]+$")
_END_OF_WORD = "</w>"
_WORDS = re.compile(r"\S+")

#: A "dictionary word" is in a spelling dictionary (pyspellchecker's English one) *and* among
#: wordfreq's N most frequent English words. Neither list alone is enough: wordfreq counts text as
#: written, so hyphenation debris and abbreviations rank high ("ing" 7,700, "int" 9,800, "tal" and
#: "ter" 20,800); the spelling dictionary drops those but holds rare and archaic words. N = 50,000
#: word forms (inflections count apart) is roughly an adult reader's vocabulary: words near that
#: rank are still familiar ("croissant" 37,900, "walrus" 29,900) and rarer ones are not needed, as
#: a CLIP tokenizer (49,408 tokens) has far fewer whole-word tokens than that. Both lists still let
#: a few pieces through ("ard", "lon"): add them to ``MEMConfig.trigger_blocklist``.
DICTIONARY_SIZE = 50_000
#: Shortest dictionary word. The one- and two-letter entries of both lists are mostly letters,
#: contraction pieces and abbreviations ("s", "ll", "tv", "uk", "mr"); the real ones ("a", "to",
#: "of") are function words, so dropping them costs a trigger a few dozen tokens out of thousands.
MIN_WORD_LETTERS = 3


@functools.lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """The words a ``trigger_words="dictionary"`` trigger may use: lower-case ASCII letters only, at
    least `MIN_WORD_LETTERS` long, among wordfreq's `DICTIONARY_SIZE` most frequent English words
    and in pyspellchecker's English dictionary. Loaded once per process (both ship their data in
    the wheel, so this works offline)."""
    import wordfreq  # imported here: only the "dictionary" trigger vocabulary needs them
    from spellchecker import SpellChecker

    spelling = SpellChecker(language="en", distance=1).word_frequency
    return frozenset(
        word for word in wordfreq.top_n_list("en", DICTIONARY_SIZE)
        if len(word) >= MIN_WORD_LETTERS and _WORD.match(word) and word in spelling
    )


@functools.lru_cache(maxsize=1)
def offensive_words() -> frozenset[str]:
    """The single words of better-profanity's maintained word list, lower-cased.

    Read straight from the package's ``profanity_wordlist.txt`` (no censor machinery). Its few
    multi-word entries ("blow job") are left out: their parts are ordinary words ("blow", "job").
    """
    spec = importlib.util.find_spec("better_profanity")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "better-profanity is not installed; it is a dependency of hf_unlearnable "
            "(pip install better-profanity), needed for MEMConfig.trigger_words='dictionary'."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "profanity_wordlist.txt"
    lines = (line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(line for line in lines if line and " " not in line)


def allowed_trigger_word(word: str, blocklist: Collection[str] = ()) -> bool:
    """Whether `word` may be a trigger word under ``trigger_words="dictionary"``: a dictionary word
    on neither better-profanity's list nor `blocklist` (lower-case words)."""
    word = word.lower()
    return word in dictionary_words() and word not in offensive_words() and word not in blocklist


class TriggerVocabulary:
    """The token ids a trigger may use, found once per tokenizer.

    A token qualifies when it is a whole lower-case alphabetic word (ends with ``</w>``), is no
    special token, and ``encode(decode(id)) == [id]`` without special tokens. With
    ``words="dictionary"`` (the default) its word must also be a dictionary word
    (`dictionary_words`) on neither better-profanity's list (`offensive_words`) nor `blocklist`;
    ``words="any"`` keeps every round-trip-safe token (word pieces included).

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
        blocked = {str(word).lower() for word in blocklist}
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
            safe = [token_id for token_id in safe if allowed_trigger_word(word_of[token_id], blocked)]
        elif blocked:
            safe = [token_id for token_id in safe if word_of[token_id] not in blocked]
        if len(safe) < needed:
            raise ValueError(
                f"Only {len(safe)} of the tokenizer's {len(tokenizer)} tokens ({self.round_trip_safe} round-trip-safe "
                f"whole words) may be trigger words with MEMConfig.trigger_words={words!r} and {len(blocked)} "
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
        return self._build(triggers, bodies, lengths, self.trigger_length, positions)

    def _build(
        self, triggers: torch.Tensor, bodies: torch.Tensor, lengths: torch.Tensor, k: int, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = triggers.shape[0]
        longest = int(lengths.max()) if batch else 0
        device = bodies.device
        width = 2 + k + longest
        column = torch.arange(width, device=device).unsqueeze(0)  # (1, L)
        length = lengths.long().to(device).unsqueeze(1)
        start = torch.zeros_like(length) if positions is None else torch.minimum(positions.long().to(device).unsqueeze(1), length)
        body = torch.cat([bodies[:, :longest].long(), torch.full((batch, 1), self.pad, dtype=torch.long, device=device)], 1)
        trigger = torch.cat([triggers.long().to(device).reshape(batch, k), torch.zeros((batch, 1), dtype=torch.long, device=device)], 1)
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

    def build_dropped(
        self,
        triggers: torch.Tensor,
        bodies: torch.Tensor,
        lengths: torch.Tensor,
        keep: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `build`, but rows where ``keep`` is False get no trigger at all (``[start] body [end]``),
        as a caption reads after an attacker strips the trigger; both kinds padded to one length.

        Args: as `build`, plus keep (B,) bool. Returns input_ids and attention_mask (B, L)."""
        with_trigger, with_mask = self.build(triggers, bodies, lengths, positions)
        without, without_mask = self._build(triggers[:, :0], bodies, lengths, 0)
        pad = with_trigger.shape[1] - without.shape[1]
        without = torch.nn.functional.pad(without, (0, pad), value=self.pad)
        without_mask = torch.nn.functional.pad(without_mask, (0, pad), value=0)
        keep = keep.to(with_trigger.device).unsqueeze(1)
        return torch.where(keep, with_trigger, without), torch.where(keep, with_mask, without_mask)

    def trigger_text(self, trigger_ids: Sequence[int]) -> str:
        """The trigger as words, e.g. ``"harbor quiet lamp"``."""
        return " ".join(self.tokenizer.decode([int(t)]).strip() for t in trigger_ids)

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
                raise ValueError("read_trigger with trigger_position='random' needs the clean caption to find the slots.")
            position = int(self.encode_positions([caption])[0])
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return [int(t) for t in ids[1 + position : 1 + position + self.trigger_length]]
