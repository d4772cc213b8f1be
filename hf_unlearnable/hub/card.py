"""The dataset card of a protected data set: what its users must know, and nothing that undoes it.

The card (`dataset_card`) is public, so it is written for the data's users and read by whoever
wants to train on the data anyway. By default it says that the data is protected and by which
method, what a user must keep (lossless PNGs, captions as they are, originals private), which
columns changed and what to cite, and nothing that helps undo the protection: no budget, trigger
length, place or words, optimisation setting or surrogate. ``card_details="full"`` adds the full
record (settings, rounds, final losses, the whole `MEMConfig`) for a private or internal copy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from ..transform import ProtectTransform
from ..version import __version__

__all__ = ["CARD_DETAILS", "EM_CITATION", "LIBRARY_CITATION", "MEM_CITATION", "dataset_card", "size_category"]

# How much of the protection a dataset card records: "minimal" (the default) nothing that helps undo it.
CARD_DETAILS = ("minimal", "full")

MEM_CITATION = """@inproceedings{liu2024multimodal,
  title     = {Multimodal Unlearnable Examples: Protecting Data against Multimodal Contrastive Learning},
  author    = {Liu, Xinwei and Jia, Xiaojun and Xun, Yuan and Liang, Siyuan and Cao, Xiaochun},
  booktitle = {Proceedings of the 32nd ACM International Conference on Multimedia (ACM MM)},
  year      = {2024},
  eprint    = {2407.16307},
  archivePrefix = {arXiv},
  url       = {https://arxiv.org/abs/2407.16307}
}"""

EM_CITATION = """@inproceedings{huang2021unlearnable,
  title     = {Unlearnable Examples: Making Personal Data Unexploitable},
  author    = {Huang, Hanxun and Ma, Xingjun and Erfani, Sarah Monazam and Bailey, James and Wang, Yisen},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}"""

# As CITATION.cff asks: the MEM paper (above) and this library.
LIBRARY_CITATION = """@software{hf_unlearnable,
  title  = {hf_unlearnable: Multi-step Error Minimization for image-caption data on the Hugging Face stack},
  author = {{hf_unlearnable developers}},
  year   = {2026},
  note   = {Apache-2.0}
}"""

TAGS = ["unlearnable-examples", "multimodal", "data-protection", "clip", "image-text", "error-minimizing-noise"]
# What the data is (image-caption pairs): the tasks a Hub visitor searches for. The protection is
# aimed at exactly these uses (CLIP-style image-text retrieval / zero-shot classification).
TASK_CATEGORIES = ["image-to-text", "text-to-image", "zero-shot-image-classification"]
TASK_IDS = ["image-captioning"]

_SIZE_BOUNDS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]
# Metadata that `Dataset.push_to_hub` writes into README.md and `load_dataset` reads back.
LOADER_KEYS = ("configs", "dataset_info")


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bin for a row count (e.g. 48 -> "n<1K")."""
    for bound, name in _SIZE_BOUNDS:
        if rows < bound:
            return name
    return "n>1T"


def rows_and_info(ds: datasets.Dataset | datasets.DatasetDict) -> tuple[int, datasets.DatasetInfo | None]:
    """The row count of ``ds`` (all splits of a DatasetDict) and the info of its first split."""
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.values())
        return sum(len(split) for split in splits), (splits[0].info if splits else None)
    if isinstance(ds, datasets.Dataset):
        return len(ds), ds.info
    raise TypeError(f"Expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}.")


def _surrogate_description(transform: ProtectTransform) -> str:
    config = transform.surrogate.model.config
    name = getattr(config, "_name_or_path", "") or ""
    if name:
        if os.path.isabs(name) or os.path.exists(name):
            # a local path may reveal a user name or a private folder layout; keep only its last part
            name = f"a local checkpoint ({Path(name).name})"
        else:
            name = f"`{name}`"
        return f"{name}, further trained on the protected data during protection (Algorithm 1)"
    vision, text = config.vision_config, config.text_config
    return (
        "a CLIP trained from scratch during protection, as in the paper "
        f"(vision: {vision.num_hidden_layers} layers, hidden size {vision.hidden_size}, "
        f"{vision.image_size} px, patch {vision.patch_size}; text: {text.num_hidden_layers} layers, "
        f"hidden size {text.hidden_size}; projection {config.projection_dim})"
    )


def _caption_kind(ds: datasets.Dataset | datasets.DatasetDict, column: str, k: int, full: bool) -> str:
    first = next(iter(ds.values())) if isinstance(ds, datasets.DatasetDict) else ds
    feature = first.features.get(column) if first is not None else None
    if isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        return "a list of captions per image" + (
            "; every caption of an image starts with the same trigger" if full and k else ""
        )
    return "one caption per image"


