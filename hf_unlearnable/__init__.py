"""hf_unlearnable: make image-caption data sets unlearnable for CLIP-style training (MEM).

Public API: `ProtectTransform`, `MEMConfig`, `load_retrieval_metric`, `retrieval_metrics`.
"""

__version__ = "0.1.0"

from .config import MEMConfig
from .transform import ProtectTransform

__all__ = ["MEMConfig", "ProtectTransform", "__version__"]
