"""The ``hf-unlearnable evaluate`` subcommand: its arguments and what it runs.

Building the parser imports neither torch nor datasets (``--help`` stays quick); `run_evaluate` does.
"""

from __future__ import annotations

from typing import Any

from ..commands import (
    DEFAULT_MODEL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    check_model,
    check_vocabulary,
    exit_codes,
    load_dataset_checked,
    load_processor,
    parse_number,
    parse_pixel_value,
    read_config,
)

_VICTIM_FIX = (
    "pass --victim LOCAL_FOLDER (a CLIP or SigLIP model or its config.json saved with its processor), or --victim "
    "CLIPConfig.json or SiglipConfig.json with --processor LOCAL_FOLDER"
)
_PRETRAINED_FIX = "pass --pretrained LOCAL_FOLDER (a CLIPModel or SiglipModel saved with its processor)"
_PROCESSOR_FIX = "pass --processor LOCAL_FOLDER (a saved CLIPProcessor or SiglipProcessor)"


def add_evaluate_parser(commands: Any) -> None:
    """The ``hf-unlearnable evaluate`` subcommand (its arguments; `run_evaluate` runs it)."""
    from .verdicts import VERDICT_RULE  # numpy only

    parser = commands.add_parser(
        "evaluate",
        help="audit a protected copy: train victims under each defense, a verdict per defense",
        description="Train a victim CLIP or SigLIP on the clean and on the protected copy under each defense, "
        "evaluate both on a clean test split, and say per defense whether the protection holds "
        "(protected / weakened / broken). " + VERDICT_RULE,
        epilog=exit_codes("a defense breaks the protection", done="no defense breaks the protection"),
    )
    parser.add_argument("--clean-train", required=True, help="the clean training data: save_to_disk folder or Hub id")
    parser.add_argument("--protected-train", required=True, help="its protected copy (same rows, same order)")
    parser.add_argument("--test", required=True, help="clean test rows, none of them in the training data")
    parser.add_argument("--train-split", default="train", help="split of the training folders/ids (default: train)")
    parser.add_argument("--test-split", default="test", help="split of --test when it holds several (default: test)")
    parser.add_argument("--defenses", default="none", help="comma-separated defense names (default: none)")
    parser.add_argument(
        "--victim",
        help="CLIP or SigLIP architecture trained from scratch: Hub id, model folder, or CLIPConfig or "
        f"SiglipConfig JSON file (default: {DEFAULT_MODEL} unless --pretrained is given)",
    )
    parser.add_argument("--pretrained", help="a pretrained CLIP or SigLIP (Hub id or folder) fine-tuned on each copy")
    parser.add_argument(
        "--processor",
        help="CLIPProcessor or SiglipProcessor (Hub id or local folder; loaded as the --victim's family's, "
        "else the --pretrained's): tokenizer and image normalisation of every victim (default: each model's "
        f"own; with a config JSON --victim, the --pretrained model's, else {DEFAULT_MODEL}'s)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every victim (default: 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="victim training batch size (default: 64)")
    parser.add_argument("--learning-rate", type=parse_number, default=5e-4, help="victims from scratch (default: 5e-4)")
    parser.add_argument(
        "--fine-tune-learning-rate", type=parse_number, default=1e-5, help="--pretrained victims (default: 1e-5)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every victim's initialisation, batches and defenses (default: 0)"
    )
    parser.add_argument(
        "--epsilon",
        type=parse_pixel_value,
        default=8 / 255,
        help="image budget of the protection, "
        "for the row-for-row check of the copies: a number or a fraction (default: 8/255)",
    )
    parser.add_argument("--mixed-precision", default="auto", help="auto (bf16 on a GPU that has it), no, bf16, fp16")
    parser.add_argument(
        "--image-column", default="image", help="column holding the images in all three data sets (default: image)"
    )
    parser.add_argument(
        "--caption-column",
        default="caption",
        help="column holding the captions in all three data sets (default: caption)",
    )
    parser.add_argument(
        "--output", default="audit", help="folder for report.md, report.json, report.png (default: ./audit)"
    )
    parser.add_argument(
        "--reuse",
        help="report.json of an earlier audit of the same data, victims and recipe: "
        "its clean victims are reused, not retrained",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def victims_from_arguments(
    victim: str | None, pretrained: str | None, processor: str | None
) -> tuple[str | None, str | None, Any]:
    """``(victim, pretrained, processor)`` for `evaluate_protection`, after checking that each loads.

    Either may be of any family of `hf_unlearnable.families.FAMILIES` (CLIP, SigLIP; `family_of`
    says which, as the audit then does). Loads only the small files (configs, processors), so a
    victim that cannot be loaded (offline and not cached, no such folder, a config of no family, no
    safetensors weights for --pretrained) fails here in one line with the fix, before any data is
    checked or any victim trains. A config JSON ``victim`` takes ``processor``, else the
    ``pretrained`` model's, else ``DEFAULT_MODEL``'s (the one the audit then uses for every victim);
    a processor loads with the processor class of the ``victim``'s family, else the ``pretrained``'s."""
    from ..families import FAMILIES, family_of

    victim = victim or (None if pretrained else DEFAULT_MODEL)
    config = read_config("--victim", victim, FAMILIES) if victim is not None and victim.endswith(".json") else None
    if victim is not None and config is None:
        victim = check_model("--victim", victim, _VICTIM_FIX, weights=False, families=FAMILIES)  # its config only
    if pretrained is not None:
        pretrained = check_model("--pretrained", pretrained, _PRETRAINED_FIX, families=FAMILIES)
    family = family_of(config if config is not None else victim or pretrained)
    if processor:
        loaded = load_processor("--processor", processor, _PROCESSOR_FIX, family)
    elif config is not None:
        flag, name = ("--pretrained", pretrained) if pretrained else ("--processor", DEFAULT_MODEL)
        loaded = load_processor(flag, name, _PRETRAINED_FIX if pretrained else _PROCESSOR_FIX, family)
    else:  # each model's own, loaded again by the audit
        loaded = None
        for flag, name, fix in (("--victim", victim, _VICTIM_FIX), ("--pretrained", pretrained, _PRETRAINED_FIX)):
            if name is not None:
                load_processor(flag, name, fix, family_of(name))
    if config is not None:
        check_vocabulary("--victim", victim, config, loaded)
    return victim, pretrained, loaded


def run_evaluate(arguments: Any) -> int:
    """Run ``hf-unlearnable evaluate``: print the verdicts, write the report; exit 1 when a defense breaks it."""
    import datasets

    from .run import evaluate_protection

    if arguments.no_progress:
        datasets.disable_progress_bars()
    clean = load_dataset_checked(arguments.clean_train, arguments.train_split, "--clean-train")
    protected = load_dataset_checked(arguments.protected_train, arguments.train_split, "--protected-train")
    test = load_dataset_checked(arguments.test, arguments.test_split, "--test")
    victim, pretrained, processor = victims_from_arguments(arguments.victim, arguments.pretrained, arguments.processor)
    report = evaluate_protection(
        clean,
        protected,
        test,
        defenses=[name for name in arguments.defenses.split(",") if name.strip()],
        victim=victim,
        processor=processor,
        pretrained=pretrained,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        fine_tune_learning_rate=arguments.fine_tune_learning_rate,
        seed=arguments.seed,
        image_column=arguments.image_column,
        caption_column=arguments.caption_column,
        epsilon=arguments.epsilon,
        mixed_precision=arguments.mixed_precision,
        output_dir=arguments.output,
        progress=not arguments.no_progress,
        reuse=arguments.reuse,
    )
    print(report.summary())
    print("wrote " + ", ".join(report.paths.values()))
    return EXIT_CHECK_FAILED if report.broken else EXIT_OK
