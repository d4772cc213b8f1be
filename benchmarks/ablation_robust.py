"""Which levers make the protection hold? Each lever of MEMConfig on and off, against four targets.

A *variant* is MEM-3 at the benchmark sizes (`_common.mem_config`) with levers joined by "+":

    paper          the paper's MEM-3 (bodies shuffled in PGD)      own       PGD on each image's own caption
    eot            EOT: jpeg, crop-flip, grayscale, blur             em        no trigger (EM), own captions
    eot-NAME       EOT with one transformation (eot-jpeg, ...)       words=any trigger tokens need not be words
    k=N            trigger length N                                  pos=random trigger at a random word boundary
    layered        method="layered" (EM pixels, then triggers)

Each protected copy is audited (`hf_unlearnable.evaluate_protection`, one victim recipe) against
the defenses of the targets, by a victim trained from scratch and, with ``--victims
scratch,finetuned``, a fine-tuned one. The table marks each target:

    T1  no defense: R@10 <= 2x chance both directions and MedR >= 0.8x the chance MedR
    T2  jpeg-75, grayscale, resized-crop-flip, eda, strip-k: R@10 <= 3x chance each
    T3  every trigger removed (an oracle: the protected images with the clean captions): R@10 <= 3x chance
    T4  fine-tuned: R@10 at most half of the same fine-tuning on the clean copy
    cost  protect seconds per sample per round (target: at most 2x the paper's)

    python benchmarks/ablation_robust.py --dataset icons --variants paper,own,eot,own+eot
    python benchmarks/ablation_robust.py --smoke

Stages, so that variants and defenses can run in parallel processes (one GPU, many CPU cores):
``--stage protect`` saves each variant's copy under OUTPUT/copies, ``--stage evaluate`` audits
the saved copies (``--defenses``/``--victims`` a share of the work) into OUTPUT/parts, ``--stage
table`` merges the parts into ablation.md, .csv and .json. ``--stage all`` (the default) does
the three in one process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
from _common import (
    KEYS,
    add_finetune_arguments,
    add_victim_and_mem_arguments,
    apply_smoke,
    begin,
    default_output,
    load_data,
    machine,
    mem_config,
    pretrain_victim,
    provenance,
    victim_config,
)

from hf_unlearnable import MEMConfig, ProtectTransform, evaluate_protection
from hf_unlearnable.mem.eot import EOT_TRANSFORMS

TARGET_DEFENSES = ("none", "jpeg-75", "grayscale", "resized-crop-flip", "eda", "strip-{k}")
CLEAN = "clean"
IMAGES_ONLY = " | images only"


def lever_changes(variant: str) -> dict:
    """MEMConfig changes of a variant such as "own+eot+pos=random"."""
    changes: dict = {}
    for lever in variant.split("+"):
        name, _, value = lever.partition("=")
        if name == "paper":
            continue
        elif name == "own":
            changes["shuffle_captions"] = False
        elif name == "eot":
            changes["eot_transforms"] = tuple(EOT_TRANSFORMS)
        elif name.startswith("eot-") and name[4:] in EOT_TRANSFORMS:
            changes["eot_transforms"] = tuple(changes.get("eot_transforms", ())) + (name[4:],)
        elif name == "layered":
            changes["method"] = name
        elif name == "em":
            changes.update(trigger_length=0, shuffle_captions=False)
        elif name == "k" and value.isdigit():
            changes["trigger_length"] = int(value)
        elif name == "pos" and value in ("start", "random"):
            changes["trigger_position"] = value
        elif name == "words" and value:
            changes["trigger_words"] = value
        else:
            raise SystemExit(f"unknown lever {lever!r} in variant {variant!r}: see the module docstring")
    if changes.get("trigger_length") == 0:
        changes["shuffle_captions"] = False
    return changes


def variant_config(arguments: argparse.Namespace, variant: str) -> MEMConfig:
    return mem_config(arguments, 3).replace(**lever_changes(variant))


def folder_name(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", variant)


def protect_variants(arguments, train, processor, variants: list[str]) -> dict[str, dict]:
    """Protect ``train`` with each variant; save copies under OUTPUT/copies; return their costs."""
    costs = {}
    for variant in variants:
        config = variant_config(arguments, variant)
        started = time.perf_counter()
        transform = ProtectTransform(victim_config(arguments, processor), processor, config, progress=False)
        protected = transform.protect(train)
        seconds = time.perf_counter() - started
        rounds = len(transform.history) or config.max_rounds
        costs[variant] = {
            "seconds": seconds,
            "rounds": rounds,
            "seconds_per_sample_round": seconds / len(train) / rounds,
            "config": config.to_dict(),
            "final_protected_loss": transform.history[-1]["protected_loss"],
        }
        protected.save_to_disk(str(Path(arguments.output) / "copies" / folder_name(variant)))
        (Path(arguments.output) / "copies" / f"{folder_name(variant)}.json").write_text(
            json.dumps(costs[variant], indent=1)
        )
        print(
            f"protected {variant}: {seconds:.0f} s, {costs[variant]['seconds_per_sample_round'] * 1e3:.2f} ms/sample/round",
            flush=True,
        )
    return costs


def defenses_for(arguments, variants: list[str]) -> list[str]:
    if arguments.defenses:
        return [d for d in arguments.defenses.split(",") if d]
    lengths = sorted({variant_config(arguments, v).trigger_length for v in variants} - {0}) or [3]
    names = [d for d in TARGET_DEFENSES if "{k}" not in d]
    return names + [f"strip-{k}" for k in lengths]


def evaluate_variants(arguments, train, test, pretrain_rows, processor, variants: list[str], tag: str) -> Path:
    """Audit the saved copies of ``variants``; write OUTPUT/parts/<tag>.json."""
    copies, oracles = {}, {}
    for variant in variants:
        protected = datasets.load_from_disk(str(Path(arguments.output) / "copies" / folder_name(variant)))
        copies[variant] = protected
        if variant_config(arguments, variant).trigger_length and not arguments.no_oracle:
            # T3: every trigger removed by an oracle: the protected images with the clean captions
            oracles[variant + IMAGES_ONLY] = protected.remove_columns("caption").add_column("caption", train["caption"])
    recipe = dict(
        defenses=defenses_for(arguments, variants),
        processor=processor,
        epochs=arguments.epochs,
        batch_size=arguments.victim_batch,
        learning_rate=arguments.victim_lr,
        fine_tune_learning_rate=arguments.finetune_lr,
        seed=arguments.seed,
        progress=False,
    )
    parts = []
    for victim in [v for v in arguments.victims.split(",") if v]:
        if victim == "finetuned":
            pretrained = pretrain_victim(arguments, pretrain_rows, test, processor)
            model = dict(pretrained=pretrained.model)
        else:
            model = dict(victim=victim_config(arguments, processor))
        reports = [evaluate_protection(train, copies, test, **model, **recipe)]
        if oracles and victim == "scratch":  # T3 is read with no defense, from scratch
            reports.append(evaluate_protection(train, oracles, test, **model, **{**recipe, "defenses": ["none"]}))
        for report in reports:
            parts.append(report.to_dict())
            for verdict in report.verdicts:
                print(f"  {verdict}", flush=True)
    path = Path(arguments.output) / "parts" / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(parts))
    return path


def targets(rows: dict, images_only: dict, chance: dict, k: int, em: bool) -> dict[str, str]:
    """'yes' / 'no' / '-' (not measured) per target, from {(victim, defense): verdict dict} of the
    copy and of its images-only twin (protected images, clean captions)."""

    def r10(verdict, key="protected_final"):
        return verdict[key]["i2t_r10"], verdict[key]["t2i_r10"]

    def within(verdict, factor):
        return all(value <= factor * chance[f"{d}_r10"] for value, d in zip(r10(verdict), ("i2t", "t2i")))

    out = {}
    none = rows.get(("from scratch", "none"))
    out["T1"] = (
        "-"
        if none is None
        else (
            "yes"
            if within(none, 2)
            and all(none["protected_final"][f"{d}_medr"] >= 0.8 * chance[f"{d}_medr"] for d in ("i2t", "t2i"))
            else "no"
        )
    )
    wanted = ["jpeg-75", "grayscale", "resized-crop-flip", "eda"] + ([] if em else [f"strip-{k}"])
    measured = [rows[("from scratch", d)] for d in wanted if ("from scratch", d) in rows]
    out["T2"] = (
        "-"
        if not measured
        else (
            "yes"
            if all(within(v, 3) for v in measured) and len(measured) == len(wanted)
            else "no"
            if not all(within(v, 3) for v in measured)
            else "part"
        )
    )
    stripped = none if em else images_only.get(("from scratch", "none"))
    out["T3"] = "-" if stripped is None else ("yes" if within(stripped, 3) else "no")
    tuned = rows.get(("fine-tuned", "none"))
    out["T4"] = "-" if tuned is None else ("yes" if tuned["protected_r10"] <= 0.5 * tuned["clean_r10"] else "no")
    return out


def write_table(arguments, started: float, argv: list[str] | None = None) -> str:
    output = Path(arguments.output)
    verdicts, chance, settings = [], None, {}
    for part in sorted((output / "parts").glob("*.json")):
        for report in json.loads(part.read_text()):
            verdicts += report["verdicts"]
            chance, settings = report["chance"], report["settings"]
    if chance is None:
        raise SystemExit(f"no audit results under {output / 'parts'}: run --stage evaluate first")
    costs = {p.stem: json.loads(p.read_text()) for p in sorted((output / "copies").glob("*.json"))}
    variants = list(dict.fromkeys(v["copy"] for v in verdicts if not v["copy"].endswith(IMAGES_ONLY)))
    columns = list(dict.fromkeys((v["victim"], v["defense"]) for v in verdicts))
    chance_r10 = (chance["i2t_r10"] + chance["t2i_r10"]) / 2
    record = provenance("ablation_robust", argv)
    lines = [
        f"# Robustness ablation: {arguments.dataset}",
        "",
        f"`{record['command']}`",
        "",
        f"R@10 image->text / text->image (%) of a victim trained on each copy, {arguments.train} pairs, "
        f"{arguments.test} clean test images, {arguments.image_size} px; chance {chance['i2t_r10']:.1f} / "
        f"{chance['t2i_r10']:.1f}, chance MedR {chance['i2t_medr']:.0f}. MEM {arguments.rounds} rounds, "
        f"M = {arguments.surrogate_steps}, {arguments.pgd_steps} PGD steps. Machine: {machine()}.",
        "",
        "| copy | "
        + " | ".join(f"{victim} / {defense}" for victim, defense in columns)
        + " | triggers removed (oracle) | T1 | T2 | T3 | T4 | ms / sample / round |",
        "|---" * (len(columns) + 7) + "|",
    ]
    clean_cells = []
    for victim, defense in columns:
        first = next(v for v in verdicts if (v["victim"], v["defense"]) == (victim, defense))
        clean_cells.append(f"{first['clean_final']['i2t_r10']:.1f} / {first['clean_final']['t2i_r10']:.1f}")
    lines.append(f"| {CLEAN} | " + " | ".join(clean_cells) + " | | | | | | |")
    csv_rows = []
    for variant in variants:
        rows = {(v["victim"], v["defense"]): v for v in verdicts if v["copy"] == variant}
        twin = {(v["victim"], v["defense"]): v for v in verdicts if v["copy"] == variant + IMAGES_ONLY}
        config = costs.get(folder_name(variant), {}).get("config", {})
        k = int(config.get("trigger_length", 3))
        marks = targets(rows, twin, chance, k, em=k == 0)
        cells = []
        for column in columns:
            v = rows.get(column)
            cells.append(
                "" if v is None else f"{v['protected_final']['i2t_r10']:.1f} / {v['protected_final']['t2i_r10']:.1f}"
            )
            if v is not None:
                csv_rows.append(
                    [
                        variant,
                        *column,
                        *(f"{v['protected_final'][key]:.4f}" for key in KEYS),
                        *(f"{v['clean_final'][key]:.4f}" for key in KEYS),
                        v["verdict"],
                    ]
                )
        for v in twin.values():
            csv_rows.append(
                [
                    variant + IMAGES_ONLY,
                    v["victim"],
                    v["defense"],
                    *(f"{v['protected_final'][key]:.4f}" for key in KEYS),
                    *(f"{v['clean_final'][key]:.4f}" for key in KEYS),
                    v["verdict"],
                ]
            )
        oracle = twin.get(("from scratch", "none"))
        cells.append(
            ""
            if oracle is None
            else f"{oracle['protected_final']['i2t_r10']:.1f} / {oracle['protected_final']['t2i_r10']:.1f}"
        )
        cost = costs.get(folder_name(variant), {}).get("seconds_per_sample_round")
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(marks[t] for t in ("T1", "T2", "T3", "T4"))
            + f" | {'' if cost is None else f'{cost * 1e3:.2f}'} |"
        )
    lines += [
        "",
        f"Mean chance R@10 {chance_r10:.2f}. Targets: see the module docstring (yes / no / part: some "
        f"defenses of the target measured / -: not measured). Total {(time.perf_counter() - started) / 60:.1f} min.",
    ]
    markdown = "\n".join(lines) + "\n"
    (output / "ablation.md").write_text(markdown)
    with open(output / "ablation.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["copy", "victim", "defense", *KEYS, *(f"clean_{k}" for k in KEYS), "verdict"])
        writer.writerows(csv_rows)
    (output / "ablation.json").write_text(
        json.dumps(
            {
                **record,
                "arguments": vars(arguments),
                "chance": chance,
                "costs": costs,
                "settings": settings,
                "verdicts": verdicts,
            },
            indent=1,
        )
    )
    return markdown


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` (each with its value)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not any(token.startswith(f"{name}=") for name in names):
            kept.append(token)
    return kept


def run_in_parallel(arguments, argv: list[str], variants: list[str]) -> None:
    """--jobs N: each variant's protection, then each (variant, victim) audit, in its own process."""
    base = [
        sys.executable,
        __file__,
        *without_options(argv, ("--jobs", "--stage", "--variants", "--victims", "--tag", "--threads")),
        "--threads",
        str(max(1, (os.cpu_count() or 1) // arguments.jobs)),
    ]
    victims = [v for v in arguments.victims.split(",") if v]
    waves = [
        [[*base, "--stage", "protect", "--variants", v, "--victims", arguments.victims] for v in variants],
        [
            [*base, "--stage", "evaluate", "--variants", v, "--victims", victim, "--tag", f"{folder_name(v)}.{victim}"]
            for v in variants
            for victim in victims
        ],
    ]
    for wave in waves:
        with ThreadPoolExecutor(arguments.jobs) as pool:
            for command, code in zip(wave, pool.map(lambda c: subprocess.run(c).returncode, wave)):
                if code:
                    raise SystemExit(f"a parallel job failed (exit {code}): {' '.join(command)}")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_victim_and_mem_arguments(parser)
    parser.add_argument(
        "--variants",
        default="paper,own,eot,own+eot,em,em+eot",
        help="comma list of variants (levers joined by +; see the module docstring)",
    )
    parser.add_argument(
        "--defenses",
        help="comma list (default: the targets' defenses: none, jpeg-75, grayscale, "
        "resized-crop-flip, eda, strip-k for each trigger length)",
    )
    parser.add_argument("--victims", default="scratch", help="comma list of scratch, finetuned")
    add_finetune_arguments(parser)
    parser.add_argument("--no-oracle", action="store_true", help="skip the images-only copies (T3's victims)")
    parser.add_argument("--stage", choices=("all", "protect", "evaluate", "table"), default="all")
    parser.add_argument(
        "--jobs", type=int, default=1, help="with --stage all: run variants and victims in this many processes"
    )
    parser.add_argument(
        "--tag", default="all", help="name of this --stage evaluate share (its file under OUTPUT/parts)"
    )
    parser.add_argument("--output", help="folder (default: benchmarks/results/tmp/ablation_<dataset>, git-ignored)")
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        apply_smoke(arguments)
        given = sys.argv[1:] if argv is None else argv
        arguments.variants = arguments.variants if "--variants" in given else "paper,own+eot-jpeg"
        arguments.defenses = arguments.defenses or "none,strip-3"
    unknown = set(arguments.victims.split(",")) - {"scratch", "finetuned"}
    if unknown:
        parser.error(f"--victims: unknown {sorted(unknown)}; choose from scratch, finetuned")
    for variant in arguments.variants.split(","):
        lever_changes(variant)  # an unknown lever stops here, before any work
    default_output(arguments, "ablation")
    return arguments


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    started = begin(arguments)
    variants = [v for v in arguments.variants.split(",") if v]
    finetuned = "finetuned" in arguments.victims.split(",")
    if arguments.jobs > 1 and arguments.stage == "all":
        run_in_parallel(arguments, list(argv if argv is not None else sys.argv[1:]), variants)
        arguments.stage = "table"
    if arguments.stage != "table":
        train, test, pretrain_rows, processor = load_data(arguments, extra_train=arguments.pretrain if finetuned else 0)
    if arguments.stage in ("all", "protect"):
        protect_variants(arguments, train, processor, variants)
    if arguments.stage in ("all", "evaluate"):
        evaluate_variants(arguments, train, test, pretrain_rows, processor, variants, arguments.tag)
    if arguments.stage in ("all", "table"):
        print(write_table(arguments, started, argv))
        print(f"wrote {arguments.output}/ablation.md, .csv, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
