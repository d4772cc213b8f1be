"""Text defenses: EDA (Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance
on Text Classification Tasks", EMNLP 2019), as CleanCLIP (Bansal et al., ICCV 2023) applies it to
captions and the MEM paper's Table 2 evaluates it: random insertion, deletion, swap and synonym
replacement, alpha = 0.1 each.

Synonyms come from a table shipped in the package (``data/synonyms.json``: WordNet 3.0 synonyms
of about 600 everyday words, built by ``tools/build_synonym_table.py``; licence in
``data/WORDNET_LICENSE``), so the defenses work offline. Pass ``synonyms=`` a bigger resource: a
mapping word -> synonyms, or a callable word -> synonyms, e.g. `wordnet_synonyms` (NLTK's full
WordNet, needs ``nltk`` and its ``wordnet`` data downloaded).

Words are whitespace-separated tokens. Look-ups use the lower-cased token without surrounding
punctuation; a replaced token keeps its trailing punctuation. Unlike EDA's reference code the
caption is not lower-cased or stripped of punctuation first (CLIP's tokenizer lower-cases anyway).
"""

from __future__ import annotations

import functools
import json
import random
import string
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

import torch

from .base import DefenseBase, draw_seed

__all__ = ["EDA", "EDA_STOP_WORDS", "SynonymSource", "default_synonyms", "wordnet_synonyms"]

#: EDA's stop words (the list in its reference code, NLTK's English list): never replaced by synonyms.
EDA_STOP_WORDS: frozenset[str] = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is "
    "are was were be been being have has had having do does did doing a an the and but if or because as until "
    "while of at by for with about against between into through during before after above below to from up "
    "down in out on off over under again further then once here there when where why how all any both each few "
    "more most other some such no nor not only own same so than too very s t can will just don should now".split()
)

#: A synonym resource: a mapping word -> synonyms, or a callable word -> synonyms.
SynonymSource = Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]]

_OPERATIONS = ("insert", "delete", "swap", "synonym")


@functools.lru_cache(maxsize=1)
def default_synonyms() -> dict[str, tuple[str, ...]]:
    """The shipped WordNet 3.0 synonym table (word -> synonyms in WordNet sense order)."""
    text = resources.files("hf_unlearnable.defenses").joinpath("data/synonyms.json").read_text(encoding="utf-8")
    return {word: tuple(values) for word, values in json.loads(text).items()}


