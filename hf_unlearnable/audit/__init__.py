"""The audit a data owner runs before publishing: does the protected copy survive what a scraper does?

`evaluate_protection` trains a victim CLIP on the clean copy and on the protected copy, once per
defense (what an unauthorised trainer might do to each batch: JPEG, grayscale, caption cleaning,
...), evaluates both on a clean test split and gives a verdict per defense:

- **protected**: the protected victim's R@10 (mean of image-to-text and text-to-image) stays at
  or below the *floor*: ``PROTECTED_FACTOR`` (3) times chance, the bar the library aims for
  under defenses, or, for a fine-tuned victim, what the pretrained model scored before fine-tuning if
  that is higher; and the clean victim under the same defense rose above the floor;
- **broken**: the protected victim rose above the floor and reached at least ``BROKEN_SHARE``
  (half) of the clean victim's R@10 under the same defense: the copy teaches
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
marked) to ``output_dir``. Auditing a second copy of the same data, pass ``reuse=`` the first
audit's report: its clean victims are taken from it rather than retrained. From the shell:
``hf-unlearnable evaluate --clean-train C --protected-train P --test T [--reuse REPORT_JSON]``.
"""

import typing

from ..lazy import lazy_exports

# Loaded on first use (PEP 562): the `evaluate` command's parser (`audit.command`) is built for every
# `hf-unlearnable --help`, which must not import torch.
_PUBLIC = {
    "BROKEN_SHARE": ".verdicts",
    "PROTECTED_FACTOR": ".verdicts",
    "ProtectionReport": ".verdicts",
    "Verdict": ".verdicts",
    "chance_scores": ".verdicts",
    "check_copies_match": ".checks",
    "check_no_overlap": ".checks",
    "evaluate_protection": ".run",
    "judge": ".verdicts",
    "load_report": ".run",
    "mean_recall_at_10": ".verdicts",
    "plot_report": ".report",
    "resolve_defenses": ".run",
    "write_report": ".report",
    "add_evaluate_parser": ".command",
    "run_evaluate": ".command",
}

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
    "load_report",
    "mean_recall_at_10",
    "plot_report",
    "write_report",
]

if typing.TYPE_CHECKING:
    from .checks import check_copies_match, check_no_overlap
    from .command import add_evaluate_parser, run_evaluate
    from .report import plot_report, write_report
    from .run import evaluate_protection, load_report, resolve_defenses
    from .verdicts import (
        BROKEN_SHARE,
        PROTECTED_FACTOR,
        ProtectionReport,
        Verdict,
        chance_scores,
        judge,
        mean_recall_at_10,
    )

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
