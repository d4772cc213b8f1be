#!/usr/bin/env python
"""Protect a whole image-caption data set (MS-COCO, Flickr8K/30K or your own) with MEM.

    accelerate launch recipes/protect_coco.py --dataset lmms-lab/flickr30k --split test \
        --model openai/clip-vit-base-patch32 --output-dir flickr30k-protected

One GPU: ``python recipes/protect_coco.py ...``; eight: ``accelerate launch --multi_gpu
--num_processes 8 recipes/protect_coco.py ...``. The surrogate is a Hub id or local folder
(``--model``) or, as in the paper, a CLIP trained from scratch (``--from-scratch CLIPConfig.json``
with ``--processor``). Every `MEMConfig` field is a flag (``--max-rounds``, ``--mixed-precision``,
...), the same as ``hf-unlearnable protect``. The layout is detected (`hf_unlearnable.layouts`):
one row per image with a list of captions is used as is; one row per caption is grouped into one
row per image by ``--image-id-column`` (or a detected ``image_id``/``cocoid``/... column). The
protected copy is written with ``save_to_disk`` by the main process, and optionally pushed to the
Hub with a dataset card (``--push-to-hub``; the token is read from the environment variable named
by ``--hub-token-env`` and never printed). See recipes/README.md for Flickr8K, Flickr30K and COCO.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

# Runs from a checkout without installing: make `hf_unlearnable` importable from the repo root.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from hf_unlearnable.commands import (  # noqa: E402
    add_config_arguments,
    add_surrogate_arguments,
    check_work_dir_is_shared,
    config_from_arguments,
    exit_codes,
    load_dataset_checked,
    run_command,
    surrogate_from_arguments,
)

logger = logging.getLogger("protect_coco")

# hf_unlearnable.hub.CARD_DETAILS, spelt out so that --help does not import torch (a test keeps them equal)
CARD_DETAILS = ("minimal", "full")

# Holds each caption's original row number while a one-row-per-caption data set is grouped, so
# --per-caption-output can restore the exact input order.
_ROW_NUMBERS = "__hf_unlearnable_row__"
_TRACEBACK_HINT = "--verbose prints the traceback"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protect_coco.py",
        description="Protect an image-caption data set with Multi-step Error Minimization (MEM) and save it "
        "(save_to_disk), optionally pushing it to the Hub. Run with python (1 process) or accelerate launch.",
        epilog=exit_codes(traceback_hint=_TRACEBACK_HINT),
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", required=True, help="Hub id or local path (a save_to_disk folder or anything load_dataset takes)"
    )
    data.add_argument("--split", default="train", help="split to protect (default: train)")
    data.add_argument("--image-column", help="image column (default: the first datasets.Image column)")
    data.add_argument(
        "--caption-column",
        help="caption column: one string or a list of strings per row "
        "(default: detected among caption, captions, sentences, sentences_raw, raw, text); a comma "
        "list (caption_0,caption_1,...) merges one-caption-per-column data into a list column 'captions'",
    )
    data.add_argument(
        "--image-id-column",
        help="for one row per caption: the column naming each row's image; rows "
        "are grouped into one row per image with a list of captions (default: detected)",
    )
    data.add_argument(
        "--per-caption-columns",
        default="",
        help="comma list of columns that differ per caption "
        "(e.g. a caption id); when grouping they become lists like the captions",
    )
    data.add_argument(
        "--per-caption-output",
        action="store_true",
        help="after protecting grouped rows, save one row per caption again, in the input's order (the input's layout)",
    )
    data.add_argument(
        "--max-rows", type=int, help="protect only the first N rows (images, after grouping): a trial run"
    )

    add_surrogate_arguments(parser, required=True)

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True, help="folder for the protected data set (save_to_disk)")
    output.add_argument(
        "--work-dir",
        help="folder for the per-sample MEM state (default: a folder in the datasets "
        "cache named after the data and settings); reuse it to resume an interrupted run. With several "
        "machines, a folder every machine sees",
    )
    output.add_argument(
        "--save-transform",
        metavar="DIR",
        help="also save the fitted ProtectTransform (ProtectTransform.from_pretrained(DIR) protects new rows later)",
    )
    output.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="push the protected copy and its dataset card to this Hub data set repo",
    )
    output.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    output.add_argument(
        "--hub-token-env",
        default="HF_TOKEN",
        metavar="NAME",
        help="environment variable holding the Hub token (default: HF_TOKEN; unset: the saved login)",
    )
    output.add_argument("--license", help="with --push-to-hub: the licence for the dataset card (e.g. cc-by-4.0)")
    output.add_argument(
        "--card-details",
        choices=CARD_DETAILS,
        help="with --push-to-hub: 'minimal' (default) publishes "
        "that the data is protected, how to use and cite it, and no setting that helps undo it; 'full' "
        "adds every setting, the losses and the whole MEMConfig",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step; on a crash, print the traceback")
    add_config_arguments(parser)
    return parser


def _is_local(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def _hub_token(arguments: argparse.Namespace) -> str | None:
    token = os.environ.get(arguments.hub_token_env) or None
    if token is None:
        logger.warning(
            "Environment variable %s is not set; pushing with the token saved by `hf auth login`, if any.",
            arguments.hub_token_env,
        )
    return token


def _print_summary(summary: dict) -> None:
    rounds = summary.get("rounds")
    lines = [
        f"protected {summary['rows']} rows of {summary['source']} with {summary['method']} -> {summary['output']}",
        f"  layout: images {summary['image_column']!r}, captions {summary['caption_column']!r}"
        + (f", grouped by {summary['group_by']!r}" if summary["group_by"] else ""),
    ]
    if "max_noise_levels" in summary:
        lines.append(
            f"  budget used: max |noise| {summary['max_noise_levels']}/255 (allowed {summary['epsilon_levels']}/255), "
            f"mean |noise| {summary['mean_abs_noise_levels']:.2f}/255"
        )
    if rounds:
        lines.append(
            f"  surrogate after {rounds} rounds: training loss {summary['surrogate_loss']:.4f}, loss on protected "
            f"data {summary['protected_loss']:.4f}, on clean data {summary['clean_loss']:.4f}"
        )
    if summary.get("pushed_to"):
        lines.append(f"  pushed to {summary['pushed_to']}")
    lines.append(f"  seconds: {summary['total_seconds']:.1f}")
    if summary.get("reused"):  # no rounds ran now: the same data, settings and surrogate finished there before
        lines.append(
            f"  MEM rounds reused from the finished run in {summary['work_dir']} (they took {summary['seconds']:.1f} s)"
        )
    lines.append("summary: " + json.dumps(summary, sort_keys=True, default=str))
    print("\n".join(lines), flush=True)


def run(arguments: argparse.Namespace) -> int:
    import datasets

    from hf_unlearnable.devices import process_state
    from hf_unlearnable.layouts import detect_layout, group_captions, merge_caption_columns, ungroup_captions
    from hf_unlearnable.transform import ProtectTransform

    started = time.perf_counter()
    state = process_state()  # the library's own: joins the process group on CPU too (one per process)
    if arguments.no_progress or not state.is_main_process:
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    config = config_from_arguments(arguments)  # a bad flag value fails here, before any loading
    check_work_dir_is_shared(arguments.work_dir, state)  # several machines: one store, before any work
    per_caption = [name.strip() for name in arguments.per_caption_columns.split(",") if name.strip()]
    if arguments.max_rows is not None and arguments.max_rows < 2:
        raise ValueError(f"--max-rows {arguments.max_rows}: MEM needs at least 2 rows.")

    push = None
    if arguments.push_to_hub:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:  # fail before hours of MEM, not after
            validate_repo_id(arguments.push_to_hub)
        except HFValidationError as error:
            raise ValueError(
                f"--push-to-hub {arguments.push_to_hub!r} is not a Hub repo id ({error}); use 'user/name'."
            ) from None
        from hf_unlearnable.hub import push_protected as push  # imported only when pushing

    # The main process loads (and groups) first, so the others reuse its cache files.
    with state.main_process_first():
        ds = load_dataset_checked(arguments.dataset, arguments.split, "--dataset")  # a load failure: one line, exit 2
        caption_column = arguments.caption_column
        if caption_column and "," in caption_column:
            ds = merge_caption_columns(
                ds, [name.strip() for name in caption_column.split(",") if name.strip()], "captions"
            )
            caption_column = "captions"
        layout = detect_layout(ds, arguments.image_column, caption_column, arguments.image_id_column)
        image_column, caption_column, group_by = layout["image_column"], layout["caption_column"], layout["group_by"]
        if group_by is not None:
            logger.info("Grouping one row per caption into one row per image by %r", group_by)
            ds = group_captions(
                ds,
                group_by,
                caption_column,
                image_column,
                per_caption_columns=per_caption,
                row_numbers_column=_ROW_NUMBERS if arguments.per_caption_output else None,
                max_images=arguments.max_rows,
            )
        else:
            if arguments.per_caption_output:
                raise ValueError(
                    "--per-caption-output needs one row per caption in the input (grouped by "
                    "--image-id-column); this data set already has one row per image."
                )
            if per_caption:
                raise ValueError("--per-caption-columns only applies when rows are grouped by --image-id-column.")
            if arguments.max_rows is not None and arguments.max_rows < len(ds):
                ds = ds.select(range(arguments.max_rows))

    model, processor = surrogate_from_arguments(arguments.model, arguments.from_scratch, arguments.processor)
    transform = ProtectTransform(
        model,
        processor,
        config,
        work_dir=arguments.work_dir,
        progress=not arguments.no_progress and state.is_main_process,
    )
    protected = transform.protect(ds, image_column=image_column, caption_column=caption_column)
    if group_by is not None and arguments.per_caption_output:
        protected = ungroup_captions(
            protected, caption_column, per_caption_columns=per_caption, row_numbers_column=_ROW_NUMBERS
        )

    pushed_to = None
    if state.is_main_process:
        protected.save_to_disk(arguments.output_dir)
        if arguments.save_transform:
            transform.save_pretrained(arguments.save_transform)
        if push is not None:
            pushed_to = push(
                protected,
                arguments.push_to_hub,
                transform,
                private=arguments.private,
                token=_hub_token(arguments),
                source_dataset=None if _is_local(arguments.dataset) else arguments.dataset,
                license=arguments.license,
                card_details=arguments.card_details or "minimal",
            )
    state.wait_for_everyone()
    if state.is_main_process:
        summary = transform.summary()
        summary.update(
            rows=len(protected),
            source=f"{arguments.dataset} [{arguments.split}]",
            output=os.path.abspath(arguments.output_dir),
            image_column=image_column,
            caption_column=caption_column,
            group_by=group_by,
            processes=state.num_processes,
            pushed_to=pushed_to,
            total_seconds=time.perf_counter() - started,
        )
        _print_summary(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.private and not arguments.push_to_hub:
        parser.error("--private needs --push-to-hub")
    if arguments.license and not arguments.push_to_hub:
        parser.error("--license needs --push-to-hub")
    if arguments.card_details and not arguments.push_to_hub:
        parser.error("--card-details needs --push-to-hub")
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # the exit codes of hf-unlearnable protect: bad input is one line and 2, a crash one line and 3
    return run_command(run, arguments, verbose=arguments.verbose, traceback_hint=_TRACEBACK_HINT)


if __name__ == "__main__":
    sys.exit(main())
