"""The two Python steps of benchmarks/gpu_check.sh: the card's peak, and the one JSON with its summary.

    python benchmarks/gpu_check_report.py peak "NVIDIA H100 80GB HBM3"   # prints 989
    python benchmarks/gpu_check_report.py report OUT_DIR --card ... --peak-tflops ... --model ... --rows ...

``report`` gathers what the stages left in OUT_DIR (stages.tsv, protect_speed.json, protect.json,
victim.json, nvidia-smi.csv) into OUT_DIR/gpu_check.json, prints a summary and exits 1 when a
stage failed or a figure is missing, not positive or not finite. Standard library only, so it runs
before the package is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
from pathlib import Path

#: Dense bf16 tensor-core peak in TFLOP/s (no sparsity), by a part of the name the card reports
#: (``torch.cuda.get_device_name()``, nvidia-smi); the first match wins, so variants come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # SXM, and GH200
    ("A100", 312.0),
)
#: The PGD model FLOP utilisation the library aims for on a GPU.
MFU_TARGET_PGD = 0.40
OVERRIDE = "GPU_CHECK_PEAK_TFLOPS"
#: What gpu_check.json takes from protect_speed.py --json (per batch of its model).
SPEED_FIGURES = (
    "hotflip_batch_s",
    "pgd_batch_s",
    "hotflip_flops_per_sample",
    "pgd_flops_per_sample",
    "hotflip_tflops",
    "pgd_tflops",
    "mfu_hotflip",
    "mfu_pgd",
)


def peak_tflops(card: str) -> float:
    """The card's dense bf16 peak; SystemExit with what to set when the card is unknown or unnamed."""
    if not card.strip():
        raise SystemExit(
            f"gpu_check: no GPU card name (no CUDA device seen, GPU_CHECK_CARD unset), so no peak to measure MFU "
            f"against. Set {OVERRIDE}=<the device's dense bf16 TFLOP/s> or GPU_CHECK_CARD=<its name>."
        )
    for part, tflops in PEAK_TFLOPS:
        if part.lower() in card.lower():
            return tflops
    known = ", ".join(f"{part} {tflops:g}" for part, tflops in PEAK_TFLOPS)
    raise SystemExit(
        f"gpu_check: unknown card {card!r}: its dense bf16 peak is not in the table ({known} TFLOP/s). "
        f"Set {OVERRIDE}=<its dense bf16 TFLOP/s, without sparsity>."
    )


def read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def speed_entry(data, model: str) -> dict | None:
    """protect_speed.py --json's figures for ``model`` (its ``models`` dict; None when absent)."""
    models = data.get("models") if isinstance(data, dict) else None
    entry = models.get(model) if isinstance(models, dict) else None
    return entry if isinstance(entry, dict) else None


def read_stages(path: Path) -> dict:
    stages = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, rc, seconds, limit = line.split("\t")
            stages[name] = {"status": status, "rc": int(rc), "seconds": float(seconds), "limit_s": int(limit)}
    return stages


def read_nvidia_smi(path: Path) -> list[dict] | None:
    """nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv."""
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    keys = [key.strip() for key in lines[0].split(",")]
    return [dict(zip(keys, (value.strip() for value in line.split(",")), strict=False)) for line in lines[1:]]


def library_version() -> str | None:
    try:
        return importlib.metadata.version("hf-unlearnable")
    except importlib.metadata.PackageNotFoundError:
        return None