def _format_loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def dataset_card(
    ds: datasets.Dataset | datasets.DatasetDict,
    transform: ProtectTransform,
    *,
    source_dataset: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    card_details: str = "minimal",
) -> DatasetCard:
    """A `huggingface_hub.DatasetCard` for a data set protected by ``transform``.

    YAML metadata: ``license`` (the argument, else ``ds.info.license``, else omitted), task
    categories, tags, ``source_datasets``, ``size_categories``, ``pretty_name``. The Markdown body
    says that the data is protected and by which method, what a user of the data must know, and how
    to cite. ``card_details="minimal"`` (the default) publishes no setting of the protection (budget,
    trigger length or place, optimisation, surrogate): they would help undo it. ``"full"`` adds the
    full record (settings table, final losses, the whole `MEMConfig`), for a private or internal copy.
    """
    if not isinstance(transform, ProtectTransform):
        raise TypeError(f"transform must be a ProtectTransform, got {type(transform).__name__}.")
    if card_details not in CARD_DETAILS:
        raise ValueError(
            f"card_details={card_details!r} is not one of {CARD_DETAILS}: 'minimal' (the default) publishes no "
            "setting that helps undo the protection, 'full' adds the whole record."
        )
    rows, info = rows_and_info(ds)
    license = license or (info.license if info is not None and info.license else None)
    if pretty_name is None and source_dataset:
        pretty_name = f"{source_dataset} (MEM-protected)"
    em = transform.config.trigger_length == 0
    method = "EM" if em else ("layered" if transform.config.method != "mem" else "MEM")
    data = DatasetCardData(
        license=license,
        task_categories=list(TASK_CATEGORIES),
        task_ids=list(TASK_IDS),
        tags=[*TAGS, method.lower()],
        source_datasets=[source_dataset] if source_dataset else None,
        size_categories=[size_category(rows)],
        pretty_name=pretty_name,
    )
    full = card_details == "full"
    caption_kind = _caption_kind(ds, transform.caption_column, transform.config.trigger_length, full)
    body = _card_body(rows, transform, source_dataset, license, pretty_name, caption_kind, method, full)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _settings_table(transform: ProtectTransform, method: str) -> str:
    """The full record (``card_details="full"`` only): every setting, the rounds run and the final losses."""
    config, summary, k = transform.config, transform.summary(), transform.config.trigger_length
    if method == "MEM":
        method_row = "Multi-step Error Minimization (MEM): image noise and text trigger optimised together"
    elif method == "layered":
        method_row = (
            f"Layered ({config.method_name}): error-minimizing noise on each image's own caption "
            f"(EOT: {', '.join(config.eot_transforms) or 'none'}), then a text trigger optimised against a "
            "surrogate trained on the noised images"
        )
    else:
        method_row = "Error-minimizing noise (EM, Huang et al. 2021): MEM with no text trigger"
    rounds = len(transform.history)
    if rounds:
        planned = config.max_rounds + (config.trigger_rounds if method == "layered" else 0)
        rounds_row = f"{rounds} (at most {planned}" + (
            f", stop when the loss on protected data < {config.stop_loss})" if config.stop_loss is not None else ")"
        )
        losses_row = (
            f"training {_format_loss(summary.get('surrogate_loss'))}, on the protected data "
            f"{_format_loss(summary.get('protected_loss'))}, on the clean data {_format_loss(summary.get('clean_loss'))} "
            "(contrastive loss; far lower on protected than on clean data means the shortcut was learnt)"
        )
    else:
        rounds_row = (
            "0 (the transform was not fitted here; rows were protected online against a frozen surrogate, "
            f"{config.online_rounds} rounds each)"
        )
        losses_row = "n/a"
    used = f", largest change used: {summary['max_noise_levels']}/255" if "max_noise_levels" in summary else ""
    trigger_row = (
        f"{k} word{'s' if k != 1 else ''} at the start of each caption (HotFlip, {config.hotflip_candidates} candidates "
        f"per position, updated in the "
        + (
            f"{config.trigger_rounds} rounds of the trigger layer)"
            if method == "layered"
            else f"first {config.trigger_rounds} rounds)"
        )
        if k
        else "none (EM)"
    )
    table = [
        ("Method", method_row),
        ("Image budget (epsilon)", f"{config.epsilon_levels}/255 per pixel and colour channel (l-infinity){used}"),
        ("Text trigger", trigger_row),
        ("PGD", f"{config.pgd_steps} steps of {config.step_levels}/255 per batch and round (Eq. 5)"),
        ("Surrogate training", f"{config.surrogate_steps} AdamW steps per round, batch {config.batch_size}"),
        ("Rounds run", rounds_row),
        ("Final surrogate losses", losses_row),
        ("Surrogate", _surrogate_description(transform)),
        ("Library", f"hf_unlearnable {__version__}"),
        ("Seed", str(config.seed)),
    ]
    config_json = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    return "\n".join(
        [
            "## How it was protected",
            "",
            '> This card records every setting of the protection (`card_details="full"`). They help anyone who '
            "wants to undo it: publish this record only where that is acceptable.",
            "",
            "| Setting | Value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in table),
            "",
            "<details><summary>Full MEMConfig</summary>",
            "",
            "```json",
            config_json,
            "```",
            "",
            "</details>",
            "",
        ]
    )


