"""Every loss the library trains or attacks with, and the gathering of features across processes.

Each loss takes unit-norm image and text features (B, D), pair i <-> i, and the model's logit
scale (a scalar; and logit bias where the model has one). Whether the negatives come from every
process is decided in the constructor (``gather``), never by the caller.

- `ContrastiveLoss`: CLIP's symmetric InfoNCE (Radford et al. 2021); the MEM surrogate, PGD,
  HotFlip and the CLIP victim all train or attack with it.
- `loss_with_text_replaced`: `ContrastiveLoss` of a whole batch for every single replacement of
  one text, from cached features (how HotFlip scores its candidates).
- `SigLipLoss`: SigLIP's pairwise sigmoid loss (Zhai et al. 2023), the SigLIP victim's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "SigLipLoss", "gather_features", "loss_with_text_replaced"]


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' features, concatenated by rank; gradients flow through the local part only.

    With one process (or no process group) the inputs come back unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered_images = [torch.zeros_like(image_features) for _ in range(world)]
    gathered_texts = [torch.zeros_like(text_features) for _ in range(world)]
    dist.all_gather(gathered_images, image_features.contiguous())
    dist.all_gather(gathered_texts, text_features.contiguous())
    gathered_images[rank], gathered_texts[rank] = image_features, text_features
    return torch.cat(gathered_images), torch.cat(gathered_texts)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE of CLIP; with ``gather=True`` the negatives come from every process.

    Inputs: unit-norm image and text features (B, D), pair i <-> i, and the logit scale (a scalar).
    ``logit_bias`` is accepted so that every loss is called alike, and ignored: a constant added to
    every logit does not change a softmax.
    """

    def __init__(self, gather: bool = False):
        super().__init__()
        self.gather = gather

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        offset = 0
        all_images, all_texts = image_features, text_features
        if self.gather:
            all_images, all_texts = gather_features(image_features, text_features)
            if all_images.shape[0] != image_features.shape[0]:
                offset = dist.get_rank() * image_features.shape[0]
        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T
        labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
        return (
            F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)
        ) / 2


class SigLipLoss(nn.Module):
    """SigLIP's sigmoid loss (Zhai et al. 2023), as open_clip's ``SigLipLoss`` in one process.

    Every (image, text) pair of the batch is a binary problem: logits = scale * image @ text.T +
    bias, label +1 on the diagonal and -1 elsewhere, loss = -sum(log sigmoid(label * logit)) / B.

    Args:
        gather: negatives from every process. Not implemented (SigLIP exchanges texts between
            neighbouring processes, not by an all-gather): True raises, so a multi-process SigLIP
            run stops before training instead of silently seeing only local negatives.
    """

    def __init__(self, gather: bool = False):
        super().__init__()
        if gather:
            raise NotImplementedError(
                "SigLipLoss computes its negatives within one process; train a SigLIP model in a single process "
                "(without accelerate launch), or use a CLIP model for multi-process training."
            )
        self.gather = False

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        logits = (logit_scale * image_features @ text_features.T + logit_bias).float()
        labels = 2 * torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device) - 1
        return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


def loss_with_text_replaced(
    image_features: torch.Tensor, text_features: torch.Tensor, candidates: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Exact batch contrastive loss (`ContrastiveLoss`, one process) when text b alone is replaced
    by candidate (b, c).

    image_features, text_features: (B, D) unit-norm; candidates: (B, C, D) unit-norm.
    Returns (B, C): the symmetric InfoNCE of the whole batch for each single replacement.
    """
    batch = image_features.shape[0]
    logits = logit_scale * image_features @ text_features.T  # (image m, text n)
    eye = torch.eye(batch, dtype=torch.bool, device=logits.device)
    positives = logits.diagonal()
    # log-sum-exp of image m's row without text b: (m, b); computed directly, stable when softmax -> 1
    row_without = torch.logsumexp(logits.unsqueeze(1).masked_fill(eye.unsqueeze(0), float("-inf")), dim=2)
    text_terms = torch.logsumexp(logits, dim=0) - positives  # text-to-image CE per text n
    new_column = logit_scale * torch.einsum("md,bcd->bcm", image_features, candidates)  # (b, c, m)
    # image-to-text: every image's softmax now contains the candidate in column b
    image_lse = torch.logaddexp(row_without.T.unsqueeze(1), new_column)  # (b, c, m)
    image_positive = positives.view(1, 1, batch).expand_as(new_column).clone()
    index = torch.arange(batch, device=logits.device)
    image_positive[index, :, index] = new_column[index, :, index]
    image_loss = (image_lse - image_positive).mean(dim=2)
    # text-to-image: only text b's row changes
    new_text_term = torch.logsumexp(new_column, dim=2) - new_column[index, :, index]
    text_loss = (text_terms.sum() - text_terms.unsqueeze(1) + new_text_term) / batch
    return (image_loss + text_loss) / 2
