"""The surrogate CLIP: differentiable normalisation, unit-norm features (its loss: `hf_unlearnable.losses`).

Images enter as float pixels in [0, 1] (N, 3, H, W); the CLIP mean/std normalisation happens
here, inside the graph, so gradients are taken in pixel space where the 8/255 budget lives.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .losses import ContrastiveLoss

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = 100.0

logger = logging.getLogger(__name__)


class Surrogate(nn.Module):
    """A `transformers.CLIPModel` with pixel-space inputs and unit-norm features.

    Args:
        model: the CLIPModel (trained from scratch or pretrained).
        image_mean, image_std: the processor's normalisation (OpenAI CLIP's by default).
    """

    def __init__(
        self,
        model: CLIPModel,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
    ):
        super().__init__()
        self.model = model
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_processor(cls, model: CLIPModel, processor) -> "Surrogate":
        """The wrapper with the processor's image normalisation (OpenAI CLIP's when it has none)."""
        image_processor = getattr(processor, "image_processor", None)
        return cls(
            model,
            getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN,
            getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD,
        )

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def token_embedding(self) -> nn.Embedding:
        # CLIPModel.get_input_embeddings() raises in transformers 5; this is the text token table.
        return self.model.text_model.embeddings.token_embedding

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (N, 3, H, W) -> unit-norm image features (N, D)."""
        normalised = (pixels - self.image_mean) / self.image_std
        features = self.model.get_image_features(pixel_values=normalised).pooler_output
        return F.normalize(features.float(), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L) -> unit-norm text features (N, D)."""
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(features.float(), dim=-1)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers at once (what DDP wraps during surrogate training)."""
        return self.image_features(pixels), self.text_features(input_ids, attention_mask)

    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) <= 100, as CLIP does."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


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
    """Resolve a ``model`` argument (of ProtectTransform or train_victim): a CLIPModel (deep-copied, so
    the caller's stays untouched), a CLIPConfig (random init from ``seed``, trained from scratch) or
    a Hub id / local path loaded with `from_pretrained` (safetensors only).

    The weights always come back in float32, whatever dtype they were saved or passed in: they are
    trained, and AdamW on float16 weights turns them to NaN within a step. Lower precision is only
    ever autocast (``MEMConfig.mixed_precision``)."""
    if isinstance(model, (str, os.PathLike)):
        try:
            loaded = CLIPModel.from_pretrained(str(model), use_safetensors=True, dtype=torch.float32)
            processor = processor or CLIPProcessor.from_pretrained(str(model))
        except OSError as error:  # transformers' own message is long and ends in a 40-line chain
            reason = " ".join(str(error).split())[:300]
            raise OSError(
                f"Cannot load the CLIP model {str(model)!r} ({reason}). Pass a local folder written by "
                "CLIPModel.save_pretrained (config.json and safetensors weights) with its processor, a CLIPModel "
                "and its CLIPProcessor, or a CLIPConfig to train a surrogate from scratch; for a Hub id, this "
                "machine must reach the Hub (HF_HUB_OFFLINE unset) or have the model in its cache."
            ) from None
        return _float32(loaded), processor
    if isinstance(model, CLIPConfig):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = CLIPModel(model)
        model = built
    elif isinstance(model, CLIPModel):
        model = copy.deepcopy(model)  # the surrogate is trained; the caller's model stays as it was
    else:
        raise TypeError(
            f"model must be a transformers CLIPModel, a CLIPConfig, or a Hub id / local path; got {type(model).__name__}."
        )
    if processor is None:
        name = getattr(model, "name_or_path", "") or ""
        if not name:
            raise ValueError(
                "processor is required with a CLIPModel or CLIPConfig: pass processor=CLIPProcessor(...) "
                "whose tokenizer and image size match the model."
            )
        processor = CLIPProcessor.from_pretrained(name)
    return _float32(model), processor


def _float32(model: CLIPModel) -> CLIPModel:
    """``model`` with every floating-point parameter and buffer in float32 (master weights)."""
    dtypes = {tensor.dtype for tensor in (*model.parameters(), *model.buffers()) if tensor.is_floating_point()}
    if dtypes - {torch.float32}:
        logger.info("converting the CLIP model's %s weights to float32 for training", sorted(map(str, dtypes)))
        model = model.float()
    return model


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
    surrogate: Surrogate,
    loss: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scheduler: Any = None,
) -> torch.Tensor:
    """One step of CLIP training, shared by the MEM surrogate and the victim: both towers forward
    (``model`` is the `accelerator.prepare`-d surrogate, which applies autocast), symmetric InfoNCE
    in float32, backward, optimizer (and scheduler) step, then the logit scale clamped at 100.
    Returns the detached loss."""
    device = accelerator.device
    image_features, text_features = model(pixels.to(device), input_ids.to(device), attention_mask.to(device))
    value = loss(image_features, text_features, surrogate.logit_scale())
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(value)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    surrogate.clamp_logit_scale()
    return value.detach()
