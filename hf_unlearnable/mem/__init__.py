"""The MEM algorithm on tensors: Eq. 5 (pgd.py), Eq. 6 (hotflip.py), Algorithm 1 (loop.py)."""

from .hotflip import HotFlip
from .loop import MEMLoop, MEMStep
from .pgd import PGD

__all__ = ["HotFlip", "MEMLoop", "MEMStep", "PGD"]
