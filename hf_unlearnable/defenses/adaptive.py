"""Adaptive text attacks by a trainer who has read the MEM paper: its trigger is the first k words
of every caption, one trigger per sample.

- `StripFirstWords`: drop the first k words of every caption (k known, or guessed: the registry
  has ``strip-1`` .. ``strip-7``, the trigger lengths of the paper's ablation).
- `RareWordFilter`: drop words that occur in very few captions of the corpus. A per-sample
  trigger is rare by construction (k random words per image), while the words that describe
  images recur; the same vocabulary pruning as caption preprocessing (Karpathy & Fei-Fei 2015
  drop words seen fewer than 5 times).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

from .base import DefenseBase

__all__ = ["RareWordFilter", "StripFirstWords"]


class StripFirstWords(DefenseBase):
    """Delete the first `k` whitespace-separated words of every caption (a caption of k words or
    fewer becomes empty: the attacker's rule does not know where a trigger ends).

    Args:
        k: words to strip, >= 1.
    """

    def __init__(self, k: int, seed: int = 0):
        super().__init__(seed)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}.")
        self.k = k

    def apply(self, pixels, captions, generator, **hooks):
        return pixels, [" ".join(caption.split()[self.k :]) for caption in captions]


def _key(token: str) -> str:
    return token.strip(string.punctuation).lower()


class RareWordFilter(DefenseBase):
    """Drop every word that occurs in fewer than `min_captions` captions of the training corpus.

    Needs corpus statistics: `fit` (called by `train_victim` with every training caption before
    training) counts in how many captions each word (lower-cased, punctuation stripped) occurs.
    Words never seen by `fit` count as rare. A caption whose words are all rare becomes empty.

    Args:
        min_captions: the document-frequency threshold (default 5, the usual caption-vocabulary
            cut-off). With a small vocabulary (e.g. a tiny tokenizer) trigger words repeat across
            captions and survive a low threshold: the attack is then weaker, not broken.
    """

    def __init__(self, min_captions: int = 5, seed: int = 0):
        super().__init__(seed)
        if isinstance(min_captions, bool) or not isinstance(min_captions, int) or min_captions < 2:
            raise ValueError(f"min_captions must be an integer >= 2, got {min_captions!r}.")
        self.min_captions = min_captions
        self.document_frequency: Counter[str] | None = None

    def fit(self, captions: Sequence[str]) -> RareWordFilter:
        """Count, for every word, the captions it occurs in."""
        if isinstance(captions, str):
            raise TypeError("fit() takes the list of all training captions, not one string.")
        frequency: Counter[str] = Counter()
        for caption in captions:
            frequency.update({_key(token) for token in caption.split()} - {""})
        self.document_frequency = frequency
        return self

    def is_rare(self, word: str) -> bool:
        """Whether `word` occurs in fewer than `min_captions` fitted captions."""
        if self.document_frequency is None:
            raise ValueError(
                "RareWordFilter has no corpus statistics: call fit(all_training_captions) first (train_victim does)."
            )
        return self.document_frequency[_key(word)] < self.min_captions

    def apply(self, pixels, captions, generator, **hooks):
        return pixels, [" ".join(token for token in caption.split() if not self.is_rare(token)) for caption in captions]
