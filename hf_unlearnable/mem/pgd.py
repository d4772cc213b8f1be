"""Eq. 5 of MEM: error-minimising PGD on the image noise, on the 8-bit grid."""

from __future__ import annotations

import torch

from ..losses import ContrastiveLoss
from ..surrogate import Surrogate, frozen
from .eot import EOT


class PGD:
    r"""Error-minimising projected gradient descent (MEM Eq. 5; Madry et al. 2018 with the sign flipped).

    d <- clip(d - alpha * sign(grad_d L(x + d, T_shuffled + t)), -eps, eps), then x + d is clipped to
    [0, 1]. Everything is done in whole 8-bit levels, so from d = 0 the noise stays exactly on the
    1/255 grid and a PNG of x + d reproduces it bit for bit.

    T_shuffled is drawn anew at every step, as in the reference code: step s uses text_features[s],
    the features of each image's own trigger followed by the caption body of another sample of the
    batch. A single draw per batch would let the noise fit one mismatched caption; fresh draws
    leave the trigger as the only text the image can rely on. EM (no trigger) passes each image's
    own caption, the same at every step.

    Arguments:
        surrogate (Surrogate): frozen during the attack; only input gradients are computed.
        epsilon_levels (int): l_inf budget in levels (8 for eps = 8/255). Default: 8.
        step_levels (int): alpha in levels (1 for 1/255). Default: 1.
        steps (int): S, number of sign steps. Default: 8.
        eot (EOT): transformations drawn per step and applied to x + d before the surrogate
            (expectation over transformation; `mem.eot`). Default: none.

    Shape:
        - images: uint8 (B, H, W, 3), the clean base x in levels 0..255.
        - noise: int8 (B, H, W, 3), d in levels, |d| <= epsilon_levels.
        - text_features: float unit-norm, fixed (no gradient): (S, B, D), one set per step (the
          shuffled captions of step s), or (B, D), the same at every step.
        - output: int8 (B, H, W, 3), the new d.

    Examples::
        >>> attack = PGD(surrogate, epsilon_levels=8, step_levels=1, steps=8)
        >>> noise = attack(images, noise, text_features)
    """

    def __init__(
        self,
        surrogate: Surrogate,
        epsilon_levels: int = 8,
        step_levels: int = 1,
        steps: int = 8,
        eot: EOT | None = None,
    ):
        self.surrogate = surrogate
        self.epsilon_levels = epsilon_levels
        self.step_levels = step_levels
        self.steps = steps
        self.eot = eot if eot is not None else EOT()
        self.loss = ContrastiveLoss(gather=False)

    def __call__(
        self,
        images: torch.Tensor,
        noise: torch.Tensor,
        text_features: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if text_features.dim() == 2:
            text_features = text_features.expand(self.steps, *text_features.shape)
        if text_features.shape[:2] != (self.steps, len(images)):
            raise ValueError(
                f"PGD got text_features of shape {tuple(text_features.shape)}; expected ({self.steps}, "
                f"{len(images)}, D) (one set per step) or ({len(images)}, D)."
            )
        clean = images.permute(0, 3, 1, 2).to(torch.int16)
        delta = noise.permute(0, 3, 1, 2).to(torch.int16)
        with frozen(self.surrogate), self.surrogate.patch_gradients_by_matmul():
            logit_scale = self.surrogate.logit_scale().detach()
            for step in range(self.steps):
                pixels = (clean + delta).float().div_(255.0).requires_grad_(True)
                seen = pixels
                if self.eot:  # one transformation per step, drawn from the caller's generator
                    if generator is None:
                        raise ValueError("PGD with EOT transformations needs a generator (every draw must replay).")
                    seen = self.eot(pixels, self.eot.draw(generator), generator)
                loss = self.loss(self.surrogate.image_features(seen), text_features[step], logit_scale)
                (gradient,) = torch.autograd.grad(loss, pixels)
                delta = delta - self.step_levels * torch.sign(gradient).to(torch.int16)
                delta = delta.clamp(-self.epsilon_levels, self.epsilon_levels)
                delta = (clean + delta).clamp(0, 255) - clean
        return delta.permute(0, 2, 3, 1).to(torch.int8)
