"""Fold fresh benchmark runs into a committed results file, one file per experiment.

A results file under benchmarks/results (strength.json, layered.json, mem3_sweep.json, ...) is
``{"experiment": "<title>", "runs": [{"name": ..., ...}, ...]}``: one run per benchmark invocation,
named by its output folder, sorted by name, in compact JSON. A run is the benchmark's own JSON
(robustness.json, ablation.json, pixel_shortcuts.json, trigger_length.json, protection_strength's
results.json, gpu_throughput's throughput.json or protect_speed's protect_speed.json: the command that wrote it, the library and algorithm versions, its arguments, its
verdicts or scores) without the per-epoch histories: a report's ``histories`` become ``{}``, a
``history`` list ``[]``. The Markdown, CSV and figures stay in the folder, which is not committed.

    python benchmarks/robustness.py --dataset icons --defenses none,jpeg-75 --output benchmarks/results/tmp/robustness_icons_jpeg
    python benchmarks/collect_results.py benchmarks/results/mem3_sweep.json benchmarks/results/tmp/robustness_icons_jpeg
    python benchmarks/collect_results.py benchmarks/results/new.json FOLDER --experiment "What this measures"

A run of the same name already in the file is replaced (and said so). A file that does not exist
is created, with ``--experiment`` as its title.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

#: The JSON each benchmark writes into its output folder.
OUTPUTS = (
    "robustness.json",
    "ablation.json",
    "pixel_shortcuts.json",
    "trigger_length.json",
    "results.json",
    "throughput.json",
    "protect_speed.json",
)
#: What every run records (`_common.provenance` writes the first two).
REQUIRED = ("command", "library_version", "arguments")
#: What collecting empties: the per-epoch histories (key -> the type of the value emptied).
EMPTIED = {"histories": dict, "history": list, "curves": list}


def compact(value):
    """``value`` without per-epoch histories: every "histories" dict emptied, every "history" or
    "curves" list emptied, the rest unchanged."""
    if isinstance(value, dict):
        return {
            key: EMPTIED[key]() if isinstance(item, EMPTIED.get(key, ())) else compact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value


def read_run(folder: Path) -> dict:
    """The run a benchmark wrote into ``folder``: its JSON, compacted, named by the folder."""
    found = [folder / name for name in OUTPUTS if (folder / name).is_file()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(path.name for path in found)
        raise SystemExit(f"{folder}: expected one of {', '.join(OUTPUTS)}, found {what}")
    saved = json.loads(found[0].read_text())
    missing = [key for key in REQUIRED if key not in saved]
    if missing:
        raise SystemExit(
            f"{found[0]} has no {', '.join(missing)}: written before the benchmarks recorded their command and "
            "versions; rerun the benchmark"
        )
    return {"name": folder.resolve().name, **compact(saved)}


def load(path: Path) -> dict:
    """A results file: ``{"experiment": title, "runs": [run, ...]}``."""
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or not isinstance(saved.get("experiment"), str) or "runs" not in saved:
        raise SystemExit(f"{path}: not a results file (expected keys experiment and runs)")
    return saved


def dump(saved: dict) -> str:
    """The file's text: runs sorted by name, compact separators, a trailing newline."""
    runs = sorted(saved["runs"], key=lambda run: run["name"])
    return json.dumps({"experiment": saved["experiment"], "runs": runs}, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="results file, e.g. benchmarks/results/mem3_sweep.json")
    parser.add_argument("folders", type=Path, nargs="+", metavar="folder", help="output folder of a benchmark run")
    parser.add_argument("--experiment", help="one-line title: required for a new file, replaces an existing one's")
    arguments = parser.parse_args(argv)
    runs = [read_run(folder) for folder in arguments.folders]  # every folder checked before the file changes
    names = [run["name"] for run in runs]
    if len(set(names)) < len(names):
        raise SystemExit(f"two folders of one name: {sorted(n for n in names if names.count(n) > 1)[0]}")
    if arguments.file.exists():
        saved = load(arguments.file)
        if arguments.experiment and arguments.experiment != saved["experiment"]:
            print(f"{arguments.file}: title {saved['experiment']!r} replaced by {arguments.experiment!r}")
            saved["experiment"] = arguments.experiment
    elif arguments.experiment:
        saved = {"experiment": arguments.experiment, "runs": []}
        print(f"{arguments.file}: new results file")
    else:
        raise SystemExit(f"{arguments.file} does not exist: give --experiment TITLE to create it")
    earlier = {run["name"] for run in saved["runs"]}
    for run in runs:
        replaced = run["name"] in earlier
        saved["runs"] = [old for old in saved["runs"] if old["name"] != run["name"]] + [run]
        print(f"{arguments.file}: {'replaced' if replaced else 'added'} run {run['name']}")
    text = dump(saved)
    partial = arguments.file.with_name(arguments.file.name + ".partial")
    partial.write_text(text)
    os.replace(partial, arguments.file)  # a failed write leaves the old file whole
    print(f"{arguments.file}: {len(saved['runs'])} runs, {len(text) / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
