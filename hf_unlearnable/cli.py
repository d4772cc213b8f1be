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

Exit codes, the same for every command (`EXIT_CODES`, `run_command`): 0 done; 1 the check failed
(``verify``: a violation; ``evaluate``: a defense breaks the protection); 2 bad input, one line
naming the argument and the fix; 3 crashed, one line (``hf-unlearnable -v COMMAND ...`` prints the
traceback); 4 training could not go on or protected nothing (`NonFiniteLossError`,
`NoProtectionError`), one line naming where and the likely cause. Importing this module imports neither torch, transformers nor datasets: ``--help`` is
quick, each command imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import inspect
import json
import logging
import os
import re
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence

from .config import MEMConfig
from .errors import NonFiniteLossError, NoProtectionError

if typing.TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPProcessor

DEMO_ROWS = 256
DEMO_OVERRIDES = {"max_rounds": 5, "trigger_rounds": 2, "surrogate_steps": 50, "batch_size": 32}
DEFAULT_MODEL = "openai/clip-vit-base-patch32"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_NO_PROTECTION = 0, 1, 2, 3, 4
TRACEBACK_HINT = "hf-unlearnable -v COMMAND ... prints the traceback"


def exit_codes(check_failed: str | None = None, done: str = "done", traceback_hint: str = TRACEBACK_HINT) -> str:
    """The exit codes, for a command's ``--help`` epilog (``check_failed``: what exit 1 means, if it can happen)."""
    codes = [f"0 {done}", *([f"1 {check_failed}"] if check_failed else []),
             "2 bad input (one line naming the argument and the fix)", f"3 crashed (one line; {traceback_hint})",
             "4 training could not go on or protected nothing (a loss turned NaN, or no pixel or trigger changed; "
             "one line naming where and the likely cause)"]
    return "exit codes: " + "; ".join(codes)


EXIT_CODES = exit_codes("the check failed (verify: a violation; evaluate: a defense breaks the protection)")
#: Errors a user can fix by changing the command (a bad value, a missing file or package): exit 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)
#: A pixel value within this many 8-bit levels of a whole level is that level: --epsilon 0.0313725 is 8/255.
LEVEL_TOLERANCE = 1e-4
#: The MEMConfig fields measured in [0, 1] pixel space, which snap to whole 8-bit levels.
PIXEL_FIELDS = ("epsilon", "pgd_step_size")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_number(text: str) -> float:
    """A float from ``0.5``, ``1e-4`` or a fraction such as ``8/255``."""
    numerator, _, denominator = text.strip().partition("/")
    try:
        return float(fractions.Fraction(numerator) / fractions.Fraction(denominator or "1"))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 8/255, got {text!r}") from None


def parse_pixel_value(text: str) -> float:
    """A value in [0, 1] pixel space (``8/255``, ``0.0313725``); within `LEVEL_TOLERANCE` of a whole
    8-bit level it is that level exactly, so a rounded decimal does not lose a level to the floor."""
    value = parse_number(text)
    levels = value * 255
    return round(levels) / 255 if abs(levels - round(levels)) <= LEVEL_TOLERANCE else value


