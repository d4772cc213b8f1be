"""The audit a data owner runs before publishing: does the protected copy survive what a scraper does?

`evaluate_protection` trains a victim CLIP on the clean copy and on the protected copy, once per
defense (what an unauthorised trainer might do to each batch: JPEG, grayscale, caption cleaning,
...), evaluates both on a clean test split and gives a verdict per defense:

- **protected**: the protected victim's R@10 (mean of image-to-text and text-to-image) stays at
  or below the *floor*: ``PROTECTED_FACTOR`` (3) times chance, the bar issue 9 sets under
  defenses, or, for a fine-tuned victim, what the pretrained model scored before fine-tuning if
  that is higher; and the clean victim under the same defense rose above the floor;
- **broken**: the protected victim rose above the floor and reached at least ``BROKEN_SHARE``
  (half) of the clean victim's R@10 under the same defense (issue 9's target 4): the copy teaches
  nearly as much as the clean data. A defense that hurts clean data more than the protected copy
  (stripping the first words of every caption removes a trigger, but also real words) counts
  as broken whenever the protected victim learns more than half of what the clean one did;
- **weakened**: above the floor, below half of the clean victim;
- **inconclusive**: neither victim rose above the floor: nothing was learned, so the run says
  nothing about the protection; train longer or on more rows.

    report = evaluate_protection(clean["train"], protected, clean["test"],
                                 defenses=("none", "jpeg-75", "strip-3"), victim="openai/clip-vit-base-patch32")
    print(report.summary())        # one line per defense; report.broken lists the defenses that break it

It writes ``report.md``, ``report.json`` and ``report.png`` (R@10 per defense, chance and clean
marked) to ``output_dir``. From the shell: ``hf-unlearnable evaluate --clean-train C
--protected-train P --test T``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .images import load_image, prepare_image, to_rgb, undecoded
from .checks import check_dataset
from .rows import row_digest
from .surrogate import load_surrogate
from .victim import Defense, train_victim

__all__ = [
    "BROKEN_SHARE",
    "PROTECTED_FACTOR",
    "ProtectionReport",
    "Verdict",
    "chance_scores",
    "check_copies_match",
    "check_no_overlap",
    "evaluate_protection",
    "judge",
    "mean_recall_at_10",
    "plot_report",
    "write_report",
]

logger = logging.getLogger(__name__)

#: protected: mean R@10 <= PROTECTED_FACTOR x chance (issue 9's target under defenses).
PROTECTED_FACTOR = 3.0
#: broken: mean R@10 >= BROKEN_SHARE x the clean victim's mean R@10 under the same defense.
BROKEN_SHARE = 0.5

_READ_BATCH = 256
_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")
FROM_SCRATCH, FINE_TUNED = "from scratch", "fine-tuned"


# ---------------------------------------------------------------------------------------- scores


def mean_recall_at_10(metrics: Mapping[str, float]) -> float:
    """R@10 averaged over both directions (image-to-text and text-to-image), in percent."""
    return (float(metrics["i2t_r10"]) + float(metrics["t2i_r10"])) / 2


def chance_scores(captions_per_image: Sequence[int]) -> dict[str, float]:
    """What a model that ranks at random scores: R@1/5/10 and MedR in both directions, in the
    conventions of `hf_unlearnable.metrics.retrieval_metrics`.

    Text-to-image: each caption's image is uniform among N images, so R@K = 100 min(K, N) / N and
    MedR = (N + 1) / 2. Image-to-text: image j's best rank among its n_j captions out of C has
    P(rank <= r) = 1 - C(C - n_j, r) / C(C, r) (exact; one caption per image gives R@K = 100 K / C).
    """
    counts = np.asarray(list(captions_per_image), dtype=np.int64)
    if counts.size == 0 or (counts < 1).any():
        raise ValueError("captions_per_image must list at least one image, each with at least one caption.")
    num_images, num_captions = len(counts), int(counts.sum())
    ranks = np.arange(1, num_captions + 1)
    # P(best rank > r) for each distinct caption count, by the running product prod_i (C - n - i) / (C - i).
    cdf = np.zeros(num_captions)
    for n, images in zip(*np.unique(counts, return_counts=True)):
        factors = np.clip((num_captions - n - np.arange(num_captions)) / (num_captions - np.arange(num_captions)), 0, None)
        cdf += images * (1 - np.cumprod(factors))
    cdf /= num_images
    scores: dict[str, float] = {}
    for k in (1, 5, 10):
        scores[f"i2t_r{k}"] = 100.0 * float(cdf[min(k, num_captions) - 1])
    middle = int(np.searchsorted(cdf, 0.5 - 1e-12))  # numpy's median: halfway when the CDF hits 1/2 exactly
    scores["i2t_medr"] = float(ranks[middle]) + (0.5 if abs(cdf[middle] - 0.5) < 1e-12 else 0.0)
    for k in (1, 5, 10):
        scores[f"t2i_r{k}"] = 100.0 * min(k, num_images) / num_images
    scores["t2i_medr"] = (num_images + 1) / 2
    return scores


def judge(protected_r10: float, clean_r10: float, chance_r10: float, start_r10: float | None = None) -> tuple[str, str]:
    """(verdict, reason) for one defense; all figures are mean R@10 in percent (module docstring).

    ``start_r10`` is the clean victim before training: for a fine-tuned victim, the pretrained
    model's own score, which raises the floor when it is above 3x chance.
    """
    times_chance = protected_r10 / chance_r10
    share = protected_r10 / clean_r10 if clean_r10 > 0 else math.inf
    floor = max(PROTECTED_FACTOR * chance_r10, start_r10 if start_r10 is not None else 0.0)
    floor_text = (f"{PROTECTED_FACTOR:g}x chance" if floor == PROTECTED_FACTOR * chance_r10
                  else f"the pretrained model's {floor:.1f} before fine-tuning")
    if protected_r10 <= floor:
        if clean_r10 <= floor:
            return "inconclusive", (
                f"neither victim learned: protected R@10 {protected_r10:.1f}, clean {clean_r10:.1f}, both at or below "
                f"{floor_text} ({floor:.1f}); train longer or on more rows"
            )
        return "protected", (
            f"R@10 {protected_r10:.1f} = {times_chance:.1f}x chance, at or below {floor_text} ({floor:.1f}), "
            f"while the clean victim reached {clean_r10:.1f}"
        )
    if protected_r10 >= BROKEN_SHARE * clean_r10:
        return "broken", (
            f"R@10 {protected_r10:.1f} = {times_chance:.1f}x chance and {share:.0%} of the clean victim's {clean_r10:.1f} "
            f"(broken at >= {BROKEN_SHARE:.0%})"
        )
    return "weakened", (
        f"R@10 {protected_r10:.1f} = {times_chance:.1f}x chance, above {floor_text} ({floor:.1f}), and {share:.0%} "
        f"of the clean victim's {clean_r10:.1f} (broken at >= {BROKEN_SHARE:.0%})"
    )


# ---------------------------------------------------------------------------------------- report


@dataclass
class Verdict:
    """The audit's answer for one (protected copy, victim, defense)."""

    copy: str
    victim: str
    defense: str
    verdict: str  # "protected", "weakened", "broken" or "inconclusive"
    protected_r10: float
    clean_r10: float
    chance_r10: float
    start_r10: float
    reason: str
    protected_final: dict[str, float] = field(default_factory=dict)
    clean_final: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.copy} | {self.victim} | {self.defense}: {self.verdict.upper()} ({self.reason})"


