"""Evaluation metrics: image-text retrieval (Recall@K, MedR, MeanR).

`retrieval_metrics` is the plain function; `load_retrieval_metric` loads the same metric as a
Hugging Face `evaluate` module (``hf_unlearnable/metrics/retrieval/retrieval.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ranking import METRIC_KEYS, RECALL_KS, retrieval_metrics, retrieval_ranks

if TYPE_CHECKING:
    import evaluate

__all__ = [
    "METRIC_KEYS",
    "RECALL_KS",
    "RETRIEVAL_METRIC_PATH",
    "load_retrieval_metric",
    "retrieval_metrics",
    "retrieval_ranks",
]

#: Folder of the `evaluate` retrieval module; ``evaluate.load(str(RETRIEVAL_METRIC_PATH))`` works offline.
RETRIEVAL_METRIC_PATH = Path(__file__).resolve().parent / "retrieval"


def load_retrieval_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """Load the retrieval metric as an `evaluate` module from this package (no network needed).

    Keyword arguments go to `evaluate.load` (e.g. ``experiment_id``, ``keep_in_memory``,
    ``num_process``/``process_id`` for distributed evaluation).

    Example:
        >>> metric = load_retrieval_metric()
        >>> metric.compute(predictions=text_embeds, references=image_of_caption, image_embeds=image_embeds)
    """
    import evaluate

    return evaluate.load(str(RETRIEVAL_METRIC_PATH), **kwargs)
