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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence

from .config import MEMConfig

if typing.TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPProcessor

DEMO_ROWS = 256
DEMO_OVERRIDES = {"max_rounds": 5, "trigger_rounds": 2, "surrogate_steps": 50, "batch_size": 32}
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


def _parse_words(text: str) -> tuple[str, ...]:
    """``"lamp,harbor"`` -> ``("lamp", "harbor")`` (tuple fields such as ``--trigger-blocklist``; "" is empty)."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per MEMConfig field (shared by the CLI and the recipes)."""
    group = parser.add_argument_group("MEM settings (MEMConfig fields)")
    hints = typing.get_type_hints(MEMConfig)
    for field in dataclasses.fields(MEMConfig):
        hint = hints[field.name]
        parse = {int: int, float: float, bool: _parse_bool, str: str, tuple[str, ...]: _parse_words}.get(hint)
        if parse is None:
            parse = _parse_optional_float if float in typing.get_args(hint) else _parse_optional_int
        group.add_argument(
            _flag(field.name), dest=field.name, type=parse, default=None, metavar=field.name.upper(),
            help=f"default: {field.default!r}" + (" (comma-separated)" if hint == tuple[str, ...] else ""),
        )


def config_from_arguments(arguments: argparse.Namespace, defaults: dict | None = None) -> MEMConfig:
    values = dict(defaults or {})
    for field in dataclasses.fields(MEMConfig):
        value = getattr(arguments, field.name, None)
        if value is not None:
            values[field.name] = value
    if values.get("trigger_length") == 0 and "shuffle_captions" not in values:
        values["shuffle_captions"] = False  # --trigger-length 0 is EM: each image keeps its own caption
    return MEMConfig(**values)


def add_surrogate_arguments(parser: argparse.ArgumentParser, *, required: bool, model_default: str = "") -> None:
    """``--model`` | ``--from-scratch CONFIG_JSON``, and ``--processor`` (shared by the CLI and the recipes)."""
    group = parser.add_argument_group("surrogate")
    which = group.add_mutually_exclusive_group(required=required)
    which.add_argument("--model", help="pretrained CLIP surrogate: Hub id or local folder (e.g. "
                       f"{DEFAULT_MODEL}), further trained during protection" + (f" (default: {model_default})" if model_default else ""))
    which.add_argument("--from-scratch", metavar="CONFIG_JSON", help="train the surrogate from scratch (the paper's "
                       "setting) from this transformers CLIPConfig JSON file (CLIPConfig(...).to_json_file(path))")
    group.add_argument("--processor", help="CLIPProcessor (Hub id or local folder): tokenizer and image normalisation "
                       f"(default: the --model's own; with --from-scratch {DEFAULT_MODEL})")


def _load_error(flag: str, name: str, error: Exception, what: str) -> ValueError:
    """One line saying why ``name`` did not load and what to pass instead; never a traceback."""
    from huggingface_hub import constants

    if os.path.isdir(os.path.expanduser(name)):
        cause = " ".join(str(error).split())[:300]
        return ValueError(f"{flag} {name!r}: the folder does not hold a loadable CLIP {what} ({type(error).__name__}: {cause}).")
    why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached or has no such repo"
    fix = ("pass --processor LOCAL_FOLDER (a saved CLIPProcessor; with --from-scratch it defaults to "
           f"{DEFAULT_MODEL}'s)" if flag == "--processor" else
           "pass --model LOCAL_FOLDER (a CLIPModel saved with its processor), or --from-scratch CLIPConfig.json "
           "--processor LOCAL_FOLDER (the paper's setting)")
    return ValueError(f"{flag} {name!r} is not a local folder nor in the Hugging Face cache, and {why}. "
                      f"Fix: {fix}, or go online (HF_HUB_OFFLINE=0).")


def _existing_or_hub_id(flag: str, name: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if os.path.exists(os.path.expanduser(name)):
        return os.path.expanduser(name)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"{flag} {name!r}: no such folder, and not a Hub repo id ('owner/name').") from None
    return name


