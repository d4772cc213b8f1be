"""What the protection benchmarks share: one victim recipe, the data sets, protecting a copy, outputs.

Every benchmark row uses the same surrogate and victim architecture (as in the MEM paper) and
the same victim settings, so rows compare. The robustness and trigger-length benchmarks run
through `hf_unlearnable.evaluate_protection`, the audit a data owner runs, so the audit and the
tables are one code path.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers

from hf_unlearnable import EM, MEM, Layered, MEMConfig, RandomNoise, TriggerOnly
from hf_unlearnable.audit import ProtectionReport, mean_recall_at_10, plot_report
from hf_unlearnable.methods import SurrogateMethod
from hf_unlearnable.testing import synthetic_captions, tiny_clip, tiny_clip_config
from hf_unlearnable.version import ALGORITHM_VERSION, __version__
from hf_unlearnable.victim import VictimResult, train_victim

KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")

# The surrogate and the victim share an architecture (as in the paper); the transfer victim differs
# in width, depth and patch size.
SURROGATE = dict(hidden_size=64, num_layers=2, num_heads=2, projection_dim=32)
TRANSFER = dict(hidden_size=96, num_layers=3, num_heads=3, projection_dim=48)

#: The real data sets the benchmarks build (name -> (default folder, the script that builds it)).
REAL_DATASETS = {
    "icons": ("benchmarks/results/tmp/icons", "benchmarks/build_icon_dataset.py"),
    "objects": ("benchmarks/results/tmp/objects", "benchmarks/build_objects_dataset.py"),
}

METHOD_NAMES = {
    "clean": "Clean",
    "random": "Random noise",
    "em": "EM",
    "trigger": "Trigger only",
    "layered": "Layered",
    "layered-random": "Layered, trigger at a random word",
}


def method_name(method: str) -> str:
    """Table label of a method: "mem3" -> "MEM-3"."""
    return METHOD_NAMES.get(method) or f"MEM-{int(method.removeprefix('mem'))}"


def add_victim_and_mem_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, victim and MEM options every protection benchmark takes (protection_strength's defaults)."""
    parser.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic, icons or objects (the folders that benchmarks/build_icon_dataset.py and "
        "build_objects_dataset.py write) or the "
        "path of any save_to_disk DatasetDict with train and test splits and image/caption columns",
    )
    parser.add_argument("--train", type=int, default=2000, help="training pairs (the first rows of the train split)")
    parser.add_argument("--test", type=int, default=500, help="clean test images (the first rows of the test split)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12, help="victim epochs")
    parser.add_argument("--victim-batch", type=int, default=64)
    parser.add_argument("--victim-lr", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=10, help="MEM max_rounds")
    parser.add_argument("--surrogate-steps", type=int, default=60, help="MEM M")
    parser.add_argument("--pgd-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="MEM batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--mixed-precision",
        default="auto",
        choices=["auto", "no", "bf16"],
        help="of the protection and the victims alike (Accelerate keeps one setting per process)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check that the script runs (< 1 min)")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tuned victim's options (its recipe was chosen by measurement: robustness.py's docstring)."""
    parser.add_argument(
        "--pretrain",
        type=int,
        default=1000,
        help="clean pairs, disjoint from --train, to pretrain the fine-tuned victim",
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=5, help="short on purpose: see benchmarks/robustness.py's docstring"
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=3e-5,
        help="fine-tuning learning rate (1e-5 class; see benchmarks/robustness.py's docstring)",
    )


def apply_smoke(arguments: argparse.Namespace) -> None:
    """Tiny sizes for --smoke."""
    arguments.train, arguments.test, arguments.epochs = 48, 24, 1
    arguments.rounds, arguments.surrogate_steps, arguments.pgd_steps, arguments.batch_size = 1, 2, 1, 16
    arguments.victim_batch = 16
    if hasattr(arguments, "pretrain"):  # add_finetune_arguments
        arguments.pretrain, arguments.pretrain_epochs = 32, 1


def begin(arguments: argparse.Namespace) -> float:
    """What every protection benchmark does first: ``--threads`` torch threads, no `datasets`
    progress bars; returns the start time (``time.perf_counter()``) for the total it reports."""
    torch.set_num_threads(arguments.threads)
    datasets.disable_progress_bars()
    return time.perf_counter()


def default_output(arguments: argparse.Namespace, name: str) -> None:
    """``--output`` when not given: benchmarks/results/tmp/<name>_<data set> (git-ignored; a path's folder
    name); `collect_results.py` folds a finished run into the committed results."""
    if arguments.output is None:
        label = (
            arguments.dataset
            if arguments.dataset == "synthetic" or arguments.dataset in REAL_DATASETS
            else Path(arguments.dataset).name
        )
        arguments.output = f"benchmarks/results/tmp/{name}_{label}"


def load_data(
    arguments: argparse.Namespace, extra_train: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset | None, transformers.CLIPProcessor]:
    """(train, test, extra, processor): ``--train`` training rows, ``--test`` test rows and
    ``extra_train`` further training rows disjoint from both (None when 0), with the processor of
    the victim recipe (the data set's own ``tokenizer/`` folder when it has one)."""
    _, processor = tiny_clip(arguments.image_size, seed=arguments.seed, **SURROGATE)
    if arguments.dataset == "synthetic":
        train = synthetic_captions(arguments.train + extra_train, arguments.image_size, seed=arguments.seed)
        test = synthetic_captions(arguments.test, arguments.image_size, seed=arguments.seed + 1000)
    else:
        folder, builder = REAL_DATASETS.get(arguments.dataset, (arguments.dataset, None))
        path = Path(folder)
        if not path.is_dir():
            hint = f" Build it first: python {builder}" if builder else ""
            raise SystemExit(f"--dataset {arguments.dataset}: no folder {path}.{hint}")
        loaded = datasets.load_from_disk(str(path))
        if not isinstance(loaded, datasets.DatasetDict) or not {"train", "test"} <= set(loaded):
            raise SystemExit(f"--dataset {path}: expected a DatasetDict with train and test splits.")
        needed = arguments.train + extra_train
        if len(loaded["train"]) < needed or len(loaded["test"]) < arguments.test:
            raise SystemExit(
                f"--dataset {path} has {len(loaded['train'])} train and {len(loaded['test'])} test rows; "
                f"this run needs {needed} and {arguments.test}: lower --train/--test."
            )
        train = loaded["train"].select(range(needed)).select_columns(["image", "caption"])
        test = loaded["test"].select(range(arguments.test)).select_columns(["image", "caption"])
        if (path / "tokenizer").is_dir():
            tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path / "tokenizer"))
            processor = transformers.CLIPProcessor(image_processor=processor.image_processor, tokenizer=tokenizer)
    extra = train.select(range(arguments.train, len(train))) if extra_train else None
    return train.select(range(arguments.train)), test, extra, processor


