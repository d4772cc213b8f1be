"""The benchmarks still run: smoke sizes, real processes, their outputs checked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)


def test_protection_strength_smoke_run_under_a_minute(tmp_path):
    started = time.perf_counter()
    result = run("benchmarks/protection_strength.py", "--smoke", "--output", str(tmp_path))
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 60, f"smoke run took {seconds:.0f} s"
    table = (tmp_path / "table.md").read_text()
    for row in ("Chance", "Clean", "Random noise", "EM", "Trigger only", "MEM-3", "MEM-5", "MEM-3, transfer victim"):
        assert f"| {row} |" in table
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "results.json").exists()


def test_protect_speed_tiny():
    result = run("benchmarks/protect_speed.py", "--sizes", "tiny", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| tiny | 32 | 16 |" in result.stdout and "peak RSS" in result.stdout


def test_memory_scaling_small():
    result = run("benchmarks/memory_scaling.py", "--rows", "40", "80")
    assert "peak RSS" in result.stdout and "| 80 |" in result.stdout, result.stderr[-3000:]
