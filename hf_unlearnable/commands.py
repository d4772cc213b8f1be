"""What the command lines share: the `hf-unlearnable` subcommands, `audit.command` and the recipes.

Exit codes and `run_command` (0 done; 1 the check failed; 2 bad input; 3 crashed; 4 training could
not go on or protected nothing), number parsers (``8/255``), one flag per `MEMConfig` field, the
surrogate flags and their loaders (one line with the fix when a model, processor or config does not
load), loading a data set named on the command line, and the check that every process sees the
work dir. Importing this module imports neither torch, transformers nor datasets: each function
imports what it needs, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import inspect
import json
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable

from .config import MEMConfig
from .errors import NonFiniteLossError, NoProtectionError

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import CLIPConfig, PreTrainedConfig, ProcessorMixin

    from .imagetext import ModelFamily

DEFAULT_MODEL = "openai/clip-vit-base-patch32"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_NO_PROTECTION = 0, 1, 2, 3, 4
TRACEBACK_HINT = "hf-unlearnable -v COMMAND ... prints the traceback"


def exit_codes(check_failed: str | None = None, done: str = "done", traceback_hint: str = TRACEBACK_HINT) -> str:
    """The exit codes, for a command's ``--help`` epilog (``check_failed``: what exit 1 means, if it can happen)."""
    codes = [
        f"0 {done}",
        *([f"1 {check_failed}"] if check_failed else []),
        "2 bad input (one line naming the argument and the fix)",
        f"3 crashed (one line; {traceback_hint})",
        "4 training could not go on or protected nothing (a loss turned NaN, or no pixel or trigger changed; "
        "one line naming where and the likely cause)",
    ]
    return "exit codes: " + "; ".join(codes)


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
    return {
        name: re.split(r"(?<=[a-z0-9)])\. (?=[A-Z\"(])", text, maxsplit=1)[0].rstrip(".")
        for name, text in entries.items()
    }


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
            _flag(field.name),
            dest=field.name,
            type=parse,
            default=None,
            metavar=field.name.upper(),
            help=description.strip().replace("%", "%%"),
        )


def config_from_arguments(arguments: argparse.Namespace, defaults: dict | None = None) -> MEMConfig:
    """The MEMConfig of the flags `add_config_arguments` added: ``defaults``, then every flag given."""
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
    which.add_argument(
        "--model",
        help="pretrained CLIP surrogate: Hub id or local folder (e.g. "
        f"{DEFAULT_MODEL}), further trained during protection"
        + (f" (default: {model_default})" if model_default else ""),
    )
    which.add_argument(
        "--from-scratch",
        metavar="CONFIG_JSON",
        help="train the surrogate from scratch (the paper's "
        "setting) from this transformers CLIPConfig JSON file (CLIPConfig(...).to_json_file(path))",
    )
    group.add_argument(
        "--processor",
        help="CLIPProcessor (Hub id or local folder): tokenizer and image normalisation "
        f"(default: the --model's own; with --from-scratch {DEFAULT_MODEL})",
    )


_MODEL_FIX = (
    "pass --model LOCAL_FOLDER (a CLIPModel saved with its processor), or --from-scratch CLIPConfig.json "
    "--processor LOCAL_FOLDER (the paper's setting)"
)
_PROCESSOR_FIX = (
    f"pass --processor LOCAL_FOLDER (a saved CLIPProcessor; with --from-scratch it defaults to {DEFAULT_MODEL}'s)"
)
_SURROGATE_IS_CLIP = (
    "the surrogate must be CLIP; other families are audited as victims: hf-unlearnable evaluate --victim"
)


def _load_error(flag: str, name: str, error: Exception, what: str, fix: str, kind: str = "CLIP") -> ValueError:
    """One line saying why ``name`` did not load and ``fix``, what to pass instead; never a traceback."""
    from huggingface_hub import constants

    if os.path.isdir(os.path.expanduser(name)):
        cause = " ".join(str(error).split())[:300]
        return ValueError(
            f"{flag} {name!r}: the folder does not hold a loadable {kind} {what} ({type(error).__name__}: {cause})."
        )
    why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached or has no such repo"
    return ValueError(
        f"{flag} {name!r} is not a local folder nor in the Hugging Face cache, and {why}. "
        f"Fix: {fix}, or go online (HF_HUB_OFFLINE=0)."
    )


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


