"""SigLIP (Zhai et al. 2023) as an image-text model the library trains: `SiglipTowers` and its family.

A `transformers.SiglipModel` is a victim family of its own: `train_victim` and
`evaluate_protection` train it with `SigLipLoss` (pairwise sigmoid with a learnt bias) where a
CLIP trains with InfoNCE. Its text tower pools the *last* position and was trained on captions
padded to its full context without an attention mask, so `SiglipTowers.text_features` reads
every caption that way, whatever padding its caller used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import SiglipConfig, SiglipModel, SiglipProcessor

from .imagetext import ImageTextModel, ModelFamily
from .losses import SigLipLoss

__all__ = ["SIGLIP", "SiglipTowers", "initialise_siglip"]

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# The paper's initial temperature and bias (Zhai et al. 2023, Sec. 3.3): t' = log 10, b = -10.
INITIAL_LOGIT_SCALE = math.log(10.0)
INITIAL_LOGIT_BIAS = -10.0


class SiglipTowers(ImageTextModel):
    """A `transformers.SiglipModel` with pixel-space inputs and unit-norm features; trains with
    `SigLipLoss` (one process).

    Args:
        model: the SiglipModel (trained from scratch or pretrained).
        image_mean, image_std: the processor's normalisation (SigLIP's 0.5/0.5 by default).
        processor: its processor (`tokenizer`); `from_processor` sets it.
    """

    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD

    def logit_bias(self) -> torch.Tensor:
        return self.model.logit_bias.squeeze(0)

    def logit_scale(self) -> torch.Tensor:
        return super().logit_scale().squeeze(0)  # SiglipModel keeps it as shape (1,)

    def training_loss(self, gather: bool = False) -> SigLipLoss:
        return SigLipLoss(gather=gather)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L), right-padded -> unit-norm text features (N, D).

        As SigLIP was trained: every position the mask leaves out becomes the model's pad token, the
        ids are padded to the full context, and the text tower runs without a mask (it pools the
        last position, which therefore always sits at the same place)."""
        pad = self.model.config.text_config.pad_token_id
        if pad is None:
            pad = getattr(getattr(self.processor, "tokenizer", None), "pad_token_id", None) or 0
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, pad)
        input_ids = input_ids[:, : self.context_length]
        input_ids = F.pad(input_ids, (0, self.context_length - input_ids.shape[1]), value=pad)
        features = self.model.get_text_features(input_ids=input_ids).pooler_output
        return F.normalize(features.float(), dim=-1)


def initialise_siglip(model: SiglipModel) -> None:
    """The paper's from-scratch logit scale and bias (transformers initialises both to 0)."""
    with torch.no_grad():
        model.logit_scale.fill_(INITIAL_LOGIT_SCALE)
        model.logit_bias.fill_(INITIAL_LOGIT_BIAS)


#: The SigLIP family: `transformers.SiglipModel` in `SiglipTowers`.
SIGLIP = ModelFamily("SigLIP", SiglipModel, SiglipConfig, SiglipProcessor, SiglipTowers, initialise_siglip)