def _card_body(
    rows: int,
    transform: ProtectTransform,
    source: str | None,
    license: str | None,
    pretty_name: str | None,
    caption_kind: str,
    method: str,
    full: bool,
) -> str:
    # The default card is read by whoever wants to undo the protection: it names the method (the
    # paper is public) and what a user must do, never where the trigger is, its length, its words,
    # the budget, any optimisation setting or the surrogate. Only `full` adds them.
    k, size = transform.config.trigger_length, transform.image_size
    image_column, caption_column = transform.image_column, transform.caption_column
    source_text = f"[`{source}`](https://huggingface.co/datasets/{source})" if source else "an image-caption data set"
    if method == "MEM":
        what = (
            "made unlearnable for CLIP-style image-text training with Multi-step Error Minimization (MEM; Liu et al., "
            "ACM MM 2024). Every image carries an imperceptible perturbation and every caption carries added words, "
            "optimised together"
        )
    elif method == "layered":
        what = (
            "made unlearnable for CLIP-style image-text training with hf_unlearnable's layered protection, built on "
            "error-minimizing noise (EM; Huang et al., ICLR 2021) and Multi-step Error Minimization (MEM; Liu et al., "
            "ACM MM 2024). Every image carries an imperceptible perturbation and every caption carries added words, "
            "optimised"
        )
    else:
        what = (
            "made unlearnable for CLIP-style image-text training with error-minimizing noise (EM; Huang et al., ICLR "
            "2021), as in Multi-step Error Minimization (MEM; Liu et al., ACM MM 2024) with no added words. Every image "
            "carries an imperceptible perturbation, optimised"
        )
    if not k:
        caption_line = f"- `{caption_column}`: {caption_kind}, unchanged (EM adds no words)."
    elif full:
        caption_line = (
            f"- `{caption_column}`: {caption_kind}. Each caption is its trigger ({k} words), one space, then "
            "the original caption unchanged."
        )
    else:
        caption_line = (
            f"- `{caption_column}`: {caption_kind}: the source text with added words that belong to the "
            "protection, not to the description."
        )
    notes = [
        "- **Keep the images lossless.** Publish, mirror and serve the PNG files as they are: no re-encoding (JPEG or "
        "any other format), no resizing or cropping."
        + (" These change the pixel values and weaken the protection." if full else ""),
    ]
    if k:
        notes.append(
            "- **Captions are not plain descriptions.** They carry words added by the protection: keep them as they "
            "are when you mirror the data, and do not use them as reference captions (e.g. to score a captioning model)."
        )
    notes += [
        "- **Keep the originals private.** This copy holds neither the clean images nor the perturbation on its own; "
        "anyone holding the clean originals, or the perturbation (the published image minus it is the clean image), "
        "can train on clean data. The data owner keeps both private.",
        "- **This is not encryption and not a guarantee.** The protection is aimed at CLIP-style contrastive "
        "image-text training, as evaluated in the paper; other kinds of training may still learn from this data."
        + (" So may strong data augmentation or an adaptive adversary." if full else ""),
    ]
    if full and k:
        notes.append(
            f"- **Captions start with trigger words.** The first {k} word{'s' if k != 1 else ''} of every caption "
            "are the trigger, not part of the description; the original caption follows after one space."
        )
    elif not full:
        notes.append(
            "- **The settings are not published.** This card deliberately leaves out how the protection was tuned; "
            "the data owner keeps that record."
        )
    license_line = (
        f"The protected copy keeps the licence of the source data: `{license}`."
        if license
        else "No licence was given; the data owner should state the licence of the source data in this card."
    )
    citations = "\n\n".join([MEM_CITATION, *([EM_CITATION] if method in ("EM", "layered") else []), LIBRARY_CITATION])
    title = pretty_name or (f"{source} (protected)" if source else "Protected image-caption data set")
    parts = [
        f"# {title}",
        "",
        f"This is a **protected copy** of {source_text}, {what} so that a model trained on this copy learns that "
        "added pattern instead of what the images show, and matches images and texts on real data far worse than "
        "a model trained on the original. People can still look at the pictures and read the captions: the data "
        "owner published them for people, not for training image-text models without consent.",
        "",
        license_line,
        "",
        *([_settings_table(transform, method)] if full else []),
        "## Columns",
        "",
        f"- `{image_column}`: the protected image, a lossless PNG at {size}x{size} px (the original resized on "
        "its shorter side and centre-cropped, plus the perturbation).",
        caption_line,
        f"- Every other column, the number of rows ({rows}) and their order are unchanged.",
        "",
        "## Using this data",
        "",
        *notes,
        "",
        "## Citation",
        "",
        "If you use this data or the method, please cite the MEM paper and hf_unlearnable:",
        "",
        "```bibtex",
        citations,
        "```",
        "",
    ]
    return "\n".join(parts)
