"""The defense protocol that `hf_unlearnable.victim.train_victim` calls, and the helpers every
defense shares: seeded randomness and 8-bit quantisation (those of `hf_unlearnable.imageops`), composition.

A defense is a callable ``defense(pixels, captions, generator) -> (pixels, captions)``:

- ``pixels``: float (B, 3, H, W) in [0, 1], the images *as published* (the uint8 values the
  scraper decoded, divided by 255), before any model normalisation;
- ``captions``: the B caption strings of those images;
- ``generator``: a seeded CPU `torch.Generator`, the only source of randomness (``None``: the
  defense uses its own generator, seeded once from its ``seed``).

It returns pixels of the same shape, clamped to [0, 1], and B strings. Two optional hooks, both
honoured by `train_victim` (and forwarded by `Compose`):

- ``fit(captions: list[str]) -> None``: called once before training with every training caption
  (corpus statistics, e.g. `RareWordFilter`).
- ``needs_model = True``: the defense is then called with a keyword ``loss=``, a closure
  ``loss(pixels, captions) -> scalar tensor`` that computes the victim's current contrastive loss
  on that batch with gradients to ``pixels`` only (e.g. `AdversarialTraining`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..imageops import draw_seed, quantize_8bit

__all__ = ["Compose", "DefenseBase", "Identity", "compose", "draw_seed", "quantize_8bit"]

#: ``loss(pixels, captions) -> scalar tensor``: the victim's contrastive loss on one batch.
LossClosure = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def check_batch(pixels: Any, captions: Any) -> None:
    """Refuse what no defense can work on, naming the argument."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
        got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be a float tensor (B, 3, H, W) in [0, 1], got {got}.")
    if len(captions) != pixels.shape[0]:
        raise ValueError(
            f"captions must hold one string per image: {len(captions)} captions for {pixels.shape[0]} images."
        )


class DefenseBase:
    """Common plumbing: a ``seed`` for standalone use and ``__call__`` -> `apply` with a generator.

    Subclasses implement ``apply(pixels, captions, generator)``; `__call__` validates the batch,
    supplies the defense's own generator when none is given, and clamps the pixels to [0, 1].
    """

    #: Registry name (set by `hf_unlearnable.defenses.get_defense`); the class name otherwise.
    name: str = ""
    needs_model: bool = False

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
        self.seed = seed
        self._own_generator: torch.Generator | None = None

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        if self._own_generator is None:
            self._own_generator = torch.Generator().manual_seed(self.seed)
        return self._own_generator

    def __call__(
        self, pixels: torch.Tensor, captions: Sequence[str], generator: torch.Generator | None = None, **hooks: Any
    ) -> tuple[torch.Tensor, list[str]]:
        check_batch(pixels, captions)
        new_pixels, new_captions = self.apply(pixels.float(), list(captions), self._generator(generator), **hooks)
        return new_pixels.clamp(0.0, 1.0), list(new_captions)

    def apply(
        self, pixels: torch.Tensor, captions: list[str], generator: torch.Generator, **hooks: Any
    ) -> tuple[torch.Tensor, list[str]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})" if self.name else f"{type(self).__name__}()"


class Identity(DefenseBase):
    """``"none"``: the batch as published (the paper's undefended victim)."""

    def apply(self, pixels, captions, generator, **hooks):
        return pixels, captions


class Compose(DefenseBase):
    """Several defenses in order, each on the previous one's output (one generator for all).

    ``fit`` reaches every part that has one, and the victim's ``loss`` closure every part that
    ``needs_model``; put such a part (adversarial training) last so its perturbation is made on
    the batch the model will actually see.
    """

    def __init__(self, *defenses: Callable, seed: int = 0):
        super().__init__(seed)
        if not defenses:
            raise ValueError("compose() needs at least one defense.")
        for index, defense in enumerate(defenses):
            if not callable(defense):
                raise TypeError(f"compose(): argument {index} is a {type(defense).__name__}, not a defense callable.")
        self.defenses = tuple(defenses)
        self.needs_model = any(getattr(d, "needs_model", False) for d in defenses)
        self.name = "+".join(getattr(d, "name", "") or type(d).__name__ for d in defenses)

    def fit(self, captions: Sequence[str]) -> None:
        """Fit every part that has corpus statistics."""
        for defense in self.defenses:
            if callable(getattr(defense, "fit", None)):
                defense.fit(captions)

    def apply(self, pixels, captions, generator, **hooks):
        for defense in self.defenses:
            extra = hooks if getattr(defense, "needs_model", False) else {}
            pixels, captions = defense(pixels, captions, generator, **extra)
            captions = list(captions)
        return pixels, captions

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.defenses))})"


def compose(*defenses: Callable) -> Compose:
    """Chain defenses: ``compose(get_defense("jpeg-75"), get_defense("strip-3"))``."""
    return Compose(*defenses)
