"""Devices without float64 (Apple's MPS): the loop's cross-process sums must not ask for it."""

from __future__ import annotations

import types

import pytest
import torch

from hf_unlearnable.mem.loop import MEMLoop

_real_tensor = torch.tensor


def mps_like_tensor(data, *args, dtype=None, device=None, **kwargs):
    """`torch.tensor` as on a Mac: float64 on the "mps" device is refused (with MPS's own message);
    anything else is built on the CPU, so the test runs on any machine."""
    if device is not None and torch.device(device).type == "mps":
        if dtype == torch.float64:
            raise TypeError(
                "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
                "Please use float32 instead."
            )
        device = None
    return _real_tensor(data, *args, dtype=dtype, device=device, **kwargs)


def loop_on(device: str, world: int) -> MEMLoop:
    """A MEMLoop with only what `_global_sums` reads: the device, and a reduce over ``world`` processes
    that all hold the same values."""
    loop = MEMLoop.__new__(MEMLoop)
    loop.world = world
    loop.accelerator = types.SimpleNamespace(
        device=torch.device(device), reduce=lambda tensor, reduction: tensor * world
    )
    return loop


@pytest.mark.parametrize("world", [1, 2])
def test_global_sums_work_on_a_device_without_float64(monkeypatch, world):
    monkeypatch.setattr(torch, "tensor", mps_like_tensor)
    with pytest.raises(TypeError, match="float64"):  # the fake device refuses float64, as MPS does
        torch.tensor([1.0], dtype=torch.float64, device="mps")
    loss_sum, rows = 1234.5, 100_003
    assert loop_on("mps", world)._global_sums(loss_sum, rows) == [world * loss_sum, world * rows]


def test_global_sums_keep_float64_where_the_device_has_it():
    loop = loop_on("cpu", 2)
    seen = []
    loop.accelerator.reduce = lambda tensor, reduction: seen.append(tensor.dtype) or tensor * 2
    assert loop._global_sums(0.1, 3) == [0.2, 6.0]
    assert seen == [torch.float64]


SHARED_WORKER = """
import atexit
import os
import sys

import torch
import hf_unlearnable.devices as devices

# Registered first, so it runs last at exit: by then the library must have left the process group
# (a live gloo group can abort the interpreter's shutdown and fail a finished run).
atexit.register(
    lambda: open(sys.argv[2] + f"/exit{os.environ['RANK']}.txt", "w").write(str(torch.distributed.is_initialized()))
)
state = devices.process_state()
folder, report = sys.argv[1], sys.argv[2] + f"/rank{state.process_index}.txt"
lines = []
for case in ("shared", "blind"):
    if case == "blind" and state.process_index == 1:
        devices._sees = lambda probe, token: False  # as on a machine whose own disk has a folder of that name
    try:
        devices.check_shared_folder(folder, state)
        lines.append(f"{case}: ok")
    except ValueError as error:
        lines.append(f"{case}: {error}")
open(report, "w").write("\\n".join(lines))
"""


def test_every_process_must_see_the_work_dir(tmp_path):
    # Several machines with a work dir on each one's own disk split the store; the run stops first.
    from .test_launchers import launcher, run

    script, reports = tmp_path / "worker.py", tmp_path / "reports"
    script.write_text(SHARED_WORKER)
    reports.mkdir()
    work_dir = tmp_path / "not" / "yet"  # not created: the check writes in its nearest existing parent
    run([*launcher("torchrun"), str(script), str(work_dir), str(reports)])
    for rank in (0, 1):  # a file per process: their prints could interleave
        shared, blind = (reports / f"rank{rank}.txt").read_text().splitlines()
        assert shared == "shared: ok"
        assert blind.startswith("blind: the work dir ") and "process 1 on " in blind and "process 0 on" not in blind
        assert "--work-dir /shared/folder" in blind
        assert (reports / f"exit{rank}.txt").read_text() == "False"  # the group was left before shutdown
    assert sorted(path.name for path in tmp_path.iterdir()) == ["reports", "worker.py"]  # no probe left, no folder made
