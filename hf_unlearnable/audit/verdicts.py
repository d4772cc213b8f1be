"""The verdict rule of the audit: chance scores, `judge`, and the `ProtectionReport` it returns
(with its JSON and Markdown forms)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: protected: mean R@10 <= PROTECTED_FACTOR x chance (the library's target under defenses).
PROTECTED_FACTOR = 3.0
#: broken: mean R@10 >= BROKEN_SHARE x the clean victim's mean R@10 under the same defense.
BROKEN_SHARE = 0.5

#: The retrieval metrics a verdict keeps for each victim, in the order of the report's tables.
VERDICT_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")

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
        factors = np.clip(
            (num_captions - n - np.arange(num_captions)) / (num_captions - np.arange(num_captions)), 0, None
        )
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
    floor_text = (
        f"{PROTECTED_FACTOR:g}x chance"
        if floor == PROTECTED_FACTOR * chance_r10
        else f"the pretrained model's {floor:.1f} before fine-tuning"
    )
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
        lines += _weakest_statements(self.verdicts)
        note = _coarse_test_note(self.chance)
        return "\n".join(lines + ([note] if note else []))

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "settings": self.settings,
                "chance": self.chance,
                "verdicts": [asdict(v) for v in self.verdicts],
                "histories": self.histories,
                "rule": VERDICT_RULE,
            }
        )

    def to_markdown(self) -> str:
        return _markdown(self)


#: The verdict rule in words, for the report, its JSON and ``hf-unlearnable evaluate --help``.
VERDICT_RULE = (
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
    return (
        f"Note: the test split is small: chance R@10 is {chance10:.1f}, so {PROTECTED_FACTOR:g}x chance is "
        f"{PROTECTED_FACTOR * chance10:.0f}; use at least 100 test images (chance R@10 10) for a verdict that means something."
    )


def _plain_statement(verdicts: Sequence[Verdict]) -> str:
    broken = [v for v in verdicts if v.verdict == "broken"]
    if broken:
        names = ", ".join(
            f"{v.defense} ({v.victim}, {v.copy})"
            if len({x.copy for x in verdicts}) > 1
            else f"{v.defense} ({v.victim})"
            for v in broken
        )
        return f"BROKEN: these defenses break the protection: {names}. A trainer who applies them learns from the copy."
    if any(v.verdict == "inconclusive" for v in verdicts):
        return "No defense broke the protection; some runs are inconclusive, nothing was learned (see the table)."
    if any(v.verdict == "weakened" for v in verdicts):
        return "No defense broke the protection, but some weaken it (above the floor, see the table)."
    return "Every defense tested leaves the protection in place (at or below the floor)."


def _weakest_statements(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per copy: the defense and victim under which the copy keeps the least protection
    (the highest share of the clean victim's R@10 under the same defense)."""
    lines = []
    for copy in dict.fromkeys(v.copy for v in verdicts):
        judged = [v for v in verdicts if v.copy == copy and v.clean_r10 > 0]
        if not judged:
            continue
        weakest = max(judged, key=lambda v: v.protected_r10 / v.clean_r10)
        lines.append(
            f"Weakest defense{f' for {copy}' if len({v.copy for v in verdicts}) > 1 else ''}: {weakest.defense} "
            f"({weakest.victim}): R@10 {weakest.protected_r10:.1f}, {weakest.protected_r10 / weakest.clean_r10:.0%} of the "
            f"clean victim's {weakest.clean_r10:.1f}."
        )
    return lines


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, numpy scalars as python numbers, tuples as lists, keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def _markdown(report: ProtectionReport) -> str:
    chance10 = mean_recall_at_10(report.chance)
    several_copies = len({v.copy for v in report.verdicts}) > 1
    lines = [
        "# Protection audit",
        "",
        f"**{_plain_statement(report.verdicts)}**",
        "",
        *(line for statement in _weakest_statements(report.verdicts) for line in (statement, "")),
        VERDICT_RULE,
        "",
    ]
    reused = report.settings.get("reused_clean") or []
    if reused:
        lines += [
            f"Clean victims taken from an earlier audit of the same rows, victims and recipe (`reuse`), not retrained: "
            f"{', '.join(reused)}.",
            "",
        ]
    head = (
        "| Copy " if several_copies else ""
    ) + "| Victim | Defense | Verdict | R@10 protected | R@10 clean | before training | x chance | share of clean |"
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
    lines += [
        "",
        f"Chance R@10: {chance10:.2f}." + (f" {note}" if note else ""),
        "",
        "## Retrieval on the clean test split (last epoch)",
        "",
    ]
    head = "| Victim | Defense | Trained on | " + " | ".join(VERDICT_METRICS) + " |"
    lines += [head, "|" + "---|" * (len(VERDICT_METRICS) + 3)]
    lines.append("| - | - | chance | " + " | ".join(f"{report.chance[k]:.1f}" for k in VERDICT_METRICS) + " |")
    seen = set()
    for v in report.verdicts:
        if (v.victim, v.defense) not in seen:
            seen.add((v.victim, v.defense))
            lines.append(
                f"| {v.victim} | {v.defense} | clean | "
                + " | ".join(f"{v.clean_final[k]:.1f}" for k in VERDICT_METRICS)
                + " |"
            )
        lines.append(
            f"| {v.victim} | {v.defense} | {v.copy} | "
            + " | ".join(f"{v.protected_final[k]:.1f}" for k in VERDICT_METRICS)
            + " |"
        )
    lines += ["", "## Settings", "", "```json", json.dumps(json_safe(report.settings), indent=1), "```", ""]
    if "figure" in report.paths:
        lines.insert(lines.index(VERDICT_RULE) + 2, f"![R@10 per defense]({Path(report.paths['figure']).name})\n")
    return "\n".join(lines)
