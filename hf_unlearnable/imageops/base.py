"""The registry of image operations, and what every operation shares: parameters drawn per image from
the caller's generator, kornia's augmentations run under a seeded global RNG, 8-bit quantisation.

An operation is a function ``op(pixels, generator, *, <parameters>) -> pixels`` on float
(B, C, H, W) batches in [0, 1], registered once under a name with `register`; its keyword-only
parameters and their defaults are read from its signature. `image_op` binds parameters to a name and
gives a callable ``op(pixels, generator)``: what EOT applies inside PGD and what an image defense
applies to a victim's training batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "OPERATIONS",
    "ImageOp",
    "Operation",
    "available_image_ops",
    "draw",
    "draw_seed",
    "image_op",
    "quantize_8bit",
    "register",
    "seeded_global_rng",
    "uniform",
]


@dataclasses.dataclass(frozen=True)
class Operation:
    """One registered image operation.

    Attributes:
        name: its registry name.
        function: ``function(pixels, generator, **parameters) -> pixels``.
        summary: what it does, one line.
        source: where the computation comes from (the kornia function or augmentation, or "by hand").
        differentiable: whether gradients reach the input pixels (usable inside PGD).
        defaults: each keyword-only parameter and its default.
    """

    name: str
    function: Callable[..., torch.Tensor]
    summary: str
    source: str
    differentiable: bool
    defaults: Mapping[str, Any]


#: name -> registered operation, in registration order
OPERATIONS: dict[str, Operation] = {}


def register(name: str, *, summary: str, source: str, differentiable: bool = True) -> Callable:
    """Decorator: register ``function(pixels, generator, *, parameters...)`` as the image operation `name`.

    Raises:
        ValueError: `name` is taken, or the function has a parameter after ``generator`` that is not
            keyword-only with a default.
    """

    def decorate(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in OPERATIONS:
            raise ValueError(
                f"image operation {name!r} is already registered ({OPERATIONS[name].function.__qualname__})."
            )
        parameters = list(inspect.signature(function).parameters.values())[2:]
        loose = [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY or p.default is p.empty]
        if loose:
            raise ValueError(f"image operation {name!r}: parameters {loose} must be keyword-only with a default.")
        defaults = MappingProxyType({p.name: p.default for p in parameters})
        OPERATIONS[name] = Operation(name, function, summary, source, differentiable, defaults)
        return function

    return decorate


def available_image_ops() -> list[str]:
    """Every registered operation's name, in registration order."""
    return list(OPERATIONS)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageOp:
    """A registered operation with some of its parameters set: ``op(pixels, generator) -> pixels``.

    Build it with `image_op`; the parameters not given keep the operation's defaults.
    """

    name: str
    parameters: Mapping[str, Any]

    @property
    def operation(self) -> Operation:
        """The registry entry."""
        return OPERATIONS[self.name]

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.operation.function(pixels, generator, **self.parameters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageOp) and (self.name, dict(self.parameters)) == (other.name, dict(other.parameters))

    def __hash__(self) -> int:
        return hash((self.name, repr(sorted(self.parameters.items()))))

    def __repr__(self) -> str:
        return f"image_op({', '.join([repr(self.name), *(f'{k}={v!r}' for k, v in self.parameters.items())])})"


def image_op(name: str, **parameters: Any) -> ImageOp:
    """The registered operation `name` with `parameters` set (the others keep their defaults).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        TypeError: a parameter the operation does not take (the message lists those it takes).
    """
    if name not in OPERATIONS:
        raise ValueError(f"unknown image operation {name!r}; valid: {available_image_ops()}.")
    unknown = sorted(set(parameters) - set(OPERATIONS[name].defaults))
    if unknown:
        raise TypeError(
            f"image operation {name!r} takes no parameter {unknown}; it takes {list(OPERATIONS[name].defaults)}."
        )
    return ImageOp(name, MappingProxyType(dict(parameters)))


# ---------------------------------------------------------------------------------------------------
# what the operations share
# ---------------------------------------------------------------------------------------------------


def quantize_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] pixels to the nearest of the 256 uint8 levels (what saving a PNG/JPEG does)."""
    return pixels.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def uniform(generator: torch.Generator, size: int, low: float, high: float) -> torch.Tensor:
    """`size` values uniform in [low, high) from `generator` (float32, CPU)."""
    return low + (high - low) * torch.rand(size, generator=generator)


def draw(value: float | tuple[float, float] | torch.Tensor, generator: torch.Generator | None, size: int):
    """A parameter for a batch of `size`: a number or a tensor as given; a ``(low, high)`` tuple drawn
    uniformly per image from `generator` (a float32 CPU tensor of `size`).

    Raises:
        ValueError: a range to draw from and no generator.
    """
    if not isinstance(value, tuple):
        return value
    if generator is None:
        raise ValueError(f"drawing a parameter from {value} needs a generator (every draw must replay).")
    low, high = value
    return uniform(generator, size, low, high)


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from `generator` (to seed libraries that use torch's global RNG)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator) -> Iterator[None]:
    """Run a block under torch's global CPU RNG seeded from `generator`, restored afterwards.

    kornia's augmentations draw their parameters from the global RNG and take no generator; this
    makes them a deterministic function of `generator` without disturbing the caller's RNG
    (e.g. the victim's dropout).
    """
    seed = draw_seed(generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
