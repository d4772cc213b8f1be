"""Does the protection protect? The paper's main comparison at CPU scale.

Protects a training set (synthetic scenes, the icon set, or any saved DatasetDict: ``--dataset``) with each method (clean, random noise, EM, trigger-only, MEM-3,
MEM-5), trains a CLIP victim from scratch on each copy, and evaluates retrieval on a clean test set
after every epoch. A transfer row trains a victim of another architecture on the MEM-3 copy.
Writes a Markdown table, a CSV, the per-epoch histories (JSON) and a figure of training loss and
MedR per epoch (like the paper's Figures 1-2).

    python benchmarks/protection_strength.py                       # the recorded run (~1 h, 2 cores)
    python benchmarks/protection_strength.py --dataset icons       # the icon set of build_icon_dataset.py
    python benchmarks/protection_strength.py --smoke               # tiny sizes, < 1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import datasets
import torch
from _common import (  # one victim recipe for every
    KEYS,
    add_victim_and_mem_arguments,
    apply_smoke,
    begin,
    benchmark_method,
    default_output,  # protection benchmark
    load_data,
    provenance,
    victim_config,
)

from hf_unlearnable import ProtectTransform, RandomNoise
from hf_unlearnable.audit import chance_scores
from hf_unlearnable.victim import train_victim


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_victim_and_mem_arguments(parser)
    parser.add_argument("--methods", default="clean,random,em,trigger,mem3,mem5,transfer")
    parser.add_argument(
        "--output", help="folder (default: benchmarks/results/tmp/protection_strength_<dataset>, git-ignored)"
    )
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        apply_smoke(arguments)
    default_output(arguments, "protection_strength")
    return arguments


def protect(method: str, train: datasets.Dataset, arguments, processor) -> tuple[datasets.Dataset, list[dict]]:
    """The training copy for one method, and the protection history (empty for clean/random)."""
    if method == "clean":
        return train, []
    chosen = benchmark_method(method, arguments)
    if isinstance(chosen, RandomNoise):
        return chosen.protect(train, arguments.image_size), []
    surrogate = victim_config(arguments, processor)  # trained from scratch, as in the paper
    transform = ProtectTransform(surrogate, processor, method=chosen, progress=False)
    return transform.protect(train), transform.history


def write_outputs(results: dict, arguments, seconds: dict, output: Path, argv: list[str] | None) -> str:
    output.mkdir(parents=True, exist_ok=True)
    names = {
        "chance": "Chance",
        "clean": "Clean",
        "random": "Random noise",
        "em": "EM",
        "trigger": "Trigger only",
        "mem3": "MEM-3",
        "mem5": "MEM-5",
        "transfer": "MEM-3, transfer victim",
    }
    header = "| Method | " + " | ".join(KEYS) + " | protect s | victim s |"
    lines = [header, "|" + "---|" * (len(KEYS) + 3)]
    csv = ["method," + ",".join(KEYS) + ",protect_seconds,victim_seconds"]
    for method, result in results.items():
        final = result["final"]
        cells = [f"{final[k]:.1f}" for k in KEYS]
        protect_s, victim_s = seconds.get(method, (0.0, 0.0))
        lines.append(f"| {names[method]} | " + " | ".join(cells) + f" | {protect_s:.0f} | {victim_s:.0f} |")
        csv.append(f"{method}," + ",".join(f"{final[k]:.4f}" for k in KEYS) + f",{protect_s:.1f},{victim_s:.1f}")
    table = "\n".join(lines)
    (output / "table.md").write_text(table + "\n")
    (output / "table.csv").write_text("\n".join(csv) + "\n")
    (output / "results.json").write_text(
        json.dumps(
            {**provenance("protection_strength", argv), "arguments": vars(arguments), "results": results}, indent=1
        )
    )
    plot(results, names, output / "curves.png")
    return table


def plot(results: dict, names: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, medr_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for method, result in results.items():
        history = result.get("history")
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        loss_axis.plot(epochs[1:], [h["train_loss"] for h in history[1:]], marker="o", label=names[method])
        medr_axis.plot(epochs, [h["t2i_medr"] for h in history], marker="o", label=names[method])
    if "chance" in results:
        medr_axis.axhline(results["chance"]["final"]["t2i_medr"], color="gray", linestyle="--", label="Chance")
    loss_axis.set(xlabel="epoch", ylabel="victim training loss", title="Training loss")
    medr_axis.set(
        xlabel="epoch", ylabel="text-to-image MedR (clean test)", title="MedR on clean data (higher = protected)"
    )
    medr_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    started = begin(arguments)
    output = Path(arguments.output)
    train, test, _, processor = load_data(arguments)
    methods = [m for m in arguments.methods.split(",") if m]
    results: dict = {"chance": {"final": chance_scores([1] * arguments.test), "history": []}}
    seconds: dict = {}
    copies: dict = {}
    for method in methods:
        source = "mem3" if method == "transfer" else method
        protect_started = time.perf_counter()
        if source not in copies:
            copies[source] = protect(source, train, arguments, processor)
        protect_seconds = time.perf_counter() - protect_started
        protected, protect_history = copies[source]
        victim = victim_config(arguments, processor, transfer=method == "transfer")
        victim_started = time.perf_counter()
        victim = train_victim(
            protected,
            test,
            victim,
            processor,
            epochs=arguments.epochs,
            batch_size=arguments.victim_batch,
            learning_rate=arguments.victim_lr,
            seed=arguments.seed,
            progress=False,
        )
        victim_seconds = time.perf_counter() - victim_started
        seconds[method] = (protect_seconds, victim_seconds)
        results[method] = {"final": victim.history[-1], "history": victim.history, "protection": protect_history}
        final = victim.history[-1]
        print(
            f"{method:9s} protect {protect_seconds:6.0f}s victim {victim_seconds:6.0f}s  "
            + "  ".join(f"{k} {final[k]:.1f}" for k in KEYS),
            flush=True,
        )
    table = write_outputs(results, arguments, seconds, output, argv)
    total = time.perf_counter() - started
    print(f"\n{table}\n")
    print(
        f"train {arguments.train} pairs, test {arguments.test} clean images, {arguments.image_size}px, "
        f"victim {arguments.epochs} epochs; total {total / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {arguments.threads} threads"
    )
    print(f"wrote {output}/table.md, table.csv, results.json, curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