def surrogate_from_arguments(
    model: str | None, from_scratch: str | None = None, processor: str | None = None
) -> tuple[str | CLIPConfig, CLIPProcessor]:
    """The surrogate a command line names: ``(model, CLIPProcessor)`` for `ProtectTransform`.

    ``model``: a Hub id or folder (returned as is, after its processor and config loaded) or, with
    ``from_scratch``, the `CLIPConfig` read from that JSON file (a CLIP trained from scratch, as in
    the paper; ``processor`` defaults to ``DEFAULT_MODEL``'s). Loads only the small files, so a
    surrogate that cannot be loaded (offline, no such folder, no safetensors weights, a tokenizer
    too large for the config) fails here in one line with the fix, before any weights or data work.
    """
    from huggingface_hub.errors import EntryNotFoundError
    from transformers import CLIPConfig, CLIPProcessor

    failures = (OSError, ValueError, EntryNotFoundError)
    if (model is None) == (from_scratch is None):
        raise ValueError("Name the surrogate with exactly one of --model (pretrained) or --from-scratch CONFIG_JSON.")
    config = None
    if from_scratch is not None:  # the cheap checks first
        if not os.path.isfile(from_scratch):
            raise ValueError(f"--from-scratch {from_scratch!r}: no such file (a CLIPConfig JSON, e.g. "
                             "CLIPConfig(...).to_json_file(path)).")
        try:
            with open(from_scratch, encoding="utf-8") as file:
                fields = json.load(file)
        except (OSError, ValueError) as error:
            fields = f"{type(error).__name__}: {error}"
        # CLIPConfig takes any JSON (unknown keys become attributes); a wrong file would build a default-size CLIP.
        if not isinstance(fields, dict) or not (fields.get("model_type") == "clip" or {"text_config", "vision_config"} <= set(fields)):
            why = fields if isinstance(fields, str) else "no model_type 'clip', no text_config and vision_config"
            raise ValueError(f"--from-scratch {from_scratch!r} is not a CLIPConfig JSON file ({why}); write one with "
                             "CLIPConfig(...).to_json_file(path), or pass a CLIP checkpoint's config.json.")
        config = CLIPConfig.from_dict(fields)
    processor_flag = "--model" if processor is None and from_scratch is None else "--processor"
    processor_name = _existing_or_hub_id(processor_flag, processor or model or DEFAULT_MODEL)
    try:
        loaded = CLIPProcessor.from_pretrained(processor_name)
    except failures as error:
        raise _load_error(processor_flag, processor_name, error, "processor") from None
    if config is not None:
        vocabulary = len(loaded.tokenizer)
        if vocabulary > config.text_config.vocab_size:
            raise ValueError(
                f"--from-scratch {from_scratch!r} has text vocab_size={config.text_config.vocab_size} but the "
                f"processor's tokenizer has {vocabulary} tokens; pass a --processor whose tokenizer fits the config "
                "(or raise text_config.vocab_size)."
            )
        return config, loaded
    model = _existing_or_hub_id("--model", model)
    try:
        CLIPConfig.from_pretrained(model)
    except failures as error:
        raise _load_error("--model", model, error, "model") from None
    if os.path.isdir(model) and not any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json")
                                        for name in os.listdir(model)):
        raise ValueError(f"--model {model!r} holds no safetensors weights; only safetensors are loaded. Convert once: "
                         "CLIPModel.from_pretrained(FOLDER).save_pretrained(FOLDER) (writes model.safetensors).")
    return model, loaded


def check_columns(ds: typing.Any, image_column: str, caption_column: str) -> None:
    """Stop on a column the data set lacks, or captions that are not text, before any model is loaded."""
    from .checks import caption_is_list, check_column, check_is_dataset

    check_is_dataset(ds, "--dataset")
    check_column(ds, image_column, "image_column (--image-column)", "the data set")
    check_column(ds, caption_column, "caption_column (--caption-column)", "the data set")
    caption_is_list(ds.features[caption_column], caption_column)


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
    add_surrogate_arguments(protect, required=False, model_default=f"{DEFAULT_MODEL}; with the built-in data set, "
                            "a tiny CLIP trained from scratch")
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
    verify.add_argument("--trigger-position", choices=("start", "random"), default=MEMConfig().trigger_position,
                        help="where the trigger sits: start (the paper) or random (a word boundary); "
                        f"default: {MEMConfig().trigger_position}")
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
    """`load_dataset_argument` for the commands: every failure becomes a ValueError (exit 2) naming the argument."""
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
        epsilon=arguments.epsilon, trigger_length=arguments.trigger_length,
        trigger_position=arguments.trigger_position, tokenizer=tokenizer,
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
    if arguments.resume:
        if not arguments.work_dir:
            raise ValueError("--resume needs --work-dir: the folder of the run to continue.")
        if not os.path.exists(os.path.join(arguments.work_dir, "identity.json")):
            raise ValueError(f"--resume: {arguments.work_dir} holds no earlier run; drop --resume to start one.")
    if arguments.dataset is None:
        from .testing import synthetic_captions

        config = config_from_arguments(arguments, DEMO_OVERRIDES)
        ds = synthetic_captions(arguments.rows, seed=config.seed)
        source = f"built-in synthetic data set ({arguments.rows} rows)"
    else:
        config = config_from_arguments(arguments)
        with state.main_process_first():  # the others reuse the main process's download and cache files
            ds = _load_pair_member(arguments.dataset, arguments.split, "--dataset")  # a load failure: one line, exit 2
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
        model, processor = surrogate_from_arguments(arguments.model or default, arguments.from_scratch, arguments.processor)
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
    if summary.get("reused"):  # a finished work dir of the same data, settings and surrogate: no rounds ran now
        rounds_seconds = (f"MEM rounds reused from the finished run in {summary['work_dir']}, where they took "
                          f"{summary['seconds']:.1f}; `hf-unlearnable cache clean` or a new --work-dir starts afresh")
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
