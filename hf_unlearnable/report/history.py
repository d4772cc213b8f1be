"""`history_table`: ``transform.history`` as Markdown or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

# ---------------------------------------------------------------------------------------------------
# history table
# ---------------------------------------------------------------------------------------------------

_PREFERRED = ("round", "stage", "surrogate_loss", "protected_loss", "clean_loss", "seconds", "surrogate_seconds")
_SECONDS = ("seconds", "surrogate_seconds")


def history_table(history: Sequence[dict[str, Any]], format: str = "markdown") -> str:
    """``transform.history`` (one dict per MEM round) as a Markdown table or CSV text.

    Columns: round, stage, surrogate_loss, protected_loss, clean_loss, seconds, surrogate_seconds (the
    part of ``seconds`` spent training the surrogate), then any other keys in the order they first
    appear. Markdown rounds losses to 4 decimals and seconds to 1; CSV keeps full precision.
    """
    if format not in ("markdown", "csv"):
        raise ValueError(f"format={format!r} must be 'markdown' or 'csv'.")
    records = list(history)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"history[{index}] is a {type(record).__name__}; expected a dict (transform.history).")
    seen = [key for record in records for key in record]
    columns = [key for key in _PREFERRED if key in seen] + list(dict.fromkeys(k for k in seen if k not in _PREFERRED))
    if not columns:
        columns = list(_PREFERRED)
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({key: record.get(key, "") for key in columns})
        return buffer.getvalue()

    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if key in _SECONDS else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(key, record.get(key)) for key in columns) + " |" for record in records]
    return "\n".join(lines) + "\n"