def _parse_optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else parse_number(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def _parse_words(text: str) -> tuple[str, ...]:
    """``"lamp,harbor"`` -> ``("lamp", "harbor")`` (tuple fields such as ``--trigger-blocklist``; "" is empty)."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def config_field_descriptions() -> dict[str, str]:
    """Each MEMConfig field's description for ``--help``: the first sentence of its entry under
    ``Args:`` in the MEMConfig docstring, so the flags and the docs say the same thing."""
    arguments = inspect.cleandoc(MEMConfig.__doc__ or "").partition("Args:")[2]
    entries: dict[str, str] = {}
    name = None
    for line in arguments.splitlines():
        entry = re.match(r" {4}(\w+): (.*)", line)
        if entry:
            name, entries[entry.group(1)] = entry.group(1), entry.group(2)
        elif name is not None and line.startswith(" " * 8):
            entries[name] += " " + line.strip()
        elif line.strip():
            name = None  # the end of Args:
    return {name: re.split(r"(?<=[a-z0-9)])\. (?=[A-Z\"(])", text, maxsplit=1)[0].rstrip(".") for name, text in entries.items()}


def _shown_default(name: str, value: typing.Any) -> str:
    if name in PIXEL_FIELDS:
        return f"{round(value * 255)}/255"
    if isinstance(value, tuple):
        return ",".join(value) or '"" (none)'
    return "none" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per MEMConfig field (shared by the CLI and the recipes)."""
    group = parser.add_argument_group("MEM settings (MEMConfig fields)")
    hints = typing.get_type_hints(MEMConfig)
    descriptions = config_field_descriptions()
    for field in dataclasses.fields(MEMConfig):
        hint = hints[field.name]
        parse = {int: int, float: parse_number, bool: _parse_bool, str: str, tuple[str, ...]: _parse_words}.get(hint)
        if parse is None:
            parse = _parse_optional_float if float in typing.get_args(hint) else _parse_optional_int
        if field.name in PIXEL_FIELDS:
            parse = parse_pixel_value
        description = descriptions.get(field.name, "")
        if hint == tuple[str, ...]:
            description += "; comma-separated"
        if field.name in PIXEL_FIELDS:
            description += "; a number or a fraction such as 8/255"
        if "default" not in description:
            description += f" (default: {_shown_default(field.name, field.default)})"
        group.add_argument(
            _flag(field.name), dest=field.name, type=parse, default=None, metavar=field.name.upper(),
            help=description.strip().replace("%", "%%"),
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


_MODEL_FIX = ("pass --model LOCAL_FOLDER (a CLIPModel saved with its processor), or --from-scratch CLIPConfig.json "
              "--processor LOCAL_FOLDER (the paper's setting)")
_PROCESSOR_FIX = f"pass --processor LOCAL_FOLDER (a saved CLIPProcessor; with --from-scratch it defaults to {DEFAULT_MODEL}'s)"


def _load_error(flag: str, name: str, error: Exception, what: str, fix: str) -> ValueError:
    """One line saying why ``name`` did not load and ``fix``, what to pass instead; never a traceback."""
    from huggingface_hub import constants

    if os.path.isdir(os.path.expanduser(name)):
        cause = " ".join(str(error).split())[:300]
        return ValueError(f"{flag} {name!r}: the folder does not hold a loadable CLIP {what} ({type(error).__name__}: {cause}).")
    why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached or has no such repo"
    return ValueError(f"{flag} {name!r} is not a local folder nor in the Hugging Face cache, and {why}. "
                      f"Fix: {fix}, or go online (HF_HUB_OFFLINE=0).")


def _load_failures() -> tuple[type[Exception], ...]:
    from huggingface_hub.errors import EntryNotFoundError

    return (OSError, ValueError, EntryNotFoundError)


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


def load_processor(flag: str, name: str, fix: str = _PROCESSOR_FIX) -> CLIPProcessor:
    """The CLIPProcessor in folder or Hub repo ``name`` (given as ``flag``), or one line with ``fix``."""
    from transformers import CLIPProcessor

    name = _existing_or_hub_id(flag, name)
    try:
        return CLIPProcessor.from_pretrained(name)
    except _load_failures() as error:
        raise _load_error(flag, name, error, "processor", fix) from None


def read_clip_config(flag: str, path: str) -> CLIPConfig:
    """The CLIPConfig in JSON file ``path`` (given as ``flag``); one line naming the problem otherwise."""
    from transformers import CLIPConfig

    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path!r}: no such file (a CLIPConfig JSON, e.g. CLIPConfig(...).to_json_file(path)).")
    try:
        with open(path, encoding="utf-8") as file:
            fields = json.load(file)
    except (OSError, ValueError) as error:
        fields = f"{type(error).__name__}: {error}"
    # CLIPConfig takes any JSON (unknown keys become attributes); a wrong file would build a default-size CLIP.
    if not isinstance(fields, dict) or not (fields.get("model_type") == "clip" or {"text_config", "vision_config"} <= set(fields)):
        why = fields if isinstance(fields, str) else "no model_type 'clip', no text_config and vision_config"
        raise ValueError(f"{flag} {path!r} is not a CLIPConfig JSON file ({why}); write one with "
                         "CLIPConfig(...).to_json_file(path), or pass a CLIP checkpoint's config.json.")
    return CLIPConfig.from_dict(fields)


def check_vocabulary(flag: str, path: str, config: CLIPConfig, processor: CLIPProcessor) -> None:
    """Stop when the processor's tokenizer has more tokens than the config's text model can embed."""
    vocabulary = len(processor.tokenizer)
    if vocabulary > config.text_config.vocab_size:
        raise ValueError(
            f"{flag} {path!r} has text vocab_size={config.text_config.vocab_size} but the processor's tokenizer has "
            f"{vocabulary} tokens; pass a --processor whose tokenizer fits the config (or raise text_config.vocab_size)."
        )


def check_model(flag: str, name: str, fix: str = _MODEL_FIX, *, weights: bool = True) -> str:
    """``name`` (a folder or Hub id, given as ``flag``) once its CLIPConfig loads and, with ``weights``,
    a local folder holds safetensors weights; one line with ``fix`` otherwise. Loads no weights."""
    from transformers import CLIPConfig

    name = _existing_or_hub_id(flag, name)
    try:
        CLIPConfig.from_pretrained(name)
    except _load_failures() as error:
        raise _load_error(flag, name, error, "model", fix) from None
    if weights and os.path.isdir(name) and not any(file.endswith(".safetensors") or file.endswith(".safetensors.index.json")
                                                   for file in os.listdir(name)):
        raise ValueError(f"{flag} {name!r} holds no safetensors weights; only safetensors are loaded. Convert once: "
                         "CLIPModel.from_pretrained(FOLDER).save_pretrained(FOLDER) (writes model.safetensors).")
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
    if (model is None) == (from_scratch is None):
        raise ValueError("Name the surrogate with exactly one of --model (pretrained) or --from-scratch CONFIG_JSON.")
    config = read_clip_config("--from-scratch", from_scratch) if from_scratch is not None else None  # the cheap checks first
    processor_flag = "--model" if processor is None and from_scratch is None else "--processor"
    loaded = load_processor(processor_flag, processor or model or DEFAULT_MODEL,
                            _MODEL_FIX if processor_flag == "--model" else _PROCESSOR_FIX)
    if config is not None:
        check_vocabulary("--from-scratch", from_scratch, config, loaded)
        return config, loaded
    return check_model("--model", model), loaded


def check_columns(ds: typing.Any, image_column: str, caption_column: str) -> None:
    """Stop on a column the data set lacks, or captions that are not text, before any model is loaded."""
    from .checks import caption_is_list, check_column, check_is_dataset

    check_is_dataset(ds, "--dataset")
    check_column(ds, image_column, "image_column (--image-column)", "the data set")
    check_column(ds, caption_column, "caption_column (--caption-column)", "the data set")
    caption_is_list(ds.features[caption_column], caption_column)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-unlearnable", description="Make image-caption data unlearnable (MEM).",
                                     epilog=EXIT_CODES)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each round; on a crash, print the traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    protect = commands.add_parser("protect", help="protect a data set and save it with save_to_disk", epilog=exit_codes())
    protect.add_argument("--dataset", help="Hub id or local path (save_to_disk folder or load_dataset path); "
                         f"default: the built-in synthetic data set ({DEMO_ROWS} rows)")
    protect.add_argument("--split", default="train", help="split to protect (default: train)")
    protect.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    protect.add_argument("--caption-column", default="caption", help="column holding the captions: one string or a "
                         "list of strings per row (default: caption)")
    protect.add_argument("--output", default="protected", help="output folder for save_to_disk (default: ./protected)")
    protect.add_argument("--save-transform", help="also save the fitted ProtectTransform here")
    protect.add_argument("--work-dir", help="folder for the per-sample state and checkpoints (default: a folder in "
                         "the datasets cache named after the data and settings); rerunning with it resumes. With "
                         "several machines, a folder every machine sees")
    protect.add_argument("--resume", action="store_true", help="require that --work-dir holds an earlier run of the "
                         "same data and settings, and continue it (an error otherwise, rather than starting over)")
    protect.add_argument("--keep-work-dir", action="store_true", help="keep the clean copy of the data in the default "
                         "work dir after protecting (default: deleted; a --work-dir you name is always kept)")
    protect.add_argument("--rows", type=int, default=DEMO_ROWS, help="rows of the built-in synthetic data set "
                         f"(default: {DEMO_ROWS})")
    protect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_surrogate_arguments(protect, required=False, model_default=f"{DEFAULT_MODEL}; with the built-in data set, "
                            "a tiny CLIP trained from scratch")
    add_config_arguments(protect)

    defaults = {field.name: field.default for field in dataclasses.fields(MEMConfig)}  # MEMConfig() would import torch
    verify = commands.add_parser(
        "verify", help="check a protected copy against its clean data set (exit 0 ok, 1 violation, 2 bad arguments)",
        description="Check that PROTECTED is a faithful protected copy of CLEAN: same rows and other columns, every "
        "image within the budget of its clean base, every caption = trigger words + space + clean caption.",
        epilog=exit_codes("a violation: the copy breaks a promise"),
    )
    _add_pair_arguments(verify)
    verify.add_argument("--epsilon", type=parse_pixel_value, default=defaults["epsilon"],
                        help="image budget in [0, 1] pixel space, a number or a fraction (default: 8/255)")
    verify.add_argument("--trigger-length", type=int, default=defaults["trigger_length"],
                        help=f"trigger words per caption; 0 for EM (default: {defaults['trigger_length']})")
    verify.add_argument("--trigger-position", choices=("start", "random"), default=defaults["trigger_position"],
                        help="where the trigger sits: start (the paper) or random (a word boundary); "
                        f"default: {defaults['trigger_position']}")
    verify.add_argument("--model", help="surrogate (model folder, saved ProtectTransform folder or Hub id) whose "
                        "tokenizer must re-tokenise each trigger to --trigger-length tokens")
    verify.add_argument("--image-size", type=int, help="protect resolution in pixels (default: the first protected image's)")
    verify.add_argument("--max-listed", type=int, default=10, help="violations to print (default: 10)")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache = commands.add_parser(
        "cache", help="list or delete the work dirs the library keeps in the datasets cache", epilog=exit_codes(),
        description="A work dir holds a run's state: the clean copy of the data while it runs (and after, with "
        "--keep-work-dir), the noise, triggers and surrogate. list shows each; clean lists them, asks, and deletes them.",
    )
    cache.add_argument("action", choices=("list", "clean"), help="list: one line per work dir (path, created, data "
                       "set, rows, method, size, state); clean: list them, ask, then delete them all")
    cache.add_argument("--cache-dir", help="the folder holding the work dirs (default: <datasets cache>/hf_unlearnable)")
    cache.add_argument("-y", "--yes", action="store_true", help="clean: delete without asking (needed where no one "
                       "can answer: a script, a pipe, a job)")

    show = commands.add_parser("show", help="write a PNG grid of clean / protected / noise / caption samples",
                               epilog=exit_codes())
    _add_pair_arguments(show)
    show.add_argument("--rows", default="4", help="number of first rows, or a comma list of row numbers (default: 4)")
    show.add_argument("--output", default="grid.png", help="PNG file to write (default: grid.png)")
    show.add_argument("--image-size", type=int, help="display size of each image in pixels (default: upscaled to >= 160)")
    show.add_argument("--amplify", type=float, help="noise scale factor (default: stretch each noise to the full range)")
    from .audit.command import add_evaluate_parser

    add_evaluate_parser(commands)
    return parser


