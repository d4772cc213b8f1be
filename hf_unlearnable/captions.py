"""Captions and text triggers.

A protected caption is ``"<trigger words> <original caption>"``. Token-wise the surrogate sees
``[start] t_1 .. t_k body_1 .. body_n [end]``: the k trigger slots sit right after the start token.
Trigger tokens come only from a *round-trip-safe* vocabulary (whole-word alphabetic tokens whose
decode-then-encode gives back the same single token), so tokenising the saved text gives back
exactly the optimised ids. Over-long captions lose tokens at the tail, never the trigger.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .checks import check_caption  # noqa: F401  (re-exported: it used to live here)

_WORD = re.compile(r"^[a-z]+$")
_END_OF_WORD = "</w>"


class TriggerVocabulary:
    """The token ids a trigger may use, found once per tokenizer.

    A token qualifies when it is a whole lower-case alphabetic word (ends with ``</w>``), is no
    special token, and ``encode(decode(id)) == [id]`` without special tokens.
    """

    def __init__(self, tokenizer: Any):
        vocab: dict[str, int] = tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_ids", []))
        words, ids = [], []
        for token, token_id in vocab.items():
            if token_id in special or not token.endswith(_END_OF_WORD):
                continue
            word = token[: -len(_END_OF_WORD)]
            if _WORD.match(word):
                words.append(word)
                ids.append(token_id)
        encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
        safe = sorted(
            token_id
            for word, token_id, got in zip(words, ids, encoded)
            if list(got) == [token_id] and tokenizer.decode([token_id]).strip() == word
        )
        if not safe:
            raise ValueError(
                "The tokenizer has no round-trip-safe whole-word tokens to build triggers from; "
                "use a CLIP-style BPE tokenizer (words end with '</w>'), or set trigger_length=0 (EM)."
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


class CaptionCodec:
    """Token ids with trigger slots, built with tensor operations (no loop over samples).

    Args:
        tokenizer: the surrogate's CLIP tokenizer.
        trigger_length: k, number of trigger slots after the start token.
        max_tokens: the whole sequence budget (start + trigger + body + end).
    """

    def __init__(self, tokenizer: Any, trigger_length: int, max_tokens: int):
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

    def build(
        self, triggers: torch.Tensor, bodies: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[start] trigger body [end] pad..`` for a batch, padded to the longest sequence.

        Args: triggers (B, k) long, bodies (B, body_budget) long, lengths (B,) long.
        Returns: input_ids (B, L) long and attention_mask (B, L) long, L = 2 + k + max(lengths).
        """
        return self._build(triggers, bodies, lengths, self.trigger_length)

    def _build(
        self, triggers: torch.Tensor, bodies: torch.Tensor, lengths: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = triggers.shape[0]
        longest = int(lengths.max()) if batch else 0
        device = bodies.device
        body = bodies[:, :longest].long()
        body = torch.where(torch.arange(longest, device=device) < lengths.unsqueeze(1), body, self.pad)
        ids = torch.cat(
            [
                torch.full((batch, 1), self.bos, dtype=torch.long, device=device),
                triggers.long().to(device).reshape(batch, k),
                body,
                torch.full((batch, 1), self.pad, dtype=torch.long, device=device),
            ],
            dim=1,
        )
        body_end = 1 + k + lengths.long().unsqueeze(1)  # index of the end token
        ids.scatter_(1, body_end, self.eos)
        mask = (torch.arange(ids.shape[1], device=device).unsqueeze(0) <= body_end).long()
        return ids, mask

    def build_dropped(
        self, triggers: torch.Tensor, bodies: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `build`, but rows where ``keep`` is False get no trigger at all (``[start] body [end]``),
        as a caption reads after an attacker strips the trigger; both kinds padded to one length.

        Args: as `build`, plus keep (B,) bool. Returns input_ids and attention_mask (B, L)."""
        with_trigger, with_mask = self.build(triggers, bodies, lengths)
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
        """The protected caption: trigger words, one space, the caption unchanged."""
        if self.trigger_length == 0:
            return caption
        return f"{self.trigger_text(trigger_ids)} {caption}"

    def read_trigger(self, text: str) -> list[int]:
        """Tokenise a saved caption and return the ids at the trigger slots (for verification)."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return [int(t) for t in ids[1 : 1 + self.trigger_length]]