@dataclass
class ProtectionReport:
    """What `evaluate_protection` returns: verdicts, chance, per-epoch histories, written files."""

    verdicts: list[Verdict]
    chance: dict[str, float]
    histories: dict[str, list[dict[str, float]]]  # "victim | defense | copy" -> train_victim history
    settings: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def broken(self) -> list[Verdict]:
        """The verdicts where a defense breaks the protection."""
        return [v for v in self.verdicts if v.verdict == "broken"]

    def summary(self) -> str:
        """One line per verdict, then a plain sentence on what breaks the protection."""
        lines = [f"chance R@10 {mean_recall_at_10(self.chance):.2f} (mean of both directions)"]
        lines += [f"  {verdict}" for verdict in self.verdicts]
        lines.append(_plain_statement(self.verdicts))
        note = _coarse_test_note(self.chance)
        return "\n".join(lines + ([note] if note else []))

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {"settings": self.settings, "chance": self.chance, "verdicts": [asdict(v) for v in self.verdicts],
             "histories": self.histories, "rule": _RULE}
        )

    def to_markdown(self) -> str:
        return _markdown(self)


_RULE = (
    f"Score: R@10 on the clean test split, averaged over image-to-text and text-to-image. Floor: "
    f"{PROTECTED_FACTOR:g}x chance (for a fine-tuned victim, the pretrained model's score if higher). "
    f"protected: at or below the floor while the clean victim under the same defense rose above it. broken: "
    f"above the floor and at least {BROKEN_SHARE:.0%} of the clean victim's score under the same defense. "
    f"weakened: above the floor, below {BROKEN_SHARE:.0%} of the clean victim's. inconclusive: neither victim "
    f"rose above the floor."
)


