"""The surrogate CLIP (`Surrogate`, the CLIP family's `ImageTextModel`) and what training any
image-text model shares: `load_surrogate`, `frozen`, `parameter_groups`, `build_optimizer`,
`clip_training_step`.

Images enter as float pixels in [0, 1] (N, 3, H, W); the CLIP mean/std normalisation happens
inside the graph (`ImageTextModel`), so gradients are taken in pixel space where the 8/255 budget lives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .imagetext import ImageTextModel, ModelFamily, load_model
from .losses import ContrastiveLoss

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Surrogate(ImageTextModel):
    """A `transformers.CLIPModel` with pixel-space inputs and unit-norm features; trains with
    `ContrastiveLoss` (CLIP's symmetric InfoNCE).

    Args:
        model: the CLIPModel (trained from scratch or pretrained).
        image_mean, image_std: the processor's normalisation (OpenAI CLIP's by default).
        processor: its CLIPProcessor (`tokenizer`); `from_processor` sets it.
    """

    default_mean = OPENAI_CLIP_MEAN
    default_std = OPENAI_CLIP_STD

    @property
    def token_embedding(self) -> nn.Embedding:
        # CLIPModel.get_input_embeddings() raises in transformers 5; this is the text token table.
        return self.model.text_model.embeddings.token_embedding

    def logit_bias(self) -> None:
        """CLIP has no logit bias."""
        return None

    def training_loss(self, gather: bool = False) -> ContrastiveLoss:
        return ContrastiveLoss(gather=gather)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L) -> unit-norm text features (N, D)."""
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(features.float(), dim=-1)


#: The CLIP family: `transformers.CLIPModel` in `Surrogate`.
CLIP = ModelFamily("CLIP", CLIPModel, CLIPConfig, CLIPProcessor, Surrogate)


def pixels_from_uint8(images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) images plus optional int8 noise levels -> float pixels (N, 3, H, W) in [0, 1]."""
    levels = images.to(torch.int16)
    if noise is not None:
        levels = (levels + noise.to(torch.int16)).clamp_(0, 255)
    return levels.permute(0, 3, 1, 2).float().div_(255.0)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring gradients inside the block (PGD and HotFlip need input gradients only)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        module.train(was_training)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay for norms, biases, embeddings' scales and the logit scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "norm" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_surrogate(
    model: CLIPModel | CLIPConfig | str | os.PathLike, processor: CLIPProcessor | None, seed: int
) -> tuple[CLIPModel, CLIPProcessor]:
    """Resolve a ``model`` argument of ProtectTransform: a CLIPModel (deep-copied, so the caller's
    stays untouched), a CLIPConfig (random init from ``seed``, trained from scratch) or a Hub id /
    local path loaded with `from_pretrained` (safetensors only); always in float32
    (`hf_unlearnable.imagetext.load_model`)."""
    return load_model(CLIP, model, processor, seed)


def hash_weights(model: nn.Module, digest: Any) -> None:
    """Feed every parameter and buffer of ``model`` (names and raw bytes) to a hashlib ``digest``."""
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def build_optimizer(
    surrogate: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` (no decay for norms, biases, logit scale); the one place both
    the MEM surrogate (torch's default betas) and the victim (CLIP's 0.9/0.98, eps 1e-6) build it."""
    return torch.optim.AdamW(parameter_groups(surrogate, weight_decay), lr=learning_rate, betas=betas, eps=eps)


def clip_training_step(
    model: nn.Module,
    surrogate: ImageTextModel,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scheduler: Any = None,
) -> torch.Tensor:
    """One step of contrastive training, shared by the MEM surrogate and the victim: both towers
    forward (``model`` is the `accelerator.prepare`-d wrapper ``surrogate``, which applies
    autocast), ``loss`` (the model's `training_loss`: symmetric InfoNCE for CLIP) in float32,
    backward, optimizer (and scheduler) step, then the logit scale clamped at 100.
    Returns the detached loss."""
    device = accelerator.device
    image_features, text_features = model(pixels.to(device), input_ids.to(device), attention_mask.to(device))
    value = loss(image_features, text_features, surrogate.logit_scale(), surrogate.logit_bias())
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(value)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    surrogate.clamp_logit_scale()
    return value.detach()
