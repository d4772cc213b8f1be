"""benchmarks/gpu_check.sh, the command for a lent GPU, runs end to end on a CPU with the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearnable import MEMConfig

ROOT = Path(__file__).resolve().parents[1]
CPU = {
    "GPU_CHECK_DEVICE": "cpu",
    "GPU_CHECK_MODEL": "tiny",
    "GPU_CHECK_ROWS": "32",
    "GPU_CHECK_SPEED_ARGS": "--repeats 1",
    "GPU_CHECK_THROUGHPUT_ARGS": "--rounds 1 --surrogate-steps 4 --victim-epochs 1",
}


def gpu_check(out: Path, **settings: str) -> subprocess.CompletedProcess:
    unset = [name for name in os.environ if name.startswith("GPU_CHECK_")]  # the caller's own settings
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env.update(OUT=str(out), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", **settings)
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_gpu_check_on_a_cpu_writes_every_figure(tmp_path):
    result = gpu_check(tmp_path, GPU_CHECK_PEAK_TFLOPS="1", **CPU)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and not report["problems"] and report["peak_tflops"] == 1.0
    assert report["device"] == "cpu" and report["model"] == "tiny" and report["rows"] == 32
    assert set(report["stages"]) == {"protect_speed", "protect", "victim"}
    assert all(stage["status"] == "ok" and stage["seconds"] > 0 for stage in report["stages"].values())
    figures = report["figures"]
    assert set(figures) >= {"hotflip_batch_s", "pgd_batch_s", "mfu_pgd", "mfu_hotflip", "pgd_tflops"}
    assert set(figures) >= {"hotflip_flops_per_sample", "protect_rows_per_s", "victim_pairs_per_s"}
    for name, value in figures.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    assert figures["mfu_pgd"] < 1 and report["mfu_pgd_meets_target"] is False  # a CPU against 1 TFLOP/s
    assert report["protect"]["rows"] == 32 and report["protect"]["schedule"]["max_rounds"] == 1
    assert report["protect"]["method"] == "layered" and report["victim"]["pairs_per_epoch"] == 32
    assert report["arguments"]["GPU_CHECK_ROWS"] == "32"
    projected = report["protect"]["projection"]  # the default schedule on 2,000 rows, from this run's unit costs
    assert projected["rows"] == 2000 and projected["surrogate_steps"] == MEMConfig().surrogate_steps
    assert projected["total_s"] > report["protect"]["protect_s"] and "= " in projected["arithmetic"]
    for name in ("protect_speed.json", "protect.json", "victim.json", "protect.log", "stages.tsv"):
        assert (tmp_path / name).is_file()
    assert "gpu_check: OK" in result.stdout and "rows/s end to end" in result.stdout
    # protect_speed.json carries what collect_results.py requires, so the card's figures can be committed
    collected = subprocess.run(
        [
            sys.executable,
            "benchmarks/collect_results.py",
            str(tmp_path / "speed.json"),
            str(tmp_path),
            "--experiment",
            "x",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    (run,) = json.loads((tmp_path / "speed.json").read_text())["runs"]
    assert run["command"].startswith("python benchmarks/protect_speed.py ") and run["algorithm_version"] >= 1
    assert run["models"]["tiny"]["pgd_batch_s"] > 0


@pytest.mark.parametrize(
    ("card", "message"),
    [("", "no GPU card name"), ("Mystery Accelerator 9000", "unknown card 'Mystery Accelerator 9000'")],
)
def test_gpu_check_without_a_known_card_says_what_to_set(tmp_path, card, message):
    result = gpu_check(tmp_path, GPU_CHECK_CARD=card, **CPU)
    assert result.returncode != 0 and message in result.stderr and "GPU_CHECK_PEAK_TFLOPS=" in result.stderr
    assert not (tmp_path / "gpu_check.json").exists() and not (tmp_path / "stages.tsv").exists()


def test_peak_of_each_card_name(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check_report

    names = {
        "NVIDIA H100 80GB HBM3": 989,
        "NVIDIA H100 PCIe": 756,
        "NVIDIA H100 NVL": 835,
        "NVIDIA H200": 989,
        "NVIDIA H200 NVL": 835,
        "NVIDIA A100-SXM4-80GB": 312,
    }
    assert {name: gpu_check_report.peak_tflops(name) for name in names} == names
    listed = subprocess.run(
        [sys.executable, "benchmarks/gpu_check_report.py", "peak", "NVIDIA H200"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert listed.returncode == 0 and listed.stdout.strip() == "989"


def test_protect_speed_figures_are_found_under_their_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_check_report import speed_entry

    entry = {"model": "vit-b32", "mfu_pgd": 0.5}
    assert speed_entry({"models": {"vit-b32": entry}}, "vit-b32") == entry  # what protect_speed.py --json writes
    assert speed_entry({"models": {"tiny": entry}}, "vit-b32") is None and speed_entry(None, "tiny") is None


def test_projection_of_the_measured_schedule_gives_back_the_measured_time(monkeypatch):
    """Unit costs split a run without losing or double-counting a second, and the projection scales
    each part by what it grows with: training by rounds and steps, sweeps and I/O by rows and rounds."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_throughput import projection, unit_costs

    history = [
        {"stage": "pixels", "seconds": 10.0, "surrogate_seconds": 4.0},
        {"stage": "pixels", "seconds": 12.0, "surrogate_seconds": 4.4},
        {"stage": "triggers", "seconds": 20.0, "surrogate_seconds": 3.6},
    ]
    costs = unit_costs(history, rows=64, surrogate_steps=4, protect_s=45.2)
    assert costs["step_s"] == pytest.approx(12.0 / 12)
    assert costs["pixel_row_s"] == pytest.approx(13.6 / (2 * 64))
    assert costs["trigger_row_s"] == pytest.approx(16.4 / 64) and costs["io_row_s"] == pytest.approx(3.2 / 64)
    same = projection(costs, rows=64, rounds=2, trigger_rounds=1, surrogate_steps=4)
    assert same["total_s"] == pytest.approx(45.2)
    bigger = projection(costs, rows=640, rounds=4, trigger_rounds=2, surrogate_steps=8)
    assert bigger["training_s"] == pytest.approx(4 * same["training_s"])  # 2x rounds, 2x steps, rows do not count
    assert bigger["sweeps_s"] == pytest.approx(20 * same["sweeps_s"]) and bigger["io_s"] == pytest.approx(10 * 3.2)
    assert f"{bigger['total_s']:,.0f} s" in bigger["arithmetic"]
    # EM (no trigger layer) measured without trigger rounds: the unmeasured layer costs nothing
    em = unit_costs(history[:2], rows=64, surrogate_steps=4, protect_s=25.0)
    assert math.isnan(em["trigger_row_s"])
    assert projection(em, rows=64, rounds=2, trigger_rounds=0, surrogate_steps=4)["total_s"] == pytest.approx(25.0)