def _coarse_test_note(chance: Mapping[str, float]) -> str | None:
    """A warning when the test split is too small for the verdict to mean much."""
    chance10 = mean_recall_at_10(chance)
    if PROTECTED_FACTOR * chance10 <= 30:
        return None
    return (f"Note: the test split is small: chance R@10 is {chance10:.1f}, so {PROTECTED_FACTOR:g}x chance is "
            f"{PROTECTED_FACTOR * chance10:.0f}; use at least 100 test images (chance R@10 10) for a verdict that means something.")


def _plain_statement(verdicts: Sequence[Verdict]) -> str:
    broken = [v for v in verdicts if v.verdict == "broken"]
    if broken:
        names = ", ".join(f"{v.defense} ({v.victim}, {v.copy})" if len({x.copy for x in verdicts}) > 1 else f"{v.defense} ({v.victim})" for v in broken)
        return f"BROKEN: these defenses break the protection: {names}. A trainer who applies them learns from the copy."
    if any(v.verdict == "inconclusive" for v in verdicts):
        return "No defense broke the protection; some runs are inconclusive, nothing was learned (see the table)."
    if any(v.verdict == "weakened" for v in verdicts):
        return "No defense broke the protection, but some weaken it (above the floor, see the table)."
    return "Every defense tested leaves the protection in place (at or below the floor)."


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def _markdown(report: ProtectionReport) -> str:
    chance10 = mean_recall_at_10(report.chance)
    several_copies = len({v.copy for v in report.verdicts}) > 1
    lines = ["# Protection audit", "", f"**{_plain_statement(report.verdicts)}**", "", _RULE, ""]
    head = ("| Copy " if several_copies else "") + "| Victim | Defense | Verdict | R@10 protected | R@10 clean | before training | x chance | share of clean |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for v in report.verdicts:
        share = v.protected_r10 / v.clean_r10 if v.clean_r10 > 0 else math.inf
        verdict = f"**{v.verdict.upper()}**" if v.verdict == "broken" else v.verdict
        lines.append(
            (f"| {v.copy} " if several_copies else "")
            + f"| {v.victim} | {v.defense} | {verdict} | {v.protected_r10:.1f} | {v.clean_r10:.1f} | {v.start_r10:.1f} "
            f"| {v.protected_r10 / chance10:.1f} | {share:.0%} |"
        )
    note = _coarse_test_note(report.chance)
    lines += ["", f"Chance R@10: {chance10:.2f}." + (f" {note}" if note else ""), "", "## Retrieval on the clean test split (last epoch)", ""]
    head = "| Victim | Defense | Trained on | " + " | ".join(_KEYS) + " |"
    lines += [head, "|" + "---|" * (len(_KEYS) + 3)]
    lines.append("| - | - | chance | " + " | ".join(f"{report.chance[k]:.1f}" for k in _KEYS) + " |")
    seen = set()
    for v in report.verdicts:
        if (v.victim, v.defense) not in seen:
            seen.add((v.victim, v.defense))
            lines.append(f"| {v.victim} | {v.defense} | clean | " + " | ".join(f"{v.clean_final[k]:.1f}" for k in _KEYS) + " |")
        lines.append(f"| {v.victim} | {v.defense} | {v.copy} | " + " | ".join(f"{v.protected_final[k]:.1f}" for k in _KEYS) + " |")
    lines += ["", "## Settings", "", "```json", json.dumps(_json_safe(report.settings), indent=1), "```", ""]
    if "figure" in report.paths:
        lines.insert(6, f"![R@10 per defense]({Path(report.paths['figure']).name})\n")
    return "\n".join(lines)


