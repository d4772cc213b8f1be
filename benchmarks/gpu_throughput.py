"""Throughput on one device: rows per second of a protect run end to end, pairs per second of the victim.

protect: ``--rows`` synthetic captioned scenes at ``--image-size`` px, protected with the library's
default method (`Layered`) by ``ProtectTransform(config, processor, config=MEMConfig(...)).protect(ds)``
against a randomly initialised surrogate (``--model vit-b32``: openai/clip-vit-base-patch32's
architecture, ``vit_b32_config`` of protect_speed.py; ``tiny``: the benchmarks' small CLIP) on a
short schedule (``--rounds``, ``--surrogate-steps``, ``--trigger-rounds``; stated in the output).
Rows per second count everything ``protect`` does: ingest, surrogate steps, PGD, HotFlip, writing
the PNGs. Generating the scenes is timed apart.

victim: `train_victim` on the same kind of model, rows and size, ``--victim-epochs`` epochs;
pairs per second of the last epoch (the first pays the warm-up) and of the first.

    python benchmarks/gpu_throughput.py --device cuda --model vit-b32 --rows 2000 --json out.json
    python benchmarks/gpu_throughput.py --device cpu --model tiny --rows 32 --image-size 32   # seconds

bf16 (autocast through Accelerate) is the default where the GPU supports it, else no mixed precision.
Each stage can run alone (``--stages victim``), in its own process, as benchmarks/gpu_check.sh does.

Projection: the protect stage splits its run into unit costs (one surrogate training step; PGD and
HotFlip sweeps per row, from each round's ``seconds`` and ``surrogate_seconds``; ingest and PNG
writing per row) and multiplies them out for a full schedule: ``--project-rows`` rows with
``--project-rounds``, ``--project-trigger-rounds`` and ``--project-surrogate-steps`` (default:
2,000 rows and MEMConfig's defaults), printing the arithmetic:

    T = (R + R_t) * M * t_step + N * (R * t_pixel_row + R_t * t_trigger_row + t_io_row)

Surrogate training does not grow with the rows (M steps of one batch per round); the sweeps and
the I/O grow linearly with them; everything grows linearly with the rounds.

    python benchmarks/gpu_throughput.py --device cpu --model vit-b32 --rows 64 --stages protect --rounds 1 \
        --trigger-rounds 1 --surrogate-steps 4 --json benchmarks/results/tmp/walltime_vit_b32_cpu/throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("protect", "victim")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--model", default="vit-b32", choices=["vit-b32", "tiny"])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 (vit-b32), 32 (tiny)")
    parser.add_argument("--stages", default="protect,victim", help="comma list of protect, victim")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"], help="auto: bf16 on a GPU")
    parser.add_argument("--rounds", type=int, default=2, help="MEMConfig.max_rounds (pixel layer)")
    parser.add_argument("--surrogate-steps", type=int, default=20, help="MEMConfig.surrogate_steps (M)")
    parser.add_argument("--trigger-rounds", type=int, default=1, help="MEMConfig.trigger_rounds (HotFlip)")
    parser.add_argument("--batch-size", type=int, default=32, help="MEMConfig.batch_size")
    parser.add_argument("--victim-epochs", type=int, default=2)
    parser.add_argument("--victim-batch", type=int, default=256, help="capped at the rows")
    parser.add_argument("--eval-rows", type=int, default=64, help="victim's clean evaluation split")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    from hf_unlearnable import MEMConfig

    defaults = MEMConfig()  # the projection's default schedule is the library's, not restated here
    parser.add_argument("--project-rows", type=int, default=2000, help="projection: N rows")
    parser.add_argument("--project-rounds", type=int, default=defaults.max_rounds, help="projection: R pixel rounds")
    parser.add_argument(
        "--project-trigger-rounds", type=int, default=defaults.trigger_rounds, help="projection: R_t trigger rounds"
    )
    parser.add_argument(
        "--project-surrogate-steps", type=int, default=defaults.surrogate_steps, help="projection: M steps per round"
    )
    arguments = parser.parse_args(argv)
    arguments.stages = [stage.strip() for stage in arguments.stages.split(",") if stage.strip()]
    unknown = sorted(set(arguments.stages) - set(STAGES))
    if unknown or not arguments.stages:
        parser.error(f"--stages: {', '.join(unknown) or 'none given'}; choose from {', '.join(STAGES)}")
    if arguments.image_size is None:
        arguments.image_size = 224 if arguments.model == "vit-b32" else 32
    if arguments.rows < 2:
        parser.error("--rows must be at least 2 (a contrastive batch needs a negative)")
    return arguments


def unit_costs(history: list[dict], rows: int, surrogate_steps: int, protect_s: float) -> dict:
    """Seconds per surrogate step, per row of a pixel-layer sweep (PGD) and of a trigger-layer sweep
    (HotFlip), and per row of everything outside the rounds (ingest, PNG writing, set-up)."""
    steps = len(history) * surrogate_steps
    costs = {"step_s": sum(record["surrogate_seconds"] for record in history) / steps if steps else 0.0}
    for stage, name in (("pixels", "pixel_row_s"), ("triggers", "trigger_row_s")):
        sweeps = [record["seconds"] - record["surrogate_seconds"] for record in history if record["stage"] == stage]
        costs[name] = sum(sweeps) / (len(sweeps) * rows) if sweeps else math.nan
    costs["io_row_s"] = max(protect_s - sum(record["seconds"] for record in history), 0.0) / rows
    return costs


def projection(costs: dict, rows: int, rounds: int, trigger_rounds: int, surrogate_steps: int) -> dict:
    """Wall time of a protect run of ``rows`` rows on this schedule, from the unit costs, with its arithmetic."""
    training = (rounds + trigger_rounds) * surrogate_steps * costs["step_s"]
    # a layer the schedule does not run costs nothing, even where the short run did not measure it (NaN)
    sweeps = rows * sum(
        count * costs[name] for count, name in ((rounds, "pixel_row_s"), (trigger_rounds, "trigger_row_s")) if count
    )
    io = rows * costs["io_row_s"]
    total = training + sweeps + io
    arithmetic = (
        f"({rounds} + {trigger_rounds}) rounds x {surrogate_steps} steps x {costs['step_s']:.3g} s"
        f" + {rows:,} rows x ({rounds} x {costs['pixel_row_s']:.3g} s + {trigger_rounds} x "
        f"{costs['trigger_row_s']:.3g} s + {costs['io_row_s']:.3g} s)"
        f" = {training:,.0f} + {sweeps:,.0f} + {io:,.0f} s = {total:,.0f} s ({total / 3600:.1f} h)"
    )
    return {
        "rows": rows,
        "rounds": rounds,
        "trigger_rounds": trigger_rounds,
        "surrogate_steps": surrogate_steps,
        "training_s": training,
        "sweeps_s": sweeps,
        "io_s": io,
        "total_s": total,
        "arithmetic": arithmetic,
    }


def model_config(name: str, image_size: int, tokenizer):
    """The surrogate's and the victim's architecture, randomly initialised from it."""
    if name == "vit-b32":
        from protect_speed import vit_b32_config  # benchmarks/ is on sys.path when run as a script

        config = vit_b32_config(tokenizer)
        if image_size % config.vision_config.patch_size:
            raise SystemExit(f"--image-size {image_size} is not a multiple of ViT-B/32's patch of 32 px")
        config.vision_config.image_size = image_size
        return config
    from _common import SURROGATE

    from hf_unlearnable.testing import tiny_clip_config

    return tiny_clip_config(image_size, tokenizer=tokenizer, **SURROGATE)


def protect_stage(arguments, processor, mixed_precision: str) -> dict:
    import datasets

    from hf_unlearnable import MEMConfig, ProtectTransform
    from hf_unlearnable.testing import synthetic_captions

    started = time.perf_counter()
    rows = synthetic_captions(arguments.rows, arguments.image_size, seed=0)
    generate_s = time.perf_counter() - started
    config = MEMConfig(
        max_rounds=arguments.rounds,
        surrogate_steps=arguments.surrogate_steps,
        trigger_rounds=arguments.trigger_rounds,
        batch_size=arguments.batch_size,
        mixed_precision=mixed_precision,
    )
    surrogate = model_config(arguments.model, arguments.image_size, processor.tokenizer)
    # A work dir of its own (a parallel run with the same data and settings would share the default one).
    with tempfile.TemporaryDirectory(prefix="gpu_throughput-") as work_dir:
        transform = ProtectTransform(surrogate, processor, config, work_dir=work_dir, progress=False)
        started = time.perf_counter()
        protected = transform.protect(rows)
        protect_s = time.perf_counter() - started
        history = transform.history
        del transform
    assert isinstance(protected, datasets.Dataset) and len(protected) == arguments.rows
    costs = unit_costs(history, len(protected), config.surrogate_steps, protect_s)
    projected = projection(
        costs,
        arguments.project_rows,
        arguments.project_rounds,
        arguments.project_trigger_rounds,
        arguments.project_surrogate_steps,
    )
    return {
        "rows": len(protected),
        "method": config.method_name,
        "schedule": {
            "max_rounds": config.max_rounds,
            "surrogate_steps": config.surrogate_steps,
            "trigger_rounds": config.trigger_rounds,
            "pgd_steps": config.pgd_steps,
            "hotflip_candidates": config.hotflip_candidates,
            "batch_size": config.batch_size,
            "eot_transforms": list(config.eot_transforms),
        },
        "rounds_run": len(history),
        "generate_s": generate_s,
        "protect_s": protect_s,
        "mem_rounds_s": sum(record["seconds"] for record in history),
        "rows_per_s": len(protected) / protect_s,
        "rounds": [{key: record[key] for key in ("stage", "seconds", "surrogate_seconds")} for record in history],
        "unit_costs": costs,
        "projection": projected,
    }


def victim_stage(arguments, processor, mixed_precision: str) -> dict:
    from hf_unlearnable.testing import synthetic_captions
    from hf_unlearnable.victim import train_victim

    train = synthetic_captions(arguments.rows, arguments.image_size, seed=0)
    evaluation = synthetic_captions(min(arguments.eval_rows, arguments.rows), arguments.image_size, seed=1)
    batch = min(arguments.victim_batch, arguments.rows)
    started = time.perf_counter()
    result = train_victim(
        train,
        evaluation,
        model_config(arguments.model, arguments.image_size, processor.tokenizer),
        processor,
        epochs=arguments.victim_epochs,
        batch_size=batch,
        mixed_precision=mixed_precision,
        progress=False,
    )
    total_s = time.perf_counter() - started
    pairs = arguments.rows - (1 if arguments.rows % batch == 1 else 0)  # a last batch of one is dropped
    epochs = result.history[1:]
    return {
        "pairs_per_epoch": pairs,
        "epochs": len(epochs),
        "batch_size": batch,
        "epoch_s": [entry["seconds"] for entry in epochs],
        "pairs_per_s": pairs / epochs[-1]["seconds"],
        "first_epoch_pairs_per_s": pairs / epochs[0]["seconds"],
        "train_loss": epochs[-1]["train_loss"],
        "total_s": total_s,
    }


def main(argv=None) -> int:
    arguments = parse(argv)
    if arguments.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: Accelerate then places everything on the CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch

    from hf_unlearnable.devices import resolve_mixed_precision
    from hf_unlearnable.testing import tiny_clip

    if arguments.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    datasets.disable_progress_bars()
    mixed_precision = resolve_mixed_precision(arguments.mixed_precision)  # one value per process (Accelerate)
    _, processor = tiny_clip(arguments.image_size)  # the offline tokenizer, CLIP's normalisation at this size
    from protect_speed import device_name  # benchmarks/ is on sys.path when run as a script

    device = device_name(torch.device(arguments.device))
    from _common import provenance

    figures = {
        **provenance("gpu_throughput", argv),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(arguments).items()},
        "model": arguments.model,
        "image_size": arguments.image_size,
        "rows": arguments.rows,
        "device": arguments.device,
        "device_name": device,
        "mixed_precision": mixed_precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
    }
    stages = {"protect": protect_stage, "victim": victim_stage}
    for stage in arguments.stages:
        figures[stage] = stages[stage](arguments, processor, mixed_precision)
        if arguments.json is not None:  # after every stage, so a later timeout keeps what was measured
            arguments.json.parent.mkdir(parents=True, exist_ok=True)
            arguments.json.write_text(json.dumps(figures, indent=1))
    print(summary(figures))
    return 0


def summary(figures: dict) -> str:
    head = (
        f"{figures['model']} at {figures['image_size']} px, {figures['rows']} rows, {figures['device']} "
        f"({figures['device_name']}), mixed precision {figures['mixed_precision']}"
    )
    lines = [head]
    if "protect" in figures:
        p, s = figures["protect"], figures["protect"]["schedule"]
        lines.append(
            f"protect ({p['method']}; {s['max_rounds']} rounds x M={s['surrogate_steps']}, {s['pgd_steps']} PGD steps, "
            f"{s['trigger_rounds']} trigger round(s), batch {s['batch_size']}): {p['rows_per_s']:.1f} rows/s "
            f"({p['protect_s']:.1f} s end to end, {p['mem_rounds_s']:.1f} s in {p['rounds_run']} rounds; "
            f"scenes generated in {p['generate_s']:.1f} s)"
        )
        c, j = p["unit_costs"], p["projection"]
        lines.append(
            f"unit costs: {c['step_s']:.3f} s per surrogate step, per row {c['pixel_row_s']:.4f} s of a pixel "
            f"sweep, {c['trigger_row_s']:.4f} s of a trigger sweep, {c['io_row_s']:.4f} s outside the rounds"
        )
        lines.append(f"projected, {j['rows']:,} rows: {j['arithmetic']}")
    if "victim" in figures:
        v = figures["victim"]
        epochs = ", ".join(f"{seconds:.2f}" for seconds in v["epoch_s"])
        lines.append(
            f"victim: {v['pairs_per_s']:.1f} pairs/s (last epoch; first {v['first_epoch_pairs_per_s']:.1f}), "
            f"batch {v['batch_size']}, epochs of {v['pairs_per_epoch']} pairs in {epochs} s"
        )
    for key in ("protect", "victim"):
        for name, value in figures.get(key, {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                lines.append(f"warning: {key}.{name} is {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