def _families(families: Sequence[ModelFamily] | None) -> tuple[ModelFamily, ...]:
    """``families``, or CLIP alone (the surrogate's family) when None."""
    from .surrogate import CLIP

    return tuple(families) if families else (CLIP,)


def _kinds(families: Sequence[ModelFamily], name: Callable[[ModelFamily], str] = lambda f: f.name) -> str:
    """What ``families`` accept, for messages: ``"CLIP or SigLIP"``, or ``name`` of each joined so."""
    return " or ".join(name(f) for f in families)


def load_processor(
    flag: str, name: str, fix: str = _PROCESSOR_FIX, family: ModelFamily | None = None
) -> ProcessorMixin:
    """The processor of ``family`` (default CLIP: a CLIPProcessor) in folder or Hub repo ``name``
    (given as ``flag``), or one line with ``fix``."""
    (family,) = _families([family] if family else None)
    name = _existing_or_hub_id(flag, name)
    try:
        return family.processor_class.from_pretrained(name)
    except _load_failures() as error:
        raise _load_error(flag, name, error, "processor", fix, family.name) from None


def read_config(
    flag: str, path: str, families: Sequence[ModelFamily] | None = None, refused: str = ""
) -> PreTrainedConfig:
    """The config in JSON file ``path`` (given as ``flag``) of one of ``families`` (default: CLIP
    alone); its ``model_type`` says which (`hf_unlearnable.families.family_of`, as the audit reads the
    same file). One line naming the problem otherwise; ``refused``: why a family known to the library
    but not in ``families`` is refused here."""
    from .families import family_of_model_type

    families = _families(families)
    kinds, names = _kinds(families, lambda f: f.config_class.__name__), _kinds(families)
    write = _kinds(families, lambda f: f"{f.config_class.__name__}(...).to_json_file(path)")
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path!r}: no such file (a {kinds} JSON, e.g. {write}).")
    try:
        with open(path, encoding="utf-8") as file:
            fields = json.load(file)
    except (OSError, ValueError) as error:
        fields = f"{type(error).__name__}: {error}"
    model_type = fields.get("model_type") if isinstance(fields, dict) else None
    family = family_of_model_type(model_type)  # CLIP without a model_type
    # A config class takes any JSON (unknown keys become attributes); a wrong file would build a default-size model.
    if not isinstance(fields, dict) or not (
        model_type == family.config_class.model_type
        or (model_type is None and {"text_config", "vision_config"} <= set(fields))
    ):
        accepted = _kinds(families, lambda f: repr(f.config_class.model_type))
        why = (
            fields
            if isinstance(fields, str)
            else f"model_type {model_type!r}"
            if model_type
            else f"no model_type {accepted}, no text_config and vision_config"
        )
        raise ValueError(
            f"{flag} {path!r} is not a {kinds} JSON file ({why}); write one with {write}, "
            f"or pass a {names} checkpoint's config.json."
        )
    if family not in families:
        raise ValueError(
            f"{flag} {path!r} is a {family.config_class.__name__} JSON file, but {flag} takes a {kinds}"
            f"{' (' + refused + ')' if refused else ''}; write one with {write}."
        )
    return family.config_class.from_dict(fields)


def read_clip_config(flag: str, path: str) -> CLIPConfig:
    """The surrogate's CLIPConfig in JSON file ``path`` (given as ``flag``); one line naming the
    problem otherwise (a SigLIP or other family's JSON too)."""
    return read_config(flag, path, refused=_SURROGATE_IS_CLIP)


def check_vocabulary(flag: str, path: str, config: PreTrainedConfig, processor: ProcessorMixin) -> None:
    """Stop when the processor's tokenizer has more tokens than the config's text model can embed
    (``text_config.vocab_size``, in every family's config)."""
    vocabulary = len(processor.tokenizer)
    if vocabulary > config.text_config.vocab_size:
        raise ValueError(
            f"{flag} {path!r} has text vocab_size={config.text_config.vocab_size} but the processor's tokenizer has "
            f"{vocabulary} tokens; pass a --processor whose tokenizer fits the config (or raise text_config.vocab_size)."
        )


