"""One place for the process state and the Accelerator, so every entry point agrees on devices.

The library (`ProtectTransform`), the CLI, the recipe and the victim harness all get their process
state from `process_state()` and their Accelerator from `build_accelerator()`, which is built on
it. Nothing else in the package constructs `PartialState` or `Accelerator`: Accelerate keeps one
process state per process, and the first one built decides whether a multi-process launch on CPU
joins its process group (see `process_state`).
"""

from __future__ import annotations

import atexit
import functools
import os
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import get_int_from_env

# What the launchers set: torchrun / accelerate launch (WORLD_SIZE), then MPI implementations.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def resolve_mixed_precision(mixed_precision: str) -> str:
    """ "auto" becomes bf16 on a bf16-capable GPU and "no" elsewhere; other values pass through.

    A CPU stays in fp32 even where it runs bf16 natively (AVX512-BF16, AMX): measured on such a CPU,
    bf16 autocast protected the icon set 4 points of R@10 less than fp32, beyond the seed spread
    (docs/benchmarks.md, "Precision"). Pass "bf16" to choose it anyway.
    """
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def launcher_world_size() -> int | None:
    """The number of processes the launcher started (WORLD_SIZE and the like); None without a launcher."""
    if not any(name in os.environ for name in _WORLD_SIZE_VARIABLES):
        return None
    return get_int_from_env(list(_WORLD_SIZE_VARIABLES), 1)


def _launched_on_cpu_only() -> bool:
    """Several processes (torchrun / accelerate launch) on a machine without a GPU."""
    several = (launcher_world_size() or 1) > 1
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return several and not gpu


def check_world_size(launcher: int | None, accelerate: int, torch_distributed: int | None) -> None:
    """Stop when the launcher, Accelerate and torch.distributed disagree on the number of processes.

    ``launcher``: WORLD_SIZE as set by torchrun / accelerate launch (None: not launched);
    ``accelerate``: the process state's num_processes; ``torch_distributed``: the process group's
    size (None: no process group). A disagreement means the processes would not share the work:
    each would run alone and they would overwrite each other's work dir and output.
    """
    counts = [
        (f"WORLD_SIZE={launcher} from the launcher", launcher),
        (f"{accelerate} in Accelerate's process state", accelerate),
        (f"{torch_distributed} in torch.distributed's process group", torch_distributed),
    ]
    known = [(text, count) for text, count in counts if count is not None]
    if len({count for _, count in known}) <= 1:
        return
    raise ValueError(
        f"The processes of this run disagree on how many they are ({', '.join(text for text, _ in known)}), so "
        "each would run alone and they would overwrite each other's work dir and output. Usually a PartialState "
        "or Accelerator was built before hf_unlearnable's, without cpu=True, on a machine without a GPU. Fix: call "
        "hf_unlearnable.devices.process_state() before anything else builds one (or build Accelerator(cpu=True) "
        "on CPU), or run a single process with plain python."
    )


def process_state() -> PartialState:
    """This process's Accelerate state: built on first use, checked on every use.

    Accelerate treats a multi-process launch without a GPU (torchrun, ``accelerate launch
    --multi_gpu``) as distributed only when asked for the CPU explicitly; this asks for it, so the
    processes join one gloo process group. A state built earlier by other code is reused, after
    checking that it counts as many processes as the launcher started (`check_world_size`).
    """
    state = PartialState(cpu=_launched_on_cpu_only())
    group = (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else None
    )
    check_world_size(launcher_world_size(), state.num_processes, group)
    if group is not None:
        _destroy_group_at_exit()
    return state


@functools.cache
def _destroy_group_at_exit() -> None:
    """Leave the process group before the interpreter shuts down (registered once per process).

    A process that exits with its gloo group alive can abort at shutdown ("terminate called without
    an active exception", exit code -6) while gloo's threads still hold tensors: the launcher then
    reports a finished run as failed. `Accelerator.end_training` would do the same, but a user's
    script that calls ``ds.map(transform)`` has no place for it. Destroying the group is local to
    each process, so a process that exits early does not wait for the others. Cached: one hook per
    process, however many times the state is asked for.
    """

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def build_accelerator(mixed_precision: str = "auto", **kwargs: Any) -> Accelerator:
    """An Accelerator for the current launch, on the process state of `process_state()`.

    One mixed-precision setting per process: a second, different one is a clear error.
    """
    mixed_precision = resolve_mixed_precision(mixed_precision)
    process_state()  # first, so the Accelerator below adopts this (checked) state
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=_launched_on_cpu_only(), **kwargs)
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        raise ValueError(
            f"mixed_precision={mixed_precision!r} differs from the setting this process already uses "
            "(Accelerate allows one per process); pass the same value, or run in a new process."
        ) from error


def _sees(probe: str, token: str) -> bool:
    try:
        return open(probe, encoding="utf-8").read() == token
    except OSError:
        return False


def check_shared_folder(folder: str | os.PathLike, state: PartialState, what: str = "the work dir") -> None:
    """Stop unless every process of the run sees the file system ``folder`` is (or will be) on.

    With several machines the work dir must be on a file system they all mount: a folder on each
    machine's own disk would split the run's store (the main process ingests into its own copy, the
    others find nothing, or an old run's state). The main process writes a file with a random token
    in ``folder``, or in its nearest existing parent, so that nothing is created where the library
    would not; every process reads it back. Nothing to check with one process.
    """
    if state.num_processes == 1:
        return
    import socket
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    shared: list[str | None] = [None, None]
    if state.is_main_process:
        place = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        while not os.path.isdir(place) and os.path.dirname(place) != place:
            place = os.path.dirname(place)
        token = uuid.uuid4().hex
        probe = os.path.join(place, f".hf_unlearnable-shared-{token}")
        with open(probe, "w", encoding="utf-8") as file:
            file.write(token)
        shared = [probe, token]
    broadcast_object_list(shared, from_process=0)
    probe, token = shared
    seen = gather_object([(state.process_index, socket.gethostname(), _sees(probe, token))])
    state.wait_for_everyone()
    if state.is_main_process:
        os.remove(probe)
    blind = [f"process {rank} on {host}" for rank, host, sees in seen if not sees]
    if blind:
        raise ValueError(
            f"{what} {os.fspath(folder)} is not on a file system every process of this run sees: {', '.join(blind)} "
            f"cannot read what process 0 wrote there, so the processes would not share one store. Fix: put it on a "
            "file system every machine mounts (pass --work-dir /shared/folder, or ProtectTransform(work_dir=...)); "
            "the default work dir is in each machine's own datasets cache."
        )