def victim_config(
    arguments: argparse.Namespace, processor: transformers.CLIPProcessor, transfer: bool = False
) -> transformers.CLIPConfig:
    """The victim (and surrogate) architecture, or the transfer victim's, for the recipe's tokenizer."""
    sizes = TRANSFER if transfer else SURROGATE
    return tiny_clip_config(arguments.image_size, tokenizer=processor.tokenizer, **sizes)


def pretrain_victim(
    arguments: argparse.Namespace, rows: datasets.Dataset, test: datasets.Dataset, processor
) -> VictimResult:
    """The fine-tuned victim's starting point: the victim architecture trained on ``rows``, clean
    pairs disjoint from the training split, for ``--pretrain-epochs`` (seed + 1)."""
    return train_victim(
        rows,
        test,
        victim_config(arguments, processor),
        processor,
        epochs=arguments.pretrain_epochs,
        batch_size=arguments.victim_batch,
        learning_rate=arguments.victim_lr,
        seed=arguments.seed + 1,
        mixed_precision=arguments.mixed_precision,
        progress=False,
    )


def benchmark_method(name: str, arguments: argparse.Namespace, **changes) -> SurrogateMethod | RandomNoise:
    """The method object of a benchmark row at the benchmark sizes (``--rounds``, ``--surrogate-steps``,
    ``--pgd-steps``, ``--batch-size``, ``--seed``, surrogate learning rate 5e-4) with ``changes``:
    "random", "em", "trigger" (k = 3), "memK" (MEM with a K-word trigger), "layered" or
    "layered-random" (the trigger at a random word). Triggers are the library's dictionary words
    throughout, so that methods differ only in what the row names."""
    schedule = dict(
        max_rounds=arguments.rounds,
        surrogate_steps=arguments.surrogate_steps,
        batch_size=arguments.batch_size,
        learning_rate=5e-4,
        seed=arguments.seed,
        mixed_precision=arguments.mixed_precision,
    )
    pixels, words = dict(pgd_steps=arguments.pgd_steps), dict(trigger_words="dictionary")
    if name == "random":
        return RandomNoise(seed=arguments.seed, **changes)
    if name == "em":
        return EM(**schedule, **pixels, **changes)
    if name == "trigger":
        return TriggerOnly(**schedule, **words, **changes)
    if name in ("layered", "layered-random"):
        position = dict(trigger_position="random") if name == "layered-random" else {}
        return Layered(**schedule, **pixels, **words, **position, **changes)
    if name.startswith("mem") and name[3:].isdigit():
        return MEM(**schedule, **pixels, **words, trigger_length=int(name[3:]), **changes)
    raise SystemExit(f"unknown method {name!r}: random, em, trigger, memK (e.g. mem3), layered or layered-random")


