"""hf_unlearnable: make image-caption data sets unlearnable for CLIP-style training (MEM).

Protect: `ProtectTransform` with a method object (`Layered`, the default; `MEM` as published;
`EM`; `TriggerOnly`; `RandomNoise`: `hf_unlearnable.methods`) or a `MEMConfig`. Measure:
`train_victim`, `retrieval_scores`, `retrieval_metrics` and the `evaluate` module from
`load_retrieval_metric`; audit a copy before publishing with `evaluate_protection`. Publish:
`push_protected`. The baselines as functions live in `hf_unlearnable.baselines`, offline test
helpers in `hf_unlearnable.testing`.
"""

import typing

from .lazy import lazy_exports
from .version import ALGORITHM_VERSION, __version__

# The public names load on first use (PEP 562), so that `import hf_unlearnable.cli` (and with it
# `hf-unlearnable --help`) does not import torch, transformers and datasets.
_PUBLIC = {
    "EM": ".methods",
    "Layered": ".methods",
    "MEM": ".methods",
    "MEMConfig": ".config",
    "NoProtectionError": ".errors",
    "NonFiniteLossError": ".errors",
    "ProtectTransform": ".transform",
    "RandomNoise": ".methods",
    "TriggerOnly": ".methods",
    "evaluate_protection": ".audit",
    "load_retrieval_metric": ".metrics",
    "push_protected": ".hub",
    "retrieval_metrics": ".metrics",
    "retrieval_scores": ".victim",
    "train_victim": ".victim",
}

__all__ = ["ALGORITHM_VERSION", "__version__", *sorted(_PUBLIC)]

if typing.TYPE_CHECKING:
    from .audit import evaluate_protection
    from .config import MEMConfig
    from .errors import NonFiniteLossError, NoProtectionError
    from .hub import push_protected
    from .methods import EM, MEM, Layered, RandomNoise, TriggerOnly
    from .metrics import load_retrieval_metric, retrieval_metrics
    from .transform import ProtectTransform
    from .victim import retrieval_scores, train_victim

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
