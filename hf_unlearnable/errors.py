"""The library's own errors: a run that cannot produce protection stops and says why."""

from __future__ import annotations

import math

__all__ = ["NoProtectionError", "NonFiniteLossError", "check_finite"]


class NonFiniteLossError(FloatingPointError):
    """A training or attack loss became NaN or infinite. Training cannot recover from that, and an
    output computed from it would look protected and protect nothing, so the run stops."""


def check_finite(value: float, where: str) -> float:
    """``value`` if it is finite; else `NonFiniteLossError` naming ``where`` and the likely causes."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{where}: the loss is {value}. Likely causes: a learning rate too high for this model "
            "(MEMConfig.learning_rate), float16 overflow (mixed_precision='fp16': use 'bf16' or 'no'), or NaN or "
            "infinite weights in the model passed in. Every batch finished before this one is saved in the work "
            "dir: fix the cause and rerun."
        )
    return value


class NoProtectionError(RuntimeError):
    """A run finished without protecting anything (no pixel moved, or no trigger changed), so its
    output would look like a protected copy and protect nothing."""