def plot_report(report: ProtectionReport, path: str | os.PathLike) -> None:
    """R@10 per defense (bars: protected copies; black ticks: clean victim; lines: chance, 3x chance),
    and R@10 per epoch, one row of panels per victim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    victims = list(dict.fromkeys(v.victim for v in report.verdicts))
    copies = list(dict.fromkeys(v.copy for v in report.verdicts))
    chance10 = mean_recall_at_10(report.chance)
    defenses = list(dict.fromkeys(v.defense for v in report.verdicts))
    figure, axes = plt.subplots(len(victims), 2, figsize=(max(9, 4 + 0.45 * len(defenses) * len(copies)) + 5, 3.8 * len(victims)), squeeze=False)
    width = 0.8 / len(copies)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, victim in enumerate(victims):
        bars, curves = axes[row]
        mine = [v for v in report.verdicts if v.victim == victim]
        for c, copy in enumerate(copies):
            found = [next((v for v in mine if v.copy == copy and v.defense == d), None) for d in defenses]
            where = np.arange(len(defenses)) + (c - (len(copies) - 1) / 2) * width
            bars.bar(where, [v.protected_r10 if v else np.nan for v in found], width, label=copy, color=colours[c % len(colours)])
            for x, v in zip(where, found):
                if v is not None:  # the verdict over its bar
                    bars.text(x, v.protected_r10 + 1, v.verdict, rotation=90, ha="center", va="bottom", fontsize=6,
                              color="red" if v.verdict == "broken" else "black")
        clean = [next((v.clean_r10 for v in mine if v.defense == d), np.nan) for d in defenses]
        bars.scatter(np.arange(len(defenses)), clean, marker="_", s=600, color="black", linewidths=2, label="clean victim", zorder=3)
        bars.axhline(chance10, color="gray", linestyle="--", label="chance")
        bars.axhline(PROTECTED_FACTOR * chance10, color="gray", linestyle=":", label=f"{PROTECTED_FACTOR:g}x chance")
        bars.set_xticks(np.arange(len(defenses)), defenses, rotation=60, ha="right", fontsize=8)
        bars.set(ylabel="R@10 (mean of both directions)", title=f"{victim}: R@10 per defense", ylim=(0, 119))
        bars.legend(fontsize=7)
        for d, defense in enumerate(defenses):  # colour = copy; thick = the first defense, thin = the others
            width_alpha = dict(linewidth=2.2, alpha=1.0) if d == 0 else dict(linewidth=0.8, alpha=0.4)
            for c, copy in enumerate(copies):
                history = report.histories.get(f"{victim} | {defense} | {copy}", [])
                if history:
                    curves.plot([h["epoch"] for h in history], [mean_recall_at_10(h) for h in history], color=colours[c % len(colours)],
                                label=copy if d == 0 else None, **width_alpha)
            history = report.histories.get(f"{victim} | {defense} | clean", [])
            if history:
                curves.plot([h["epoch"] for h in history], [mean_recall_at_10(h) for h in history], color="black", linestyle="--",
                            label="clean" if d == 0 else None, **width_alpha)
        curves.axhline(chance10, color="gray", linestyle="--")
        others = " (thin: the other defenses)" if len(defenses) > 1 else ""
        curves.set(xlabel="epoch", ylabel="R@10 (mean of both directions)", title=f"{victim}: per epoch under {defenses[0]}{others}")
        curves.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: ProtectionReport, output_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``report.json``, ``report.png`` (when matplotlib is installed: the ``report`` extra) and
    ``report.md`` to ``output_dir``; return their paths (also stored in ``report.paths``)."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(output / "report.json")}
    try:
        plot_report(report, output / "report.png")
        paths["figure"] = str(output / "report.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no report.png (pip install 'hf-unlearnable[report]').")
    paths["markdown"] = str(output / "report.md")
    report.paths = paths
    Path(paths["json"]).write_text(json.dumps(report.to_dict(), indent=1))
    Path(paths["markdown"]).write_text(report.to_markdown())
    return paths


# ---------------------------------------------------------------------------------------- bad input


def _caption_list(value: Any) -> list[str]:
    return [str(text) for text in value] if isinstance(value, (list, tuple)) else [str(value)]


def _inserts_only(clean: str, protected: str) -> bool:
    """True when ``protected`` holds the words of ``clean`` in order (the protection only inserts words)."""
    words = iter(protected.split())
    return all(word in words for word in clean.split())


def check_copies_match(
    clean: datasets.Dataset,
    protected: datasets.Dataset,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = 8 / 255,
    image_rows: int = 64,
    name: str = "protected_train",
) -> None:
    """Refuse a protected copy that is not the clean copy row for row (ValueError naming the row).

    Checks every row's other columns and captions, and a sample of images: same row count and
    column names; every column but the image and caption columns equal; each protected caption
    holds its clean caption's words in order (a trigger may be inserted anywhere, nothing removed);
    ``image_rows`` evenly spaced images within ``epsilon`` of their clean image at the protected
    resolution. A shuffled, filtered or different copy fails on nearly every row, so a sample of
    images suffices; a full per-pixel budget check is ``hf-unlearnable verify``.
    """
    check_dataset(clean, image_column, caption_column, name="clean_train")
    check_dataset(protected, image_column, caption_column, name=name)
    fix = "Pass the clean data set the protected copy was made from, in the same row order."
    if len(clean) != len(protected):
        raise ValueError(f"{name} has {len(protected)} rows and clean_train {len(clean)}; a protected copy keeps every row. {fix}")
    if set(clean.column_names) != set(protected.column_names):
        raise ValueError(f"{name} has columns {protected.column_names}, clean_train {clean.column_names}. {fix}")
    from .report.verify import _same  # NaN-aware equality, shared with `verify_protected`

    others = [c for c in clean.column_names if c not in (image_column, caption_column)]
    plain_clean = clean.select_columns([*others, caption_column]).with_format(None)
    plain_protected = protected.select_columns([*others, caption_column]).with_format(None)
    for start in range(0, len(clean), _READ_BATCH):
        before, after = plain_clean[start : start + _READ_BATCH], plain_protected[start : start + _READ_BATCH]
        for offset in range(len(before[caption_column])):
            row = start + offset
            for column in others:
                if not _same(before[column][offset], after[column][offset]):
                    raise ValueError(
                        f"{name} row {row} does not match clean_train row {row}: column {column!r} is "
                        f"{after[column][offset]!r}, not {before[column][offset]!r}. {fix}"
                    )
            clean_texts, protected_texts = _caption_list(before[caption_column][offset]), _caption_list(after[caption_column][offset])
            if len(clean_texts) != len(protected_texts) or not all(map(_inserts_only, clean_texts, protected_texts)):
                raise ValueError(
                    f"{name} row {row} does not match clean_train row {row}: its caption {after[caption_column][offset]!r} "
                    f"does not hold the words of {before[caption_column][offset]!r} in order. {fix}"
                )
    levels = math.floor(epsilon * 255 + 1e-6)
    rows = np.unique(np.linspace(0, len(clean) - 1, min(image_rows, len(clean))).round().astype(int)).tolist()
    clean_images = undecoded(clean.select_columns([image_column]), image_column).select(rows)[image_column]
    protected_images = undecoded(protected.select_columns([image_column]), image_column).select(rows)[image_column]
    for row, clean_value, protected_value in zip(rows, clean_images, protected_images):
        image = to_rgb(load_image(protected_value, row))
        size = min(image.size)
        mine = np.asarray(image, dtype=np.int16) if image.size[0] == image.size[1] else prepare_image(protected_value, size, row).astype(np.int16)
        difference = int(np.abs(mine - prepare_image(clean_value, size, row).astype(np.int16)).max())
        if difference > levels:
            raise ValueError(
                f"{name} row {row} does not match clean_train row {row}: its image differs from the clean one by "
                f"{difference}/255 levels, more than epsilon = {levels}/255. {fix} (If the copy was protected "
                "with a larger budget, pass epsilon=.)"
            )


def _row_digests(ds: datasets.Dataset, image_size: int, image_column: str, caption_column: str) -> list[int]:
    source = undecoded(ds.select_columns([image_column, caption_column]).with_format(None), image_column)
    digests = []
    for start in range(0, len(source), _READ_BATCH):
        chunk = source[start : start + _READ_BATCH]
        for offset, (image, caption) in enumerate(zip(chunk[image_column], chunk[caption_column])):
            digests.append(row_digest(prepare_image(image, image_size, start + offset), _caption_list(caption)))
    return digests


def check_no_overlap(
    train: datasets.Dataset,
    test: datasets.Dataset,
    *,
    image_size: int,
    image_column: str = "image",
    caption_column: str = "caption",
) -> None:
    """Refuse a test split that shares rows with the training split (same image at ``image_size``
    and same captions: the row digest `ProtectTransform` keys its state on). A victim scored on
    rows it trained on measures memorisation, not what it learned."""
    seen = {digest: row for row, digest in enumerate(_row_digests(train, image_size, image_column, caption_column))}
    shared = [(row, seen[d]) for row, d in enumerate(_row_digests(test, image_size, image_column, caption_column)) if d in seen]
    if shared:
        pairs = ", ".join(f"test row {t} = train row {r}" for t, r in shared[:5])
        raise ValueError(
            f"test shares {len(shared)} of its {len(test)} rows with the training split ({pairs}"
            f"{', ...' if len(shared) > 5 else ''}). Scores on training rows measure memorisation; remove them "
            "from test (e.g. test.filter) or split the data so no row is in both."
        )


# ---------------------------------------------------------------------------------------- defenses and victims


def _defense_label(defense: Any) -> str:
    for attribute in ("name", "__name__"):
        value = getattr(defense, attribute, None)
        if isinstance(value, str) and value and value != "<lambda>":
            return value
    return type(defense).__name__


def resolve_defenses(defenses: Iterable[str | Defense], seed: int = 0) -> list[tuple[str, Callable[[], Defense | None]]]:
    """(label, factory) per defense: names go to the `hf_unlearnable.defenses` registry (a fresh
    defense per victim, seeded; "none" trains without one), callables are used as given."""
    from .defenses import get_defense  # kornia loads only when an audit runs

    if isinstance(defenses, str) or callable(defenses):
        defenses = [defenses]
    resolved: list[tuple[str, Callable[[], Defense | None]]] = []
    for item in defenses:
        if isinstance(item, str):
            name = item.strip()
            if name == "none":
                resolved.append(("none", lambda: None))
                continue
            get_defense(name, seed=seed)  # an unknown name raises ValueError listing the valid ones, before any training
            resolved.append((name, lambda name=name: get_defense(name, seed=seed)))
        elif callable(item):
            resolved.append((_defense_label(item), lambda item=item: item))
        else:
            raise TypeError(f"defenses holds {type(item).__name__}; pass defense names (str) or callables (pixels, captions, generator) -> (pixels, captions).")
    labels = [label for label, _ in resolved]
    if not resolved:
        raise ValueError("defenses is empty; pass at least one, e.g. ('none',).")
    if len(set(labels)) != len(labels):
        raise ValueError(f"defenses has duplicate names {sorted({l for l in labels if labels.count(l) > 1})}; give each callable its own name (a .name attribute).")
    return resolved


@dataclass
class _Victim:
    label: str
    model: CLIPModel | CLIPConfig
    processor: CLIPProcessor
    learning_rate: float
    source: str


def _source(spec: Any) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    return type(spec).__name__


def _resolve_victims(victim: Any, pretrained: Any, processor: CLIPProcessor | None, learning_rate: float, fine_tune_learning_rate: float, seed: int) -> list[_Victim]:
    if victim is None and pretrained is None:
        raise ValueError("Pass victim= (an architecture trained from scratch: CLIPConfig, Hub id or path) and/or "
                         "pretrained= (a CLIP fine-tuned on each copy: Hub id, path or CLIPModel).")
    victims = []
    if victim is not None:
        if isinstance(victim, (str, os.PathLike)):
            path = str(victim)
            config = CLIPConfig.from_json_file(path) if path.endswith(".json") else CLIPConfig.from_pretrained(path)
            victim_processor = processor or CLIPProcessor.from_pretrained(os.path.dirname(path) if path.endswith(".json") else path)
        elif isinstance(victim, CLIPModel):
            config, victim_processor = victim.config, processor
        elif isinstance(victim, CLIPConfig):
            config, victim_processor = victim, processor
        else:
            raise TypeError(f"victim must be a CLIPConfig, a CLIPModel (its architecture) or a Hub id / path, got {type(victim).__name__}.")
        if victim_processor is None:
            raise ValueError("processor is required with a CLIPConfig or CLIPModel victim: pass processor=CLIPProcessor(...).")
        victims.append(_Victim(FROM_SCRATCH, config, victim_processor, learning_rate, _source(victim)))
    if pretrained is not None:
        if isinstance(pretrained, CLIPConfig):
            raise TypeError("pretrained must hold weights (a CLIPModel, Hub id or path); a CLIPConfig belongs in victim=.")
        model, pretrained_processor = load_surrogate(pretrained, processor, seed)
        victims.append(_Victim(FINE_TUNED, model, pretrained_processor, fine_tune_learning_rate, _source(pretrained)))
    return victims


def _image_size(model: CLIPModel | CLIPConfig) -> int:
    config = model.config if isinstance(model, CLIPModel) else model
    return int(config.vision_config.image_size)


# ---------------------------------------------------------------------------------------- the audit


def evaluate_protection(
    clean_train: datasets.Dataset,
    protected_train: datasets.Dataset | Mapping[str, datasets.Dataset],
    test: datasets.Dataset,
    *,
    defenses: Iterable[str | Defense] = ("none",),
    victim: CLIPConfig | CLIPModel | str | os.PathLike | None = None,
    processor: CLIPProcessor | None = None,
    pretrained: CLIPModel | str | os.PathLike | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    fine_tune_learning_rate: float = 1e-5,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = 8 / 255,
    mixed_precision: str = "auto",
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ProtectionReport:
    """Train victims on the clean and the protected copy under each defense; a verdict per defense.

    For each victim (``victim``: trained from scratch; ``pretrained``: fine-tuned; both when both
    are given) and each defense, `train_victim` trains one model on ``clean_train`` and one on each
    protected copy, with the same recipe, seed and defense, and evaluates them on the clean
    ``test`` split after every epoch. The verdict (module docstring: protected / weakened / broken /
    inconclusive) compares the protected victim's mean R@10 with chance and with the clean victim
    under the same defense. Runs on the GPU when there is one (Accelerate); under ``accelerate
    launch`` every process trains its share and the main process writes the report.

    Args:
        clean_train: the clean training data.
        protected_train: its protected copy (same rows, same order), or a mapping from a label to
            several copies (e.g. ``{"MEM-3": ..., "EM": ...}``) audited against one clean victim.
        test: clean evaluation rows, none of them in ``clean_train``.
        defenses: names from `hf_unlearnable.defenses.available_defenses()` ("none" = no defense)
            and/or callables ``defense(pixels, captions, generator) -> (pixels, captions)`` (see
            `train_victim`), labelled by their ``name`` or ``__name__``.
        victim: the architecture trained from scratch, as in the MEM paper: a `CLIPConfig`, a
            `CLIPModel` (its config; weights unused) or a Hub id / path / config.json file.
        processor: the `CLIPProcessor`; loaded from the path when ``victim``/``pretrained`` is one.
        pretrained: a pretrained CLIP (Hub id, path or `CLIPModel`) fine-tuned on each copy at
            ``fine_tune_learning_rate``, as a trainer who starts from public weights would.
        epochs, batch_size, learning_rate, seed, mixed_precision: the victim recipe (`train_victim`);
            ``learning_rate`` for victims from scratch.
        fine_tune_learning_rate: peak learning rate when fine-tuning ``pretrained`` (1e-5 class).
        image_column, caption_column: column names (the same in all three data sets).
        epsilon: image budget of the protection, for the row-for-row check of the copies.
        output_dir: where to write ``report.md``, ``report.json`` and ``report.png`` (None: nothing written).
        progress: a bar over victims and one per victim over its epochs.

    Returns:
        `ProtectionReport`: ``verdicts`` (one per copy, victim and defense), ``broken``, ``summary()``.

    Raises:
        ValueError: an unknown defense name (listing the valid ones), a test split sharing rows with
            the training split, a protected copy that does not match the clean copy row for row, a
            missing column, neither ``victim`` nor ``pretrained``.
        TypeError: data sets or models of the wrong type.
    """
    copies = dict(protected_train) if isinstance(protected_train, Mapping) else {"protected": protected_train}
    if not copies:
        raise ValueError("protected_train is an empty mapping; pass at least one protected copy.")
    if "clean" in copies:
        raise ValueError('"clean" names the clean victim; label the protected copies otherwise.')
    check_dataset(clean_train, image_column, caption_column, name="clean_train")
    check_dataset(test, image_column, caption_column, name="test")
    resolved = resolve_defenses(defenses, seed)
    victims = _resolve_victims(victim, pretrained, processor, learning_rate, fine_tune_learning_rate, seed)
    for label, copy in copies.items():
        name = "protected_train" if label == "protected" else f"protected_train[{label!r}]"
        check_copies_match(clean_train, copy, image_column=image_column, caption_column=caption_column, epsilon=epsilon, name=name)
    check_no_overlap(clean_train, test, image_size=_image_size(victims[0].model), image_column=image_column, caption_column=caption_column)

    captions = test.select_columns([caption_column]).with_format(None)[caption_column]
    chance = chance_scores([len(_caption_list(value)) for value in captions])
    chance10 = mean_recall_at_10(chance)
    settings = {
        "defenses": [label for label, _ in resolved], "victims": {v.label: v.source for v in victims},
        "copies": list(copies), "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "fine_tune_learning_rate": fine_tune_learning_rate, "seed": seed, "mixed_precision": mixed_precision,
        "rows": {"train": len(clean_train), "test": len(test)}, "epsilon": epsilon,
        "thresholds": {"protected_times_chance": PROTECTED_FACTOR, "broken_share_of_clean": BROKEN_SHARE},
    }
    histories: dict[str, list[dict[str, float]]] = {}
    verdicts: list[Verdict] = []
    total = len(victims) * len(resolved) * (1 + len(copies))
    bar = tqdm(total=total, desc="audit", unit="victim", disable=not progress, position=0)
    for spec in victims:
        for defense_label, make_defense in resolved:
            finals = {}
            for copy_label, data in (("clean", clean_train), *copies.items()):
                bar.set_postfix_str(f"{spec.label} | {defense_label} | {copy_label}")
                result = train_victim(
                    data, test, spec.model, spec.processor, image_column=image_column, caption_column=caption_column,
                    epochs=epochs, batch_size=batch_size, learning_rate=spec.learning_rate, seed=seed,
                    defense=make_defense(), mixed_precision=mixed_precision, progress=progress,
                )
                result.model = None  # free it before the next victim
                histories[f"{spec.label} | {defense_label} | {copy_label}"] = result.history
                finals[copy_label] = result.history
                bar.update(1)
            clean_history = finals.pop("clean")
            clean10, start10 = mean_recall_at_10(clean_history[-1]), mean_recall_at_10(clean_history[0])
            for copy_label, history in finals.items():
                protected10 = mean_recall_at_10(history[-1])
                verdict, reason = judge(protected10, clean10, chance10, start10)
                verdicts.append(Verdict(
                    copy_label, spec.label, defense_label, verdict, protected10, clean10, chance10, start10, reason,
                    {k: history[-1][k] for k in _KEYS}, {k: clean_history[-1][k] for k in _KEYS},
                ))
                if verdict == "broken":
                    logger.warning("defense %s breaks the protection of %s (%s victim): %s", defense_label, copy_label, spec.label, reason)
    bar.close()
    report = ProtectionReport(verdicts, chance, histories, settings)
    if output_dir is not None and _is_main_process():
        write_report(report, output_dir)
    return report


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# ---------------------------------------------------------------------------------------- command line

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
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_evaluate(arguments: Any) -> int:
    """Run ``hf-unlearnable evaluate``: print the verdicts, write the report; exit 1 when a defense breaks it."""
    from .cli import _load_pair_member

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
        progress=not arguments.no_progress,
    )
    print(report.summary())
    print("wrote " + ", ".join(report.paths.values()))
    return 1 if report.broken else 0
