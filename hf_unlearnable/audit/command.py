"""The ``hf-unlearnable evaluate`` subcommand: its arguments and what it runs."""

from __future__ import annotations

from typing import Any

import datasets

from .run import evaluate_protection
from .verdicts import _RULE

_DEFAULT_VICTIM = "openai/clip-vit-base-patch32"


def add_evaluate_parser(commands: Any) -> None:
    """The ``hf-unlearnable evaluate`` subcommand (its arguments; `run_evaluate` runs it)."""
    parser = commands.add_parser(
        "evaluate", help="audit a protected copy: train victims under each defense, a verdict per defense",
        description="Train a victim CLIP on the clean and on the protected copy under each defense, evaluate both on "
        "a clean test split, and say per defense whether the protection holds (protected / weakened / broken). "
        "Exit 0 when no defense breaks it, 1 when one does, 2 on bad input. " + _RULE,
    )
    parser.add_argument("--clean-train", required=True, help="the clean training data: save_to_disk folder or Hub id")
    parser.add_argument("--protected-train", required=True, help="its protected copy (same rows, same order)")
    parser.add_argument("--test", required=True, help="clean test rows, none of them in the training data")
    parser.add_argument("--train-split", default="train", help="split of the training folders/ids (default: train)")
    parser.add_argument("--test-split", default="test", help="split of --test when it holds several (default: test)")
    parser.add_argument("--defenses", default="none", help="comma-separated defense names (default: none)")
    parser.add_argument("--victim", help="architecture trained from scratch: Hub id, model folder or config.json "
                        f"(default: {_DEFAULT_VICTIM} unless --pretrained is given)")
    parser.add_argument("--pretrained", help="a pretrained CLIP (Hub id or folder) fine-tuned on each copy")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="victims from scratch (default: 5e-4)")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-5, help="--pretrained victims (default: 1e-5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=8 / 255, help="image budget, for the row-for-row check of the copies")
    parser.add_argument("--mixed-precision", default="auto", help="auto (bf16 on a GPU that has it), no, bf16, fp16")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--output", default="audit", help="folder for report.md, report.json, report.png (default: ./audit)")
    parser.add_argument("--reuse", help="report.json of an earlier audit of the same data, victims and recipe: "
                        "its clean victims are reused, not retrained")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_evaluate(arguments: Any) -> int:
    """Run ``hf-unlearnable evaluate``: print the verdicts, write the report; exit 1 when a defense breaks it."""
    from ..cli import _load_pair_member

    if arguments.no_progress:
        datasets.disable_progress_bars()
    clean = _load_pair_member(arguments.clean_train, arguments.train_split, "--clean-train")
    protected = _load_pair_member(arguments.protected_train, arguments.train_split, "--protected-train")
    test = _load_pair_member(arguments.test, arguments.test_split, "--test")
    victim = arguments.victim or (None if arguments.pretrained else _DEFAULT_VICTIM)
    report = evaluate_protection(
        clean, protected, test, defenses=[name for name in arguments.defenses.split(",") if name.strip()],
        victim=victim, pretrained=arguments.pretrained, epochs=arguments.epochs, batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate, fine_tune_learning_rate=arguments.fine_tune_learning_rate,
        seed=arguments.seed, image_column=arguments.image_column, caption_column=arguments.caption_column,
        epsilon=arguments.epsilon, mixed_precision=arguments.mixed_precision, output_dir=arguments.output,
        progress=not arguments.no_progress, reuse=arguments.reuse,
    )
    print(report.summary())
    print("wrote " + ", ".join(report.paths.values()))
    return 1 if report.broken else 0
