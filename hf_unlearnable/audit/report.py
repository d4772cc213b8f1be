"""Writing an audit's `ProtectionReport` for people: the figure, and report.md/json/png on disk."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .verdicts import PROTECTED_FACTOR, ProtectionReport, mean_recall_at_10

logger = logging.getLogger(__name__)


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
    figure, axes = plt.subplots(
        len(victims), 2, figsize=(max(9, 4 + 0.45 * len(defenses) * len(copies)) + 5, 3.8 * len(victims)), squeeze=False
    )
    width = 0.8 / len(copies)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, victim in enumerate(victims):
        bars, curves = axes[row]
        mine = [v for v in report.verdicts if v.victim == victim]
        for c, copy in enumerate(copies):
            found = [next((v for v in mine if v.copy == copy and v.defense == d), None) for d in defenses]
            where = np.arange(len(defenses)) + (c - (len(copies) - 1) / 2) * width
            bars.bar(
                where,
                [v.protected_r10 if v else np.nan for v in found],
                width,
                label=copy,
                color=colours[c % len(colours)],
            )
            for x, v in zip(where, found):
                if v is not None:  # the verdict over its bar
                    bars.text(
                        x,
                        v.protected_r10 + 1,
                        v.verdict,
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        color="red" if v.verdict == "broken" else "black",
                    )
        clean = [next((v.clean_r10 for v in mine if v.defense == d), np.nan) for d in defenses]
        bars.scatter(
            np.arange(len(defenses)),
            clean,
            marker="_",
            s=600,
            color="black",
            linewidths=2,
            label="clean victim",
            zorder=3,
        )
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
                    curves.plot(
                        [h["epoch"] for h in history],
                        [mean_recall_at_10(h) for h in history],
                        color=colours[c % len(colours)],
                        label=copy if d == 0 else None,
                        **width_alpha,
                    )
            history = report.histories.get(f"{victim} | {defense} | clean", [])
            if history:
                curves.plot(
                    [h["epoch"] for h in history],
                    [mean_recall_at_10(h) for h in history],
                    color="black",
                    linestyle="--",
                    label="clean" if d == 0 else None,
                    **width_alpha,
                )
        curves.axhline(chance10, color="gray", linestyle="--")
        others = " (thin: the other defenses)" if len(defenses) > 1 else ""
        curves.set(
            xlabel="epoch",
            ylabel="R@10 (mean of both directions)",
            title=f"{victim}: per epoch under {defenses[0]}{others}",
        )
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
