"""`hf-unlearnable`: protect a data set, check a protected copy, show samples.

- ``protect``: with no arguments it protects the built-in synthetic data set with a tiny surrogate
  trained from scratch and saves it to ``./protected``; with ``--dataset`` and ``--model`` (or
  ``--from-scratch CLIPConfig.json``, the paper's setting) it protects real data. The data set and
  its columns are checked before the surrogate loads; a surrogate that cannot be loaded (e.g.
  offline) is one line with the fix, exit 2.
- ``verify CLEAN PROTECTED``: checks a protected copy against its clean data set (rows, other
  columns, image budget, triggers); exit 0 when it keeps every promise, 1 on a violation, 2 on bad
  arguments.
- ``show CLEAN PROTECTED``: writes a PNG grid of clean image, protected image, amplified noise and
  triggered caption (like Figures 3-4 of the MEM paper).
- ``cache list`` / ``cache clean``: show or delete the work dirs the library keeps in the
  ``datasets`` cache (size, rows, created, finished, whether a clean copy is still there).
- ``evaluate --clean-train C --protected-train P --test T``: the audit before publishing
  (`hf_unlearnable.audit`): victims trained under each defense, a verdict per defense.

Exit codes, the same for every command (`EXIT_CODES`; `commands.run_command`): 0 done; 1 the check failed
(``verify``: a violation; ``evaluate``: a defense breaks the protection); 2 bad input, one line
naming the argument and the fix; 3 crashed, one line (``hf-unlearnable -v COMMAND ...`` prints the
traceback); 4 training could not go on or protected nothing (`NonFiniteLossError`,
`NoProtectionError`), one line naming where and the likely cause.

This module is the parser and the wiring: each subcommand is a pair in `SUBCOMMANDS`, a function that
adds its parser and one that runs it (``evaluate``'s live in `audit.command`); what the commands
share with each other and with the recipes is in `commands`. Importing it imports neither torch,
transformers nor datasets: ``--help`` is quick, each command imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence

from .audit.command import add_evaluate_parser, run_evaluate
from .commands import (
    DEFAULT_MODEL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    add_config_arguments,
    add_surrogate_arguments,
    check_work_dir_is_shared,
    config_from_arguments,
    exit_codes,
    load_dataset_checked,
    parse_pixel_value,
    run_command,
    surrogate_from_arguments,
)
from .config import MEMConfig

DEMO_ROWS = 256
DEMO_OVERRIDES = {"max_rounds": 5, "trigger_rounds": 2, "surrogate_steps": 50, "batch_size": 32}
EXIT_CODES = exit_codes("the check failed (verify: a violation; evaluate: a defense breaks the protection)")


def check_columns(ds: typing.Any, image_column: str, caption_column: str) -> None:
    """Stop on a column the data set lacks, or captions that are not text, before any model is loaded."""
    from .checks import caption_is_list, check_column, check_is_dataset

    check_is_dataset(ds, "--dataset")
    check_column(ds, image_column, "image_column (--image-column)", "the data set")
    check_column(ds, caption_column, "caption_column (--caption-column)", "the data set")
    caption_is_list(ds.features[caption_column], caption_column)


def add_protect_parser(commands: typing.Any) -> None:
    """The ``hf-unlearnable protect`` subcommand (its arguments; `run_protect` runs it)."""
    protect = commands.add_parser(
        "protect", help="protect a data set and save it with save_to_disk", epilog=exit_codes()
    )
    protect.add_argument(
        "--dataset",
        help="Hub id or local path (save_to_disk folder or load_dataset path); "
        f"default: the built-in synthetic data set ({DEMO_ROWS} rows)",
    )
    protect.add_argument("--split", default="train", help="split to protect (default: train)")
    protect.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    protect.add_argument(
        "--caption-column",
        default="caption",
        help="column holding the captions: one string or a list of strings per row (default: caption)",
    )
    protect.add_argument("--output", default="protected", help="output folder for save_to_disk (default: ./protected)")
    protect.add_argument("--save-transform", help="also save the fitted ProtectTransform here")
    protect.add_argument(
        "--work-dir",
        help="folder for the per-sample state and checkpoints (default: a folder in "
        "the datasets cache named after the data and settings); rerunning with it resumes. With "
        "several machines, a folder every machine sees",
    )
    protect.add_argument(
        "--resume",
        action="store_true",
        help="require that --work-dir holds an earlier run of the "
        "same data and settings, and continue it (an error otherwise, rather than starting over)",
    )
    protect.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the clean copy of the data in the default "
        "work dir after protecting (default: deleted; a --work-dir you name is always kept)",
    )
    protect.add_argument(
        "--rows", type=int, default=DEMO_ROWS, help=f"rows of the built-in synthetic data set (default: {DEMO_ROWS})"
    )
    protect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_surrogate_arguments(
        protect,
        required=False,
        model_default=f"{DEFAULT_MODEL}; with the built-in data set, a tiny CLIP trained from scratch",
    )
    add_config_arguments(protect)


def add_verify_parser(commands: typing.Any) -> None:
    """The ``hf-unlearnable verify`` subcommand (its arguments; `run_verify` runs it)."""
    defaults = {field.name: field.default for field in dataclasses.fields(MEMConfig)}  # MEMConfig() would import torch
    verify = commands.add_parser(
        "verify",
        help="check a protected copy against its clean data set (exit 0 ok, 1 violation, 2 bad arguments)",
        description="Check that PROTECTED is a faithful protected copy of CLEAN: same rows and other columns, every "
        "image within the budget of its clean base, every caption = trigger words + space + clean caption.",
        epilog=exit_codes("a violation: the copy breaks a promise"),
    )
    _add_pair_arguments(verify)
    verify.add_argument(
        "--epsilon",
        type=parse_pixel_value,
        default=defaults["epsilon"],
        help="image budget in [0, 1] pixel space, a number or a fraction (default: 8/255)",
    )
    verify.add_argument(
        "--trigger-length",
        type=int,
        default=defaults["trigger_length"],
        help=f"trigger words per caption; 0 for EM (default: {defaults['trigger_length']})",
    )
    verify.add_argument(
        "--trigger-position",
        choices=("start", "random"),
        default=defaults["trigger_position"],
        help="where the trigger sits: start (the paper) or random (a word boundary); "
        f"default: {defaults['trigger_position']}",
    )
    verify.add_argument(
        "--model",
        help="surrogate (model folder, saved ProtectTransform folder or Hub id) whose "
        "tokenizer must re-tokenise each trigger to --trigger-length tokens",
    )
    verify.add_argument(
        "--image-size", type=int, help="protect resolution in pixels (default: the first protected image's)"
    )
    verify.add_argument("--max-listed", type=int, default=10, help="violations to print (default: 10)")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_cache_parser(commands: typing.Any) -> None:
    """The ``hf-unlearnable cache`` subcommand (its arguments; `run_cache` runs it)."""
    cache = commands.add_parser(
        "cache",
        help="list or delete the work dirs the library keeps in the datasets cache",
        epilog=exit_codes(),
        description="A work dir holds a run's state: the clean copy of the data while it runs (and after, with "
        "--keep-work-dir), the noise, triggers and surrogate. list shows each; clean lists them, asks, and deletes them.",
    )
    cache.add_argument(
        "action",
        choices=("list", "clean"),
        help="list: one line per work dir (path, created, data "
        "set, rows, method, size, state); clean: list them, ask, then delete them all",
    )
    cache.add_argument(
        "--cache-dir", help="the folder holding the work dirs (default: <datasets cache>/hf_unlearnable)"
    )
    cache.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="clean: delete without asking (needed where no one can answer: a script, a pipe, a job)",
    )


def add_show_parser(commands: typing.Any) -> None:
    """The ``hf-unlearnable show`` subcommand (its arguments; `run_show` runs it)."""
    show = commands.add_parser(
        "show", help="write a PNG grid of clean / protected / noise / caption samples", epilog=exit_codes()
    )
    _add_pair_arguments(show)
    show.add_argument("--rows", default="4", help="number of first rows, or a comma list of row numbers (default: 4)")
    show.add_argument("--output", default="grid.png", help="PNG file to write (default: grid.png)")
    show.add_argument(
        "--image-size", type=int, help="display size of each image in pixels (default: upscaled to >= 160)"
    )
    show.add_argument(
        "--amplify", type=float, help="noise scale factor (default: stretch each noise to the full range)"
    )


def _add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "clean", metavar="CLEAN", help="the clean data set: a save_to_disk folder or a load_dataset path"
    )
    parser.add_argument(
        "protected", metavar="PROTECTED", help="the protected copy: a save_to_disk folder or a load_dataset path"
    )
    parser.add_argument("--split", default="train", help="split, when a folder holds a DatasetDict (default: train)")
    parser.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    parser.add_argument("--caption-column", default="caption", help="column holding the captions (default: caption)")


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    folder = os.path.join(model, "surrogate")
    if os.path.isfile(os.path.join(model, "protect_config.json")) and os.path.isdir(folder):
        model = folder  # a saved ProtectTransform: its surrogate's tokenizer
    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model!r}: cannot load its tokenizer ({error}).") from None


def run_verify(arguments: argparse.Namespace) -> int:
    from .report import verify_protected

    clean = load_dataset_checked(arguments.clean, arguments.split, "CLEAN")
    protected = load_dataset_checked(arguments.protected, arguments.split, "PROTECTED")
    tokenizer = _load_tokenizer(arguments.model) if arguments.model else None
    report = verify_protected(
        clean,
        protected,
        image_column=arguments.image_column,
        caption_column=arguments.caption_column,
        epsilon=arguments.epsilon,
        trigger_length=arguments.trigger_length,
        trigger_position=arguments.trigger_position,
        tokenizer=tokenizer,
        image_size=arguments.image_size,
        progress=False if arguments.no_progress else None,
    )
    print(f"verify {arguments.protected} against {arguments.clean}")
    print(report.summary(limit=max(0, arguments.max_listed)))
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _parse_rows(text: str) -> int | list[int]:
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise ValueError(f"--rows {text!r}: expected a count (4) or a comma list of row numbers (0,5,9).") from None


def run_show(arguments: argparse.Namespace) -> int:
    from .report import sample_grid

    rows = _parse_rows(arguments.rows)
    clean = load_dataset_checked(arguments.clean, arguments.split, "CLEAN")
    protected = load_dataset_checked(arguments.protected, arguments.split, "PROTECTED")
    sample_grid(
        clean,
        protected,
        rows,
        image_column=arguments.image_column,
        caption_column=arguments.caption_column,
        image_size=arguments.image_size,
        amplify=arguments.amplify,
        path=arguments.output,
    )
    print(os.path.abspath(arguments.output))
    return 0


def run_protect(arguments: argparse.Namespace) -> int:
    from .devices import process_state
    from .transform import ProtectTransform

    started = time.perf_counter()
    # Under torchrun / accelerate launch the processes share the work; the main one writes the output.
    state = process_state()
    if arguments.no_progress or not state.is_main_process:
        import datasets

        datasets.disable_progress_bars()
    if arguments.resume:
        if not arguments.work_dir:
            raise ValueError("--resume needs --work-dir: the folder of the run to continue.")
        if not os.path.exists(os.path.join(arguments.work_dir, "identity.json")):
            raise ValueError(f"--resume: {arguments.work_dir} holds no earlier run; drop --resume to start one.")
    check_work_dir_is_shared(arguments.work_dir, state)  # several machines: one store, before any work
    if arguments.dataset is None:
        from .testing import synthetic_captions

        config = config_from_arguments(arguments, DEMO_OVERRIDES)
        ds = synthetic_captions(arguments.rows, seed=config.seed)
        source = f"built-in synthetic data set ({arguments.rows} rows)"
    else:
        config = config_from_arguments(arguments)
        with state.main_process_first():  # the others reuse the main process's download and cache files
            ds = load_dataset_checked(
                arguments.dataset, arguments.split, "--dataset"
            )  # a load failure: one line, exit 2
        source = f"{arguments.dataset} [{arguments.split}]"
    # The data set is checked before the surrogate loads: a wrong column costs a second, not a download.
    check_columns(ds, arguments.image_column, arguments.caption_column)
    if arguments.dataset is None and arguments.model is None and arguments.from_scratch is None:
        if arguments.processor:
            raise ValueError("--processor needs --model or --from-scratch (the built-in demo brings its own).")
        from .testing import tiny_clip

        model, processor = tiny_clip(seed=config.seed)
    else:
        default = DEFAULT_MODEL if arguments.from_scratch is None else None
        model, processor = surrogate_from_arguments(
            arguments.model or default, arguments.from_scratch, arguments.processor
        )
    transform = ProtectTransform(
        model,
        processor,
        config,
        work_dir=arguments.work_dir,
        keep_work_dir=arguments.keep_work_dir,
        progress=not arguments.no_progress and state.is_main_process,
    )
    protected = transform.protect(ds, image_column=arguments.image_column, caption_column=arguments.caption_column)
    if state.is_main_process:
        protected.save_to_disk(arguments.output)
        if arguments.save_transform:
            transform.save_pretrained(arguments.save_transform)
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    summary = transform.summary()
    summary.update(source=source, output=os.path.abspath(arguments.output), total_seconds=time.perf_counter() - started)
    if summary.get("reused"):  # a finished work dir of the same data, settings and surrogate: no rounds ran now
        rounds_seconds = (
            f"MEM rounds reused from the finished run in {summary['work_dir']}, where they took "
            f"{summary['seconds']:.1f}; `hf-unlearnable cache clean` or a new --work-dir starts afresh"
        )
    else:
        rounds_seconds = f"{summary['seconds']:.1f} in MEM rounds"
    print(
        f"protected {summary['rows']} rows of {source} with {summary['method']} -> {summary['output']}\n"
        f"  budget used: max |noise| {summary['max_noise_levels']}/255 (allowed {summary['epsilon_levels']}/255), "
        f"mean |noise| {summary['mean_abs_noise_levels']:.2f}/255\n"
        f"  surrogate after {summary['rounds']} rounds: training loss {summary['surrogate_loss']:.4f}, "
        f"loss on protected data {summary['protected_loss']:.4f}, on clean data {summary['clean_loss']:.4f}\n"
        f"  seconds: {summary['total_seconds']:.1f} ({rounds_seconds})\n"
        f"  processes: {state.num_processes}"
    )
    return 0


def _can_ask() -> bool:
    """Whether someone can answer a question: standard input is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def run_cache(arguments: argparse.Namespace) -> int:
    from .cache import clean_work_dirs, format_work_dirs, list_work_dirs
    from .workdir import cache_root, human_size

    root = arguments.cache_dir or cache_root()
    entries = list_work_dirs(root)
    print(format_work_dirs(entries, root))
    if arguments.action == "list" or not entries:
        return EXIT_OK
    size = human_size(sum(entry["bytes"] for entry in entries))
    if not arguments.yes:
        if not _can_ask():
            raise ValueError(
                f"cache clean would delete the {len(entries)} work dir(s) listed above ({size}) but cannot "
                "ask first (standard input is not a terminal). Pass --yes to delete them."
            )
        print(
            f"Delete these {len(entries)} work dir(s) ({size})? Unfinished runs cannot resume afterwards. [y/N] ",
            end="",
            flush=True,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_OK
    removed = clean_work_dirs(root, entries)
    print(f"deleted {len(removed)} work dir(s), {sum(entry['bytes'] for entry in removed)} bytes, under {root}")
    kept = [entry["path"] for entry in entries if entry not in removed]
    if kept:
        print(f"kept {len(kept)} work dir(s) in use by a running run: {', '.join(kept)}")
    return EXIT_OK


#: Each subcommand, in the order of ``--help``: (adds its parser to the subparsers, runs it on the parsed arguments).
SUBCOMMANDS: dict[str, tuple[Callable[[typing.Any], None], Callable[[argparse.Namespace], int]]] = {
    "protect": (add_protect_parser, run_protect),
    "verify": (add_verify_parser, run_verify),
    "cache": (add_cache_parser, run_cache),
    "show": (add_show_parser, run_show),
    "evaluate": (add_evaluate_parser, run_evaluate),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-unlearnable`` parser: ``-v`` and one subparser per entry of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="hf-unlearnable", description="Make image-caption data unlearnable (MEM).", epilog=EXIT_CODES
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each round; on a crash, print the traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in SUBCOMMANDS.values():
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _, run = SUBCOMMANDS[arguments.command]
    return run_command(run, arguments, verbose=arguments.verbose)


if __name__ == "__main__":
    sys.exit(main())