def mem_config(arguments: argparse.Namespace, trigger_length: int) -> MEMConfig:
    """The config of MEM-k (EM for k = 0) at the benchmark sizes: where every ablation variant starts."""
    return benchmark_method(f"mem{trigger_length}" if trigger_length else "em", arguments).config()


def protect(
    method: str, train: datasets.Dataset, arguments: argparse.Namespace, processor
) -> tuple[datasets.Dataset, float]:
    """(protected copy, seconds) for one method of `benchmark_method`, against a surrogate of the
    victim's architecture trained from scratch, as in the paper."""
    started = time.perf_counter()
    chosen, surrogate = benchmark_method(method, arguments), victim_config(arguments, processor)
    if isinstance(chosen, RandomNoise):
        copy = chosen.protect(train, surrogate)
    else:
        copy = chosen.protect(train, surrogate, processor, progress=False)
    return copy, time.perf_counter() - started


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    )


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """What a benchmark's JSON records of the run that wrote it (and `collect_results.py` requires):
    the command as typed, ``python benchmarks/<script>.py`` and ``argv`` (default ``sys.argv[1:]``)
    shell-quoted, the library version and the algorithm version."""
    given = sys.argv[1:] if argv is None else list(argv)
    return {
        "command": shlex.join(["python", f"benchmarks/{script}.py", *given]),
        "library_version": __version__,
        "algorithm_version": ALGORITHM_VERSION,
    }


def write_outputs(
    report: ProtectionReport,
    output: Path,
    name: str,
    header: list[str],
    extra: dict,
    total_seconds: float,
    argv: list[str] | None = None,
) -> str:
    """``{name}.md`` (the header, then the audit's Markdown), ``{name}.csv`` (one row per verdict:
    final R@1/5/10 and MedR both directions of the protected and the clean victim, chance, verdict),
    ``{name}.json`` (the `provenance` of ``benchmarks/{name}.py`` run with ``argv``, ``extra``, the
    report and ``total_seconds``) and ``{name}.png`` (R@10 per defense, chance and clean marked);
    then prints the report's summary and what was written. Returns the Markdown."""
    extra = {**provenance(name, argv), **extra, "total_seconds": total_seconds}
    output.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join(header) + "\n\n" + report.to_markdown().split("\n", 1)[1]
    (output / f"{name}.md").write_text(markdown.replace("](report.png)", f"]({name}.png)"))
    with open(output / f"{name}.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "copy",
                "victim",
                "defense",
                "verdict",
                *KEYS,
                *(f"clean_{k}" for k in KEYS),
                *(f"chance_{k}" for k in KEYS),
                "r10_mean",
                "clean_r10_mean",
                "chance_r10_mean",
            ]
        )
        for v in report.verdicts:
            writer.writerow(
                [
                    v.copy,
                    v.victim,
                    v.defense,
                    v.verdict,
                    *(f"{v.protected_final[k]:.4f}" for k in KEYS),
                    *(f"{v.clean_final[k]:.4f}" for k in KEYS),
                    *(f"{report.chance[k]:.4f}" for k in KEYS),
                    f"{v.protected_r10:.4f}",
                    f"{v.clean_r10:.4f}",
                    f"{mean_recall_at_10(report.chance):.4f}",
                ]
            )
    (output / f"{name}.json").write_text(json.dumps({**extra, "report": report.to_dict()}, indent=1))
    plot_report(report, output / f"{name}.png")
    report.paths = {
        "markdown": str(output / f"{name}.md"),
        "csv": str(output / f"{name}.csv"),
        "json": str(output / f"{name}.json"),
        "figure": str(output / f"{name}.png"),
    }
    print("\n" + report.summary())
    print(f"wrote {output}/{name}.md, .csv, .json, .png ({total_seconds / 60:.1f} min)")
    return markdown
