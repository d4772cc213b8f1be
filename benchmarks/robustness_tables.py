"""The cross-run tables of docs/benchmarks.md, rebuilt from the `robustness.py` runs of mem3_sweep.json.

The cross-run tables gather cells from many `robustness.py` runs (one list of defenses per run,
clean victims reused across them). This script reads every run of ``mem3_sweep.json`` under
``--results`` (the runs `collect_results.py` folded in) and, so that a fresh run can be tabled
before it is collected, every ``robustness*/robustness.json`` output folder there (a folder
replaces the run of its name, as collecting it would): each run's arguments, and its report
through `hf_unlearnable.audit.load_report`. It prints, in Markdown:

1. MEM-3 at a glance: every defense x victim (from scratch, transfer, fine-tuned) x data set, each
   cell "R@10 of clean R@10 verdict";
2. per data set, the victim from scratch with all three copies (MEM-3, EM, trigger-only);
3. per data set, the transfer and fine-tuned victims with all three copies.

Cells are R@10 on the clean test split, the mean of both directions, with the audit's verdict.
Fine-tuned rows count only from runs at the data set's chosen fine-tuning rate (``--finetune-lr``):
the icons' first victims run fine-tuned at 3e-5, where the victim barely learns even from the clean
copy. A cell measured twice with different figures stops the script, naming both runs. ISS rows
of a copy that was not run under them show "= grayscale" / "= jpeg-10" when that twin was run: the
same operations under another name.

    python benchmarks/robustness_tables.py                   # every table, from benchmarks/results
    python benchmarks/robustness_tables.py --table glance    # only the first (or: scratch, victims)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hf_unlearnable.audit import load_report
from hf_unlearnable.defenses import available_defenses

HERE = Path(__file__).resolve().parent
DATASETS = ("synthetic", "icons")
VICTIMS = ("from scratch", "transfer", "fine-tuned")
COPIES = ("MEM-3", "EM", "Trigger only")
TWINS = {"iss-grayscale": "grayscale", "iss-jpeg-10": "jpeg-10"}
SWEEP = "mem3_sweep.json"  # the results file of the runs tabled


def _lr_map(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {name: float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected DATASET=LR pairs, e.g. icons=3e-4,synthetic=3e-5"
        ) from None


def load_runs(results: Path) -> dict[str, dict]:
    """Run name -> the run: those of ``results/mem3_sweep.json``, then the ``robustness*/`` output
    folders under ``results`` (named by the folder; one replaces a run of its name)."""
    runs: dict[str, dict] = {}
    sweep = results / SWEEP
    if sweep.is_file():
        runs.update((run["name"], run) for run in json.loads(sweep.read_text())["runs"])
    for summary in sorted(results.glob("robustness*/robustness.json")):
        runs[summary.parent.name] = json.loads(summary.read_text())
    return dict(sorted(runs.items()))


def load_cells(results: Path, finetune_lr: dict[str, float]) -> tuple[dict, dict]:
    """(cells, clean): cells[(data set, copy, victim, defense)] = (R@10, verdict, run);
    clean[(data set, victim, defense)] = (R@10, run)."""
    cells: dict = {}
    clean: dict = {}

    def put(table: dict, key: tuple, value: float, rest: tuple, run: str) -> None:
        if key in table and not math.isclose(table[key][0], value, abs_tol=1e-9):
            raise SystemExit(
                f"{key}: {table[key][0]} in {table[key][-1]} but {value} in {run}; "
                "the runs differ (another split, recipe or algorithm version), so the table would mix them"
            )
        table.setdefault(key, (value, *rest, run))

    for name, saved in load_runs(results).items():
        arguments = saved["arguments"]
        data = arguments["dataset"]
        for v in load_report(saved["report"]).verdicts:
            if (
                v.victim == "fine-tuned"
                and data in finetune_lr
                and not math.isclose(arguments["finetune_lr"], finetune_lr[data], rel_tol=1e-9)
            ):
                continue
            put(cells, (data, v.copy, v.victim, v.defense), v.protected_r10, (v.verdict,), name)
            put(clean, (data, v.victim, v.defense), v.clean_r10, (), name)
    return cells, clean


def _verdict(verdict: str) -> str:
    return f"**{verdict}**" if verdict == "broken" else verdict


def glance_table(cells: dict, clean: dict) -> str:
    head = ["Defense"] + [
        f"{data}: {victim}" if index == 0 else victim for data in DATASETS for index, victim in enumerate(VICTIMS)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for defense in available_defenses():
        row = []
        for data in DATASETS:
            for victim in VICTIMS:
                cell = cells.get((data, "MEM-3", victim, defense))
                row.append(
                    ""
                    if cell is None
                    else f"{cell[0]:.1f} of {clean[(data, victim, defense)][0]:.1f} {_verdict(cell[1])}"
                )
        if any(row):
            lines.append(f"| {defense} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def victims_table(cells: dict, clean: dict, data: str, victims: tuple[str, ...] = VICTIMS[1:]) -> str:
    head = ["Defense"]
    for victim in victims:
        head += [f"{victim}: clean", "MEM-3", "EM", "trigger only"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for defense in available_defenses():
        row = []
        for victim in victims:
            reference = clean.get((data, victim, defense))
            row.append("" if reference is None else f"{reference[0]:.1f}")
            for copy in COPIES:
                cell = cells.get((data, copy, victim, defense))
                if cell is not None:
                    row.append(f"{cell[0]:.1f} {_verdict(cell[1])}")
                elif defense in TWINS and (data, copy, victim, TWINS[defense]) in cells:
                    row.append(f"= {TWINS[defense]}")
                else:
                    row.append("")
        if any(row):
            lines.append(f"| {defense} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "results",
        help="folder of mem3_sweep.json (and of fresh robustness.py output folders)",
    )
    parser.add_argument(
        "--finetune-lr",
        type=_lr_map,
        default=_lr_map("icons=3e-4,synthetic=3e-5"),
        help="DATASET=LR pairs: the fine-tuning rate whose fine-tuned rows count (default: %(default)s)",
    )
    parser.add_argument("--table", choices=("all", "glance", "scratch", "victims"), default="all")
    arguments = parser.parse_args(argv)
    cells, clean = load_cells(arguments.results, arguments.finetune_lr)
    if not cells:
        raise SystemExit(
            f"no {SWEEP} and no robustness*/robustness.json under {arguments.results}: run benchmarks/robustness.py first"
        )
    parts = []
    if arguments.table in ("all", "glance"):
        parts.append(
            "MEM-3, R@10 of the clean victim's R@10 under the same defense, and the verdict:\n\n"
            + glance_table(cells, clean)
        )
    if arguments.table in ("all", "scratch"):
        for data in DATASETS:
            if any(key[0] == data and key[2] == "from scratch" for key in cells):
                parts.append(f"The victim from scratch, {data}:\n\n" + victims_table(cells, clean, data, VICTIMS[:1]))
    if arguments.table in ("all", "victims"):
        for data in DATASETS:
            if any(key[0] == data and key[2] != "from scratch" for key in cells):
                parts.append(f"Transfer and fine-tuned victims, {data}:\n\n" + victims_table(cells, clean, data))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
