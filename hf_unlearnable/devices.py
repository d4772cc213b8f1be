"""One place that builds the Accelerator, so the library and the victim harness agree on devices."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator


def resolve_mixed_precision(mixed_precision: str) -> str:
    """"auto" becomes bf16 on a bf16-capable GPU and "no" elsewhere; other values pass through."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _launched_on_cpu_only() -> bool:
    """Several processes (torchrun / accelerate launch) on a machine without a GPU."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return several and not gpu


def build_accelerator(mixed_precision: str = "auto", **kwargs: Any) -> Accelerator:
    """An Accelerator for the current launch.

    Accelerate treats a multi-process launch without a GPU as distributed only when asked for the
    CPU explicitly; without that each process would run alone and they would overwrite each other.
    One mixed-precision setting per process: a second, different one is a clear error.
    """
    mixed_precision = resolve_mixed_precision(mixed_precision)
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=_launched_on_cpu_only(), **kwargs)
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        raise ValueError(
            f"mixed_precision={mixed_precision!r} differs from the setting this process already uses "
            "(Accelerate allows one per process); pass the same value, or run in a new process."
        ) from error
