"""hf_unlearnable: make image-caption data sets unlearnable for CLIP-style training (MEM).

Protect: `ProtectTransform` with a `MEMConfig`. Measure: `train_victim`, `retrieval_scores`,
`retrieval_metrics` and the `evaluate` module from `load_retrieval_metric`. Publish:
`push_protected`. Baselines live in `hf_unlearnable.baselines`, offline test helpers in
`hf_unlearnable.testing`.
"""

__version__ = "0.1.0"

from .config import MEMConfig
from .hub import push_protected
from .metrics import load_retrieval_metric, retrieval_metrics
from .transform import ProtectTransform
from .victim import retrieval_scores, train_victim

__all__ = [
    "MEMConfig",
    "ProtectTransform",
    "__version__",
    "load_retrieval_metric",
    "push_protected",
    "retrieval_metrics",
    "retrieval_scores",
    "train_victim",
]