def wordnet_synonyms() -> Callable[[str], list[str]]:
    """NLTK's full WordNet as a synonym source (EDA's own); needs ``pip install nltk`` and
    ``nltk.download("wordnet")`` once, with network."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
    except (ImportError, LookupError) as error:
        raise ValueError(
            "wordnet_synonyms() needs nltk and its WordNet data: pip install nltk, then python -c "
            "\"import nltk; nltk.download('wordnet')\" (with network). Offline, use the shipped table (synonyms=None)."
        ) from error

    def lookup(word: str) -> list[str]:
        found: list[str] = []
        for synset in wordnet.synsets(word):
            for lemma in synset.lemma_names():
                candidate = lemma.replace("_", " ").replace("-", " ").lower()
                if candidate != word and candidate not in found:
                    found.append(candidate)
        return found

    return lookup


def _key(token: str) -> str:
    return token.strip(string.punctuation).lower()


def _trailing(token: str) -> str:
    core = token.rstrip(string.punctuation)
    return token[len(core) :]


class EDA(DefenseBase):
    """EDA on every caption (Wei & Zou 2019; alpha 0.1 each, as CleanCLIP and the MEM paper).

    With n words in a caption:

    - ``"synonym"``: replace max(1, int(alpha * n)) distinct non-stop words that have synonyms,
      every occurrence of each, by a random synonym;
    - ``"insert"``: max(1, int(alpha * n)) times, insert a random synonym of a random word
      (up to 10 tries to find a word with synonyms) at a random position;
    - ``"swap"``: max(1, int(alpha * n)) times, swap two random words;
    - ``"delete"``: delete each word with probability alpha (a caption of one word is kept;
      if every word goes, one random word stays).

    Args:
        operations: the operations to draw from. One operation: it is applied to every caption.
            Several: each caption gets one of them, chosen uniformly, as EDA's ``eda(...,
            num_aug=1)`` returns one augmented sentence made with a single operation (what
            CleanCLIP does; the registry's ``"eda"`` uses all four).
        alpha: the rate of every operation (default 0.1).
        synonyms: a mapping or callable word -> synonyms (default: the shipped WordNet table).
    """

    def __init__(
        self,
        operations: Sequence[str] = _OPERATIONS,
        alpha: float = 0.1,
        synonyms: SynonymSource | None = None,
        seed: int = 0,
    ):
        super().__init__(seed)
        operations = (operations,) if isinstance(operations, str) else tuple(operations)
        unknown = [op for op in operations if op not in _OPERATIONS]
        if not operations or unknown:
            raise ValueError(f"operations must be a non-empty subset of {list(_OPERATIONS)}, got {list(operations)}.")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}.")
        if synonyms is not None and not (isinstance(synonyms, Mapping) or callable(synonyms)):
            raise TypeError(
                f"synonyms must be a mapping or a callable word -> synonyms, got {type(synonyms).__name__}."
            )
        self.operations = operations
        self.alpha = float(alpha)
        self._synonyms = synonyms

    def synonyms_of(self, word: str) -> list[str]:
        """Synonyms of `word` (its look-up key), without the word itself."""
        source = self._synonyms if self._synonyms is not None else default_synonyms()
        key = _key(word)
        found = source.get(key, ()) if isinstance(source, Mapping) else source(key)
        return [s for s in found if s and s != key]

    # EDA's four operations, on a list of tokens, with a seeded random.Random.
    def _synonym_replacement(self, words: list[str], rng: random.Random) -> list[str]:
        count = max(1, int(self.alpha * len(words)))
        candidates = sorted({_key(w) for w in words if _key(w) and _key(w) not in EDA_STOP_WORDS})
        rng.shuffle(candidates)
        replaced = 0
        words = list(words)
        for key in candidates:
            options = self.synonyms_of(key)
            if not options:
                continue
            choice = rng.choice(options)
            words = [choice + _trailing(w) if _key(w) == key else w for w in words]
            replaced += 1
            if replaced >= count:
                break
        return words

    def _random_insertion(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        for _ in range(max(1, int(self.alpha * len(words)))):
            for _ in range(10):
                options = self.synonyms_of(rng.choice(words)) if words else []
                if options:
                    words.insert(rng.randint(0, len(words)), rng.choice(options))
                    break
        return words

    def _random_swap(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        if len(words) < 2:
            return words
        for _ in range(max(1, int(self.alpha * len(words)))):
            first = rng.randrange(len(words))
            second = first
            for _ in range(3):
                second = rng.randrange(len(words))
                if second != first:
                    break
            words[first], words[second] = words[second], words[first]
        return words

    def _random_deletion(self, words: list[str], rng: random.Random) -> list[str]:
        if len(words) <= 1:
            return list(words)
        kept = [w for w in words if rng.random() > self.alpha]
        return kept or [rng.choice(words)]

    def augment(self, caption: str, rng: random.Random) -> str:
        """One caption, one operation (drawn from `operations`)."""
        words = caption.split()
        operation = self.operations[0] if len(self.operations) == 1 else rng.choice(self.operations)
        method = {
            "insert": self._random_insertion,
            "delete": self._random_deletion,
            "swap": self._random_swap,
            "synonym": self._synonym_replacement,
        }[operation]
        return " ".join(method(words, rng))

    def apply(self, pixels: torch.Tensor, captions: list[str], generator: torch.Generator, **hooks):
        rng = random.Random(draw_seed(generator))
        return pixels, [self.augment(caption, rng) for caption in captions]
