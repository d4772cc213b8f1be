"""hf_unlearnable: make image-caption data sets unlearnable for CLIP-style training (MEM).

Protect: `ProtectTransform` with a `MEMConfig`. Measure: `train_victim`, `retrieval_scores`,
`retrieval_metrics` and the `evaluate` module from `load_retrieval_metric`; audit a copy before
publishing with `evaluate_protection`. Publish:
`push_protected`. Baselines live in `hf_unlearnable.baselines`, offline test helpers in
`hf_unlearnable.testing`.
"""

import typing

from .lazy import lazy_exports

__version__ = "0.1.0"

#: Version of what the protection computes. Bump it whenever a change alters the noise, triggers or
#: surrogate that `protect` produces for the same inputs (not for refactors that keep them
#: bit-identical): a work dir remembers the value it was computed with, so a rerun after such an
#: upgrade never reuses state computed by the old algorithm.
#: 1: first release. 2: the surrogate's contrastive loss is computed in float32 under mixed
#: precision (one CLIP training step shared with the victim). 3: PGD draws a new caption permutation
#: at every step; EM pairs each image with its own caption. 4: triggers are dictionary words on no
#: blocklist by default (``MEMConfig.trigger_words``). 5: the work dir stores where each caption takes
#: its trigger (``MEMConfig.trigger_position``; "start" computes what 4 did, but v4 work dirs lack the
#: array). 6: a "random" slot is drawn only among the word boundaries inside the text context (a
#: caption longer than the context could put its trigger past what a truncating victim reads);
#: "start", and captions that fit the context, compute what 5 did. 7: the default method is the
#: layered one (``MEMConfig.method``; "mem" computes what 6 did). 8: ``trigger_words="dictionary"``
#: draws from the shipped list of neutral everyday words (``data/trigger_words.txt``) and blocklists
#: match inflections ("any" without a blocklist computes what 7 did); a protector saved before
#: protects the rows it was not fitted on with the new list.
ALGORITHM_VERSION = 8

# The public names load on first use (PEP 562), so that `import hf_unlearnable.cli` (and with it
# `hf-unlearnable --help`) does not import torch, transformers and datasets.
_PUBLIC = {
    "MEMConfig": ".config",
    "NoProtectionError": ".errors",
    "NonFiniteLossError": ".errors",
    "ProtectTransform": ".transform",
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
    from .metrics import load_retrieval_metric, retrieval_metrics
    from .transform import ProtectTransform
    from .victim import retrieval_scores, train_victim

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
