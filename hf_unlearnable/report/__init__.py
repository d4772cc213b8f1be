"""Reports on a protected data set: check it against the clean one, show samples, tabulate rounds.

- `verify_protected(clean, protected)` checks the published copy keeps every promise (row count,
  other columns, image budget, triggers) and names each row that does not (`hf-unlearnable verify`).
- `sample_grid(clean, protected)` draws clean image, protected image, amplified noise and the
  triggered caption side by side, like Figures 3-4 of the MEM paper (`hf-unlearnable show`).
- `history_table(transform.history)` renders the per-round losses as Markdown or CSV.
"""

from .grid import amplify_noise, sample_grid
from .history import history_table
from .verify import VerifyReport, Violation, split_trigger, verify_protected

__all__ = [
    "Violation",
    "VerifyReport",
    "verify_protected",
    "sample_grid",
    "history_table",
    "amplify_noise",
    "split_trigger",
]
