"""`hf-unlearnable`: protect a data set, check a protected copy, show samples.

- ``protect``: with no arguments it protects the built-in synthetic data set with a tiny surrogate
  trained from scratch and saves it to ``./protected``; with ``--dataset`` and ``--model`` it
  protects real data.
- ``verify CLEAN PROTECTED``: checks a protected copy against its clean data set (rows, other
  columns, image budget, triggers); exit 0 when it keeps every promise, 1 on a violation, 2 on bad
  arguments.
- ``show CLEAN PROTECTED``: writes a PNG grid of clean image, protected image, amplified noise and
  triggered caption (like Figures 3-4 of the MEM paper).
- ``cache list`` / ``cache clean``: show or delete the work dirs the library keeps in the
  ``datasets`` cache (size, rows, created, finished, whether a clean copy is still there).
- ``evaluate --clean-train C --protected-train P --test T``: the audit before publishing
  (`hf_unlearnable.audit`): victims trained under each defense, a verdict per defense.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence

from .config import MEMConfig

DEMO_ROWS = 256
DEMO_OVERRIDES = {"max_rounds": 5, "surrogate_steps": 50, "batch_size": 32}
DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per MEMConfig field (shared by the CLI and the recipes)."""
    group = parser.add_argument_group("MEM settings (MEMConfig fields)")
    hints = typing.get_type_hints(MEMConfig)
    for field in dataclasses.fields(MEMConfig):
        hint = hints[field.name]
        parse = {int: int, float: float, bool: _parse_bool, str: str}.get(hint)
        if parse is None:
            parse = _parse_optional_float if float in typing.get_args(hint) else _parse_optional_int
        group.add_argument(
            _flag(field.name), dest=field.name, type=parse, default=None, metavar=field.name.upper(),
            help=f"default: {field.default!r}",
        )


def config_from_arguments(arguments: argparse.Namespace, defaults: dict | None = None) -> MEMConfig:
    values = dict(defaults or {})
    for field in dataclasses.fields(MEMConfig):
        value = getattr(arguments, field.name, None)
        if value is not None:
            values[field.name] = value
    return MEMConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-unlearnable", description="Make image-caption data unlearnable (MEM).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each round")
    commands = parser.add_subparsers(dest="command", required=True)
    protect = commands.add_parser("protect", help="protect a data set and save it with save_to_disk")
    protect.add_argument("--dataset", help="Hub id or local path (save_to_disk folder or load_dataset path); "
                         f"default: the built-in synthetic data set ({DEMO_ROWS} rows)")
    protect.add_argument("--split", default="train", help="split to protect (default: train)")
    protect.add_argument("--image-column", default="image")
    protect.add_argument("--caption-column", default="caption")
    protect.add_argument("--model", help=f"surrogate: Hub id or local path (default: {DEFAULT_MODEL}; "
                         "with the built-in data set, a tiny CLIP trained from scratch)")
    protect.add_argument("--output", default="protected", help="output folder for save_to_disk (default: ./protected)")
    protect.add_argument("--save-transform", help="also save the fitted ProtectTransform here")
    protect.add_argument("--work-dir", help="folder for the per-sample state and checkpoints (default: a folder in "
                         "the datasets cache named after the data and settings); rerunning with it resumes")
    protect.add_argument("--resume", action="store_true", help="require that --work-dir holds an earlier run of the "
                         "same data and settings, and continue it (an error otherwise, rather than starting over)")
    protect.add_argument("--keep-work-dir", action="store_true", help="keep the clean copy of the data in the default "
                         "work dir after protecting (default: deleted; a --work-dir you name is always kept)")
    protect.add_argument("--rows", type=int, default=DEMO_ROWS, help="rows of the built-in synthetic data set")
    protect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(protect)

    verify = commands.add_parser(
        "verify", help="check a protected copy against its clean data set (exit 0 ok, 1 violation, 2 bad arguments)",
        description="Check that PROTECTED is a faithful protected copy of CLEAN: same rows and other columns, every "
        "image within the budget of its clean base, every caption = trigger words + space + clean caption.",
    )
    _add_pair_arguments(verify)
    verify.add_argument("--epsilon", type=float, default=MEMConfig().epsilon,
                        help=f"image budget in [0, 1] pixel space (default: {MEMConfig().epsilon:.7f} = 8/255)")
    verify.add_argument("--trigger-length", type=int, default=MEMConfig().trigger_length,
                        help=f"trigger words per caption; 0 for EM (default: {MEMConfig().trigger_length})")
    verify.add_argument("--model", help="surrogate (model folder, saved ProtectTransform folder or Hub id) whose "
                        "tokenizer must re-tokenise each trigger to --trigger-length tokens")
    verify.add_argument("--image-size", type=int, help="protect resolution in pixels (default: the first protected image's)")
    verify.add_argument("--max-listed", type=int, default=10, help="violations to print (default: 10)")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache = commands.add_parser("cache", help="list or delete the work dirs the library keeps in the datasets cache")
    cache.add_argument("action", choices=("list", "clean"), help="list: path, size, rows, created, finished; "
                       "clean: delete them all")
    cache.add_argument("--cache-dir", help="the folder holding the work dirs (default: <datasets cache>/hf_unlearnable)")

    show = commands.add_parser("show", help="write a PNG grid of clean / protected / noise / caption samples")
    _add_pair_arguments(show)
    show.add_argument("--rows", default="4", help="number of first rows, or a comma list of row numbers (default: 4)")
    show.add_argument("--output", default="grid.png", help="PNG file to write (default: grid.png)")
    show.add_argument("--image-size", type=int, help="display size of each image in pixels (default: upscaled to >= 160)")
    show.add_argument("--amplify", type=float, help="noise scale factor (default: stretch each noise to the full range)")
    from .audit import add_evaluate_parser

    add_evaluate_parser(commands)
    return parser