def check_model(
    flag: str,
    name: str,
    fix: str = _MODEL_FIX,
    *,
    weights: bool = True,
    families: Sequence[ModelFamily] | None = None,
) -> str:
    """``name`` (a folder or Hub id, given as ``flag``) once its config loads as one of ``families``
    (default: CLIP alone; `hf_unlearnable.families.family_of` says which) and, with ``weights``, a
    local folder holds safetensors weights; one line with ``fix`` otherwise. Loads no weights."""
    from transformers import PreTrainedConfig

    from .families import family_of_model_type

    families = _families(families)
    name = _existing_or_hub_id(flag, name)
    try:
        fields, _ = PreTrainedConfig.get_config_dict(name)  # read once; its model_type names the family
        model_type = fields.get("model_type")
        family = family_of_model_type(model_type)  # CLIP for an unknown one, refused below
        family.config_class.from_dict(fields)
    except _load_failures() as error:
        raise _load_error(flag, name, error, "model", fix, _kinds(families)) from None
    if family not in families or model_type not in (None, family.config_class.model_type):
        held = family.name if model_type == family.config_class.model_type else f"model_type {model_type!r}"
        raise ValueError(f"{flag} {name!r} holds a {held} model, not {_kinds(families)}; {fix}.")
    if (
        weights
        and os.path.isdir(name)
        and not any(
            file.endswith(".safetensors") or file.endswith(".safetensors.index.json") for file in os.listdir(name)
        )
    ):
        raise ValueError(
            f"{flag} {name!r} holds no safetensors weights; only safetensors are loaded. Convert once: "
            f"{family.model_class.__name__}.from_pretrained(FOLDER).save_pretrained(FOLDER) (writes model.safetensors)."
        )
    return name


def surrogate_from_arguments(
    model: str | None, from_scratch: str | None = None, processor: str | None = None
) -> tuple[str | CLIPConfig, ProcessorMixin]:
    """The surrogate a command line names: ``(model, CLIPProcessor)`` for `ProtectTransform`.

    ``model``: a Hub id or folder (returned as is, after its processor and config loaded) or, with
    ``from_scratch``, the `CLIPConfig` read from that JSON file (a CLIP trained from scratch, as in
    the paper; ``processor`` defaults to ``DEFAULT_MODEL``'s). Loads only the small files, so a
    surrogate that cannot be loaded (offline, no such folder, no safetensors weights, a tokenizer
    too large for the config) fails here in one line with the fix, before any weights or data work.
    """
    if (model is None) == (from_scratch is None):
        raise ValueError("Name the surrogate with exactly one of --model (pretrained) or --from-scratch CONFIG_JSON.")
    config = (
        read_clip_config("--from-scratch", from_scratch) if from_scratch is not None else None
    )  # the cheap checks first
    processor_flag = "--model" if processor is None and from_scratch is None else "--processor"
    loaded = load_processor(
        processor_flag,
        processor or model or DEFAULT_MODEL,
        _MODEL_FIX if processor_flag == "--model" else _PROCESSOR_FIX,
    )
    if config is not None:
        check_vocabulary("--from-scratch", from_scratch, config, loaded)
        return config, loaded
    return check_model("--model", model), loaded


def load_dataset_argument(name: str, split: str):
    """A local `save_to_disk` folder, or anything `datasets.load_dataset` takes."""
    import datasets

    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json"))
        or os.path.exists(os.path.join(name, "dataset_dict.json"))
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
        raise ValueError(
            f"{flag} {name!r} cannot be loaded ({type(error).__name__}: {error}). "
            "Pass a save_to_disk folder (or a load_dataset path)."
        ) from None


def check_work_dir_is_shared(work_dir: str | None, state: typing.Any) -> None:
    """With several processes, stop unless all of them see the work dir's file system (``work_dir``, or
    the folder in the main process's datasets cache that holds the default work dirs)."""
    if state.num_processes == 1:
        return
    from .devices import check_shared_folder
    from .workdir import cache_root

    check_shared_folder(work_dir or cache_root(), state, "--work-dir" if work_dir else "the default work dirs' folder")


def run_command(
    command: Callable[[argparse.Namespace], int],
    arguments: argparse.Namespace,
    *,
    verbose: bool = False,
    traceback_hint: str = TRACEBACK_HINT,
) -> int:
    """``command(arguments)``, with the exit codes of `exit_codes`: an error a user can fix (`USER_ERRORS`)
    is one line and 2; a run that could not go on or protected nothing, one line and 4; any other
    exception is a crash, one line and 3 (the traceback too with ``verbose``). Shared by the CLI and
    the recipes, so a script can tell bad input from a crash from a failed check."""
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
