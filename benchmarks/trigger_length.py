"""Table 1 of the MEM paper at CPU scale: how long must the trigger be? k = 0 (EM), 1, 3, 5, 7.

Protects the training set with MEM at each trigger length (k = 0 is EM: image noise alone),
trains the paper's victim from scratch on each copy and on the clean copy (one recipe, shared with
benchmarks/robustness.py and benchmarks/protection_strength.py) and evaluates retrieval on a clean
test split, through `hf_unlearnable.evaluate_protection`. Writes trigger_length.md (R@1/5/10 and
MedR both directions, chance, a verdict per k), trigger_length.csv, trigger_length.json and
trigger_length.png (R@10 per copy, chance and clean marked).

    python benchmarks/trigger_length.py                              # synthetic scenes
    python benchmarks/trigger_length.py --dataset icons              # the icon set of build_icon_dataset.py
    python benchmarks/trigger_length.py --lengths 0,3 --defenses none,strip-3
    python benchmarks/trigger_length.py --smoke                      # tiny sizes, < 1 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import (
    add_victim_and_mem_arguments,
    apply_smoke,
    begin,
    default_output,
    load_data,
    machine,
    protect,
    provenance,
    victim_config,
    write_outputs,
)

from hf_unlearnable import evaluate_protection


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_victim_and_mem_arguments(parser)
    parser.add_argument("--lengths", default="0,1,3,5,7", help="trigger lengths k (0 = EM)")
    parser.add_argument("--defenses", default="none", help="comma list of defense names (default: none, as in Table 1)")
    parser.add_argument(
        "--output", help="folder (default: benchmarks/results/tmp/trigger_length_<dataset>, git-ignored)"
    )
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        apply_smoke(arguments)
    default_output(arguments, "trigger_length")
    return arguments


def label(k: int) -> str:
    return "k=0 (EM)" if k == 0 else f"k={k}"


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    started = begin(arguments)
    train, test, _, processor = load_data(arguments)
    lengths = [int(k) for k in arguments.lengths.split(",") if k.strip()]
    copies, protect_seconds = {}, {}
    for k in lengths:
        copies[label(k)], protect_seconds[label(k)] = protect(
            "em" if k == 0 else f"mem{k}", train, arguments, processor
        )
        print(f"protected with {label(k)} in {protect_seconds[label(k)]:.0f} s", flush=True)
    report = evaluate_protection(
        train,
        copies,
        test,
        defenses=[d for d in arguments.defenses.split(",") if d],
        victim=victim_config(arguments, processor),
        processor=processor,
        epochs=arguments.epochs,
        batch_size=arguments.victim_batch,
        learning_rate=arguments.victim_lr,
        seed=arguments.seed,
        progress=False,
    )
    total = time.perf_counter() - started
    command = provenance("trigger_length", argv)["command"]
    seconds = ", ".join(f"{k} {v:.0f}" for k, v in protect_seconds.items())
    header = [
        f"# Trigger length (Table 1 of the MEM paper): {arguments.dataset}",
        "",
        f"`{command}`",
        "",
        f"{len(train)} training pairs, {len(test)} clean test images, {arguments.image_size} px; victim from scratch, "
        f"{arguments.epochs} epochs, batch {arguments.victim_batch}, lr {arguments.victim_lr:g}; MEM {arguments.rounds} "
        f"rounds, M = {arguments.surrogate_steps}, {arguments.pgd_steps} PGD steps. Protect seconds: {seconds}. "
        f"Total {total / 60:.1f} min on {machine()}.",
    ]
    write_outputs(
        report,
        Path(arguments.output),
        "trigger_length",
        header,
        {"arguments": vars(arguments), "protect_seconds": protect_seconds},
        total_seconds=total,
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