def good(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def gather(arguments) -> dict:
    out = arguments.out
    speed = speed_entry(read_json(out / "protect_speed.json"), arguments.model)
    protect = (read_json(out / "protect.json") or {}).get("protect")
    victim = (read_json(out / "victim.json") or {}).get("victim")
    speed = speed or {}
    figures = {key: speed.get(key) for key in SPEED_FIGURES}
    figures.update(
        {
            "protect_rows_per_s": (protect or {}).get("rows_per_s"),
            "victim_pairs_per_s": (victim or {}).get("pairs_per_s"),
        }
    )
    stages = read_stages(out / "stages.tsv")
    problems = [f"stage {name}: {stage['status']}" for name, stage in stages.items() if stage["status"] != "ok"]
    problems += [f"{name} is {value!r}" for name, value in figures.items() if not good(value)]
    if protect is not None and protect.get("rows") != arguments.rows:
        problems.append(f"protect wrote {protect.get('rows')} rows, not {arguments.rows}")
    mfu = figures["mfu_pgd"]
    return {
        "command": "bash benchmarks/gpu_check.sh",
        "library_version": library_version(),
        "arguments": {name: value for name, value in sorted(os.environ.items()) if name.startswith("GPU_CHECK_")},
        "card": arguments.card,
        "peak_tflops": arguments.peak_tflops,
        "peak_source": arguments.peak_source,
        "device": arguments.device,
        "model": arguments.model,
        "rows": arguments.rows,
        "mixed_precision": arguments.mixed_precision,
        "budget_s": arguments.budget,
        "total_s": arguments.total,
        "nvidia_smi": read_nvidia_smi(out / "nvidia-smi.csv"),
        "stages": stages,
        "figures": figures,
        "mfu_target_pgd": MFU_TARGET_PGD,
        "mfu_pgd_meets_target": bool(good(mfu) and mfu >= MFU_TARGET_PGD),
        "protect_speed": speed or None,
        "protect": protect,
        "victim": victim,
        "problems": problems,
        "ok": not problems,
    }


def percent(value) -> str:
    return f"{100 * value:.1f}%" if good(value) else "-"


def number(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if good(value) else "-"


def summary(report: dict) -> str:
    f = report["figures"]
    lines = [
        f"gpu_check: {report['card'] or report['device']}, peak {report['peak_tflops']:g} TFLOP/s "
        f"({report['peak_source']}), {report['model']}, {report['mixed_precision']}, "
        f"{report['total_s']:.0f} s of a {report['budget_s']} s budget",
    ]
    for name, stage in report["stages"].items():
        lines.append(f"  stage {name:<14} {stage['status']:<8} {stage['seconds']:7.1f} s (limit {stage['limit_s']} s)")
    meets = "meets" if report["mfu_pgd_meets_target"] else "BELOW"
    lines += [
        f"  HotFlip {number(f['hotflip_batch_s'])} s/batch, {number(f['hotflip_tflops'], 1)} TFLOP/s, "
        f"MFU {percent(f['mfu_hotflip'])}",
        f"  8 PGD steps {number(f['pgd_batch_s'])} s/batch, {number(f['pgd_tflops'], 1)} TFLOP/s, "
        f"MFU {percent(f['mfu_pgd'])} "
        f"({meets} the {percent(report['mfu_target_pgd'])} target)",
    ]
    protect = report["protect"]
    if protect:
        s = protect["schedule"]
        lines.append(
            f"  protect {protect['rows']} rows: {number(f['protect_rows_per_s'], 1)} rows/s end to end "
            f"({protect['method']}; {s['max_rounds']} rounds x M={s['surrogate_steps']}, {s['trigger_rounds']} trigger "
            f"round(s), batch {s['batch_size']})"
        )
    if report["victim"]:
        lines.append(f"  victim: {number(f['victim_pairs_per_s'], 1)} pairs/s (batch {report['victim']['batch_size']})")
    lines += [f"  problem: {problem}" for problem in report["problems"]]
    lines.append("gpu_check: OK" if report["ok"] else "gpu_check: FAILED")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    peak = commands.add_parser("peak", help="print the card's dense bf16 peak in TFLOP/s")
    peak.add_argument("card")
    report = commands.add_parser("report", help="write OUT/gpu_check.json and print the summary")
    report.add_argument("out", type=Path)
    for name in ("card", "peak-source", "device", "model", "mixed-precision"):
        report.add_argument(f"--{name}", required=True)
    report.add_argument("--peak-tflops", type=float, required=True)
    report.add_argument("--rows", type=int, required=True)
    report.add_argument("--budget", type=int, required=True)
    report.add_argument("--total", type=float, required=True)
    arguments = parser.parse_args(argv)
    if arguments.command == "peak":
        print(f"{peak_tflops(arguments.card):g}")
        return 0
    result = gather(arguments)
    (arguments.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(summary(result))
    print(f"wrote {arguments.out / 'gpu_check.json'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