def _add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clean", metavar="CLEAN", help="the clean data set: a save_to_disk folder or a load_dataset path")
    parser.add_argument("protected", metavar="PROTECTED", help="the protected copy: a save_to_disk folder or a load_dataset path")
    parser.add_argument("--split", default="train", help="split, when a folder holds a DatasetDict (default: train)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")


def load_dataset_argument(name: str, split: str):
    """A local `save_to_disk` folder, or anything `datasets.load_dataset` takes."""
    import datasets

    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(os.path.join(name, "dataset_dict.json"))
    ):
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SystemExit(f"error: split {split!r} not in {list(loaded)}; pass --split")
        loaded = loaded[split]
    return loaded


def _load_pair_member(name: str, split: str, role: str):
    """`load_dataset_argument` for verify/show: every failure becomes a ValueError (exit 2) naming the argument."""
    import datasets

    looks_local = name.startswith((".", "~")) or os.path.isabs(name)
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(f"{role} {name!r}: no such folder. Pass a save_to_disk folder (or a load_dataset path).")
    try:
        return load_dataset_argument(os.path.expanduser(name), split)
    except SystemExit as error:  # a bad split: load_dataset_argument's own message
        raise ValueError(f"{role} {name!r}: {str(error).removeprefix('error: ')}") from None
    except (OSError, datasets.exceptions.DatasetsError) as error:
        raise ValueError(f"{role} {name!r} cannot be loaded ({type(error).__name__}: {error}). "
                         "Pass a save_to_disk folder (or a load_dataset path).") from None


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

    clean = _load_pair_member(arguments.clean, arguments.split, "CLEAN")
    protected = _load_pair_member(arguments.protected, arguments.split, "PROTECTED")
    tokenizer = _load_tokenizer(arguments.model) if arguments.model else None
    report = verify_protected(
        clean, protected, image_column=arguments.image_column, caption_column=arguments.caption_column,
        epsilon=arguments.epsilon, trigger_length=arguments.trigger_length, tokenizer=tokenizer,
        image_size=arguments.image_size, progress=False if arguments.no_progress else None,
    )
    print(f"verify {arguments.protected} against {arguments.clean}")
    print(report.summary(limit=max(0, arguments.max_listed)))
    return 0 if report.ok else 1


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
    clean = _load_pair_member(arguments.clean, arguments.split, "CLEAN")
    protected = _load_pair_member(arguments.protected, arguments.split, "PROTECTED")
    sample_grid(
        clean, protected, rows, image_column=arguments.image_column, caption_column=arguments.caption_column,
        image_size=arguments.image_size, amplify=arguments.amplify, path=arguments.output,
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
    if arguments.dataset is None:
        from .testing import synthetic_captions, tiny_clip

        config = config_from_arguments(arguments, DEMO_OVERRIDES)
        ds = synthetic_captions(arguments.rows, seed=config.seed)
        model, processor = tiny_clip(seed=config.seed) if arguments.model is None else (arguments.model, None)
        source = f"built-in synthetic data set ({arguments.rows} rows)"
    else:
        config = config_from_arguments(arguments)
        with state.main_process_first():  # the others reuse the main process's download and cache files
            ds = load_dataset_argument(arguments.dataset, arguments.split)
        model, processor = arguments.model or DEFAULT_MODEL, None
        source = f"{arguments.dataset} [{arguments.split}]"
    if arguments.resume:
        if not arguments.work_dir:
            raise ValueError("--resume needs --work-dir: the folder of the run to continue.")
        if not os.path.exists(os.path.join(arguments.work_dir, "identity.json")):
            raise ValueError(f"--resume: {arguments.work_dir} holds no earlier run; drop --resume to start one.")
    transform = ProtectTransform(model, processor, config, work_dir=arguments.work_dir,
                                 keep_work_dir=arguments.keep_work_dir,
                                 progress=not arguments.no_progress and state.is_main_process)
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
    print(
        f"protected {summary['rows']} rows of {source} -> {summary['output']}\n"
        f"  budget used: max |noise| {summary['max_noise_levels']}/255 (allowed {summary['epsilon_levels']}/255), "
        f"mean |noise| {summary['mean_abs_noise_levels']:.2f}/255\n"
        f"  surrogate after {summary['rounds']} rounds: training loss {summary['surrogate_loss']:.4f}, "
        f"loss on protected data {summary['protected_loss']:.4f}, on clean data {summary['clean_loss']:.4f}\n"
        f"  seconds: {summary['total_seconds']:.1f} ({summary['seconds']:.1f} in MEM rounds)\n"
        f"  processes: {state.num_processes}"
    )
    return 0


def run_cache(arguments: argparse.Namespace) -> int:
    from .cache import clean_work_dirs, format_work_dirs, list_work_dirs
    from .workdir import cache_root

    root = arguments.cache_dir or cache_root()
    if arguments.action == "list":
        print(format_work_dirs(list_work_dirs(root), root))
    else:
        removed = clean_work_dirs(root)
        print(f"deleted {len(removed)} work dir(s), {sum(entry['bytes'] for entry in removed)} bytes, under {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if arguments.command == "protect":
            return run_protect(arguments)
        if arguments.command == "verify":
            return run_verify(arguments)
        if arguments.command == "show":
            return run_show(arguments)
        if arguments.command == "cache":
            return run_cache(arguments)
        if arguments.command == "evaluate":
            from .audit import run_evaluate

            return run_evaluate(arguments)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
