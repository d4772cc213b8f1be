"""What the library needs of an image-text model it can attack or train: `ImageTextModel`.

A model family (CLIP: `hf_unlearnable.surrogate`; SigLIP: `hf_unlearnable.siglip`) is one
`ImageTextModel` subclass around its `transformers` model and one loss of
`hf_unlearnable.losses`, plus a `ModelFamily` record that says which transformers classes it
wraps; `hf_unlearnable.families` picks the family of a model, config or path.

Images enter as float pixels in [0, 1] (N, 3, H, W); the processor's mean/std normalisation
happens inside the graph, so gradients are taken in pixel space where the 8/255 budget lives.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_LOGIT_SCALE", "ImageTextModel", "ModelFamily", "load_model"]

MAX_LOGIT_SCALE = 100.0

#: Tokens per text-tower call when `ImageTextModel.many_text_features` runs on a CPU: the 4x-wide
#: MLP activations of about 1,300 tokens stay in cache. ViT-B/32's text tower on 256 captions of 40
#: tokens: 5.57 s in one call, 4.60 s in calls of 32 captions (the same features there, bit for bit).
CPU_TEXT_TOKENS_PER_CALL = 1280

logger = logging.getLogger(__name__)


class ImageTextModel(nn.Module, metaclass=abc.ABCMeta):
    """A two-tower `transformers` model with pixel-space inputs and unit-norm features.

    What a subclass provides: `text_features` (how its text tower reads padded token ids),
    `logit_bias` and `training_loss` (the loss of `hf_unlearnable.losses` it trains with), and
    ``default_mean`` / ``default_std`` (the normalisation when the processor has none). The rest
    (the image tower, the logit scale clamped at 100, both towers at once) is shared.

    Attributes:
        model: the wrapped `transformers` model (what is saved, returned and fine-tuned).
        processor: its processor (tokenizer and image normalisation), or None.

    Args:
        model: the transformers model (trained from scratch or pretrained).
        image_mean, image_std: the processor's normalisation (``default_mean``/``default_std``
            when None).
        processor: the processor, for `tokenizer`.
    """

    default_mean: ClassVar[Sequence[float]]
    default_std: ClassVar[Sequence[float]]

    def __init__(
        self,
        model: nn.Module,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        processor: Any = None,
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        mean = image_mean if image_mean is not None else self.default_mean
        std = image_std if image_std is not None else self.default_std
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_processor(cls, model: nn.Module, processor: Any) -> ImageTextModel:
        """The wrapper with the processor's image normalisation (the family's default when it has none)."""
        image_processor = getattr(processor, "image_processor", None)
        return cls(
            model,
            getattr(image_processor, "image_mean", None) or cls.default_mean,
            getattr(image_processor, "image_std", None) or cls.default_std,
            processor=processor,
        )

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (how captions become the ids `text_features` reads)."""
        if self.processor is None:
            raise ValueError(
                f"this {type(self).__name__} was built without a processor; use {type(self).__name__}.from_processor."
            )
        return self.processor.tokenizer

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def context_length(self) -> int:
        """The longest token sequence the text tower reads."""
        return int(self.model.config.text_config.max_position_embeddings)

    def logit_scale(self) -> torch.Tensor:
        """exp(the model's logit scale), at most 100 (a scalar)."""
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) <= 100, as CLIP does (after every optimizer step)."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    @abc.abstractmethod
    def logit_bias(self) -> torch.Tensor | None:
        """The bias added to every logit (a scalar), or None for a model without one."""

    @abc.abstractmethod
    def training_loss(self, gather: bool = False) -> nn.Module:
        """A fresh instance of the loss this model trains with, called as
        ``loss(image_features, text_features, logit_scale(), logit_bias())``; ``gather``: negatives
        from every process (`hf_unlearnable.losses`)."""

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (N, 3, H, W) -> unit-norm image features (N, D)."""
        normalised = (pixels - self.image_mean) / self.image_std
        features = self.model.get_image_features(pixel_values=normalised).pooler_output
        return F.normalize(features.float(), dim=-1)

    @abc.abstractmethod
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (N, L), right-padded, with their attention mask -> unit-norm text features (N, D)."""

    @torch.no_grad()
    def many_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`text_features` of many captions without gradients (HotFlip's candidates): on a CPU in
        calls of `CPU_TEXT_TOKENS_PER_CALL` tokens, elsewhere in one call.
        A row's features do not depend on the rows beside it; where the matmuls block the rows
        differently they can differ from one call's in the last bit."""
        if input_ids.device.type != "cpu":
            return self.text_features(input_ids, attention_mask)
        rows = max(1, CPU_TEXT_TOKENS_PER_CALL // max(1, input_ids.shape[1]))
        chunks = input_ids.split(rows)
        masks = attention_mask.split(rows) if attention_mask is not None else [None] * len(chunks)
        return torch.cat([self.text_features(ids, mask) for ids, mask in zip(chunks, masks)])

    @contextlib.contextmanager
    def patch_gradients_by_matmul(self) -> Iterator[None]:
        """Inside the block, gradients to the pixels go through the vision tower's patch embedding as
        one matmul (`_PatchifyInputGradient`) instead of the convolution's backward, when its weights
        are frozen (`hf_unlearnable.surrogate.frozen`). The features are unchanged, bit for bit;
        the gradient differs in the last bits, which moves PGD's sign steps only where a pixel's
        gradient is next to zero (noise of the benchmarks' tiny CLIP identical; ViT-B/32 at 224 px,
        8 steps on 16 images: 61 of 2.4 million levels differ). A model without a patchify convolution (kernel = stride, no padding, dilation or groups)
        at ``vision_model.embeddings.patch_embedding`` is left as it is."""
        embeddings = getattr(getattr(self.model, "vision_model", None), "embeddings", None)
        conv = getattr(embeddings, "patch_embedding", None)
        patchify = (
            isinstance(conv, nn.Conv2d)
            and conv.kernel_size == conv.stride
            and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1)
            and conv.groups == 1
        )
        if not patchify:
            yield
            return
        handle = conv.register_forward_hook(_patchify_gradient_hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers at once (what DDP wraps during training)."""
        return self.image_features(pixels), self.text_features(input_ids, attention_mask)


class _PatchifyInputGradient(torch.autograd.Function):
    """A patchify convolution's output as the convolution computed it, with the gradient to its
    input as one matmul: the patches do not overlap, so each input pixel takes the gradient of the
    one output position it feeds, ``grad_output (B, h*w, C_out) @ weight (C_out, C_in*k*k)``, put
    back in place. oneDNN's convolution backward-data takes 5-8x the time of that matmul on a CPU
    (a ViT-B/32 patch embedding at 224 px: 240 against 46 ms for forward and backward of 16 images,
    7% of a PGD step). The two sum in a different order: on unit-variance gradients they differ by
    at most 1.8e-6."""

    @staticmethod
    def forward(ctx, pixels: torch.Tensor, weight: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.pixels_shape, ctx.pixels_dtype = pixels.shape, pixels.dtype
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        batch, channels = ctx.pixels_shape[:2]
        kernel_h, kernel_w = weight.shape[-2:]
        rows, columns = grad_output.shape[-2:]
        patches = grad_output.flatten(2).transpose(1, 2) @ weight.flatten(1).to(grad_output.dtype)
        grad = patches.view(batch, rows, columns, channels, kernel_h, kernel_w).permute(0, 3, 1, 4, 2, 5)
        return grad.reshape(ctx.pixels_shape).to(ctx.pixels_dtype), None, None


def _patchify_gradient_hook(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of `ImageTextModel.patch_gradients_by_matmul`: engages when the gradient goes to
    the pixels only (frozen weights, as in PGD) and the patches tile the input exactly."""
    (pixels,) = args
    if not (torch.is_grad_enabled() and pixels.requires_grad) or module.weight.requires_grad:
        return None
    if pixels.dim() != 4 or tuple(pixels.shape[-2:]) != (
        output.shape[-2] * module.kernel_size[0],
        output.shape[-1] * module.kernel_size[1],
    ):
        return None
    return _PatchifyInputGradient.apply(pixels, module.weight, output.detach())


@dataclass(frozen=True)
class ModelFamily:
    """Which transformers classes one `ImageTextModel` subclass wraps.

    Attributes:
        name: "CLIP", "SigLIP" (in messages).
        model_class, config_class, processor_class: the transformers classes.
        wrapper: the `ImageTextModel` subclass.
        initialise: called on a model just built from a config (weights from the seed), for a
            from-scratch recipe the transformers initialisation lacks; None: nothing.
    """

    name: str
    model_class: type
    config_class: type
    processor_class: type
    wrapper: type[ImageTextModel]
    initialise: Callable[[nn.Module], None] | None = None

    def wrap(self, model: nn.Module, processor: Any) -> ImageTextModel:
        """``model`` in this family's wrapper, normalised as ``processor`` says."""
        return self.wrapper.from_processor(model, processor)


def load_model(family: ModelFamily, model: Any, processor: Any, seed: int) -> tuple[nn.Module, Any]:
    """Resolve a ``model`` argument of ``family``: a model (deep-copied, so the caller's stays
    untouched), a config (random init from ``seed``, trained from scratch) or a Hub id / local path
    loaded with `from_pretrained` (safetensors only). Returns (model, processor).

    The weights always come back in float32, whatever dtype they were saved or passed in: they are
    trained, and AdamW on float16 weights turns them to NaN within a step. Lower precision is only
    ever autocast (``MEMConfig.mixed_precision``)."""
    model_name, config_name, processor_name = (
        c.__name__ for c in (family.model_class, family.config_class, family.processor_class)
    )
    if isinstance(model, (str, os.PathLike)):
        try:
            loaded = family.model_class.from_pretrained(str(model), use_safetensors=True, dtype=torch.float32)
            processor = processor or family.processor_class.from_pretrained(str(model))
        except OSError as error:  # transformers' own message is long and ends in a 40-line chain
            reason = " ".join(str(error).split())[:300]
            raise OSError(
                f"Cannot load the {family.name} model {str(model)!r} ({reason}). Pass a local folder written by "
                f"{model_name}.save_pretrained (config.json and safetensors weights) with its processor, a {model_name} "
                f"and its {processor_name}, or a {config_name} to train a model from scratch; for a Hub id, this "
                "machine must reach the Hub (HF_HUB_OFFLINE unset) or have the model in its cache."
            ) from None
        return float32(loaded), processor
    if isinstance(model, family.config_class):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = family.model_class(model)
            if family.initialise is not None:
                family.initialise(built)
        model = built
    elif isinstance(model, family.model_class):
        model = copy.deepcopy(model)  # the model is trained; the caller's stays as it was
    else:
        raise TypeError(
            f"model must be a transformers {model_name}, a {config_name}, or a Hub id / local path; got {type(model).__name__}."
        )
    if processor is None:
        name = getattr(model, "name_or_path", "") or ""
        if not name:
            raise ValueError(
                f"processor is required with a {model_name} or {config_name}: pass processor={processor_name}(...) "
                "whose tokenizer and image size match the model."
            )
        processor = family.processor_class.from_pretrained(name)
    return float32(model), processor


def float32(model: nn.Module) -> nn.Module:
    """``model`` with every floating-point parameter and buffer in float32 (master weights)."""
    dtypes = {tensor.dtype for tensor in (*model.parameters(), *model.buffers()) if tensor.is_floating_point()}
    if dtypes - {torch.float32}:
        logger.info("converting the model's %s weights to float32 for training", sorted(map(str, dtypes)))
        model = model.float()
    return model
