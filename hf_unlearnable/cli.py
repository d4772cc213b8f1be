"""`hf-unlearnable protect`: protect a data set from the command line.

With no arguments it protects the built-in synthetic data set with a tiny surrogate trained from
scratch and saves it to ``./protected``; with ``--dataset`` and ``--model`` it protects real data.
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
    protect.add_argument("--rows", type=int, default=DEMO_ROWS, help="rows of the built-in synthetic data set")
    protect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(protect)
    return parser


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


def run_protect(arguments: argparse.Namespace) -> int:
    from .transform import ProtectTransform

    started = time.perf_counter()
    if arguments.no_progress:
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
        ds = load_dataset_argument(arguments.dataset, arguments.split)
        model, processor = arguments.model or DEFAULT_MODEL, None
        source = f"{arguments.dataset} [{arguments.split}]"
    transform = ProtectTransform(model, processor, config, progress=not arguments.no_progress)
    protected = transform.protect(ds, image_column=arguments.image_column, caption_column=arguments.caption_column)
    protected.save_to_disk(arguments.output)
    if arguments.save_transform:
        transform.save_pretrained(arguments.save_transform)
    summary = transform.summary()
    summary.update(source=source, output=os.path.abspath(arguments.output), total_seconds=time.perf_counter() - started)
    print(
        f"protected {summary['rows']} rows of {source} -> {summary['output']}\n"
        f"  budget used: max |noise| {summary['max_noise_levels']}/255 (allowed {summary['epsilon_levels']}/255), "
        f"mean |noise| {summary['mean_abs_noise_levels']:.2f}/255\n"
        f"  surrogate after {summary['rounds']} rounds: training loss {summary['surrogate_loss']:.4f}, "
        f"loss on protected data {summary['protected_loss']:.4f}, on clean data {summary['clean_loss']:.4f}\n"
        f"  seconds: {summary['total_seconds']:.1f} ({summary['seconds']:.1f} in MEM rounds)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if arguments.command == "protect":
            return run_protect(arguments)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