def _add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clean", metavar="CLEAN", help="the clean data set: a save_to_disk folder or a load_dataset path")
    parser.add_argument("protected", metavar="PROTECTED", help="the protected copy: a save_to_disk folder or a load_dataset path")
    parser.add_argument("--split", default="train", help="split, when a folder holds a DatasetDict (default: train)")
    parser.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    parser.add_argument("--caption-column", default="caption", help="column holding the captions (default: caption)")


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


def load_dataset_checked(name: str, split: str, flag: str):
    """`load_dataset_argument` for the commands and the recipes: every failure to load (no such folder,
    a Hub data set that cannot be reached, a missing split) is a ValueError naming ``flag`` (exit 2)."""
    import datasets

    looks_local = name.startswith((".", "~")) or os.path.isabs(name)
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise ValueError(f"{flag} {name!r}: no such folder. Pass a save_to_disk folder (or a load_dataset path).")
    try:
        return load_dataset_argument(os.path.expanduser(name), split)
    except SystemExit as error:  # a bad split: load_dataset_argument's own message
        raise ValueError(f"{flag} {name!r}: {str(error).removeprefix('error: ')}") from None
    except (OSError, datasets.exceptions.DatasetsError) as error:
        raise ValueError(f"{flag} {name!r} cannot be loaded ({type(error).__name__}: {error}). "
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

    clean = load_dataset_checked(arguments.clean, arguments.split, "CLEAN")
    protected = load_dataset_checked(arguments.protected, arguments.split, "PROTECTED")
    tokenizer = _load_tokenizer(arguments.model) if arguments.model else None
    report = verify_protected(
        clean, protected, image_column=arguments.image_column, caption_column=arguments.caption_column,
        epsilon=arguments.epsilon, trigger_length=arguments.trigger_length,
        trigger_position=arguments.trigger_position, tokenizer=tokenizer,
        image_size=arguments.image_size, progress=False if arguments.no_progress else None,
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
        clean, protected, rows, image_column=arguments.image_column, caption_column=arguments.caption_column,
        image_size=arguments.image_size, amplify=arguments.amplify, path=arguments.output,
    )
    print(os.path.abspath(arguments.output))
    return 0


def check_work_dir_is_shared(work_dir: str | None, state: typing.Any) -> None:
    """With several processes, stop unless all of them see the work dir's file system (``work_dir``, or
    the folder in the main process's datasets cache that holds the default work dirs)."""
    if state.num_processes == 1:
        return
    from .devices import check_shared_folder
    from .workdir import cache_root

    check_shared_folder(work_dir or cache_root(), state, "--work-dir" if work_dir else "the default work dirs' folder")


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
            ds = load_dataset_checked(arguments.dataset, arguments.split, "--dataset")  # a load failure: one line, exit 2
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
            raise ValueError(f"cache clean would delete the {len(entries)} work dir(s) listed above ({size}) but cannot "
                             "ask first (standard input is not a terminal). Pass --yes to delete them.")
        print(f"Delete these {len(entries)} work dir(s) ({size})? Unfinished runs cannot resume afterwards. [y/N] ",
              end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_OK
    removed = clean_work_dirs(root, entries)
    print(f"deleted {len(removed)} work dir(s), {sum(entry['bytes'] for entry in removed)} bytes, under {root}")
    kept = [entry["path"] for entry in entries if entry not in removed]
    if kept:
        print(f"kept {len(kept)} work dir(s) in use by a running run: {', '.join(kept)}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "protect": run_protect, "verify": run_verify, "show": run_show, "cache": run_cache,
}


def run_command(command: Callable[[argparse.Namespace], int], arguments: argparse.Namespace, *,
                verbose: bool = False, traceback_hint: str = TRACEBACK_HINT) -> int:
    """``command(arguments)``, with the exit codes of `EXIT_CODES`: an error a user can fix (`USER_ERRORS`)
    is one line and 2; any other exception is a crash, one line and 3 (the traceback too with ``verbose``).
    Shared by the CLI and the recipes, so a script can tell bad input from a crash from a failed check."""
    try:
        return command(arguments)
    except (NonFiniteLossError, NoProtectionError) as error:  # not a crash: the run says where and why
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_PROTECTION
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - the crash is reported, in one line, with its own exit code
        if verbose:
            traceback.print_exc()
        message = " ".join(str(error).split())[:500]
        print(f"error: crashed ({type(error).__name__}: {message}); {traceback_hint}.", file=sys.stderr)
        return EXIT_CRASHED


def _run_evaluate(arguments: argparse.Namespace) -> int:
    from .audit.command import run_evaluate

    return run_evaluate(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = {**COMMANDS, "evaluate": _run_evaluate}.get(arguments.command)
    if command is None:
        parser.error(f"unknown command {arguments.command}")
    return run_command(command, arguments, verbose=arguments.verbose)


if __name__ == "__main__":
    sys.exit(main())
