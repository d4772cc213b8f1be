"""Image-text retrieval of a CLIP (any `ImageTextModel`) on a data set: the evaluation of
`train_victim`, and `retrieval_scores` on its own (Recall@1/5/10, MedR, MeanR in both directions).

Images are decoded once to uint8 at the model's resolution (`prepare_image`), captions tokenised
once; scores are cosine similarities of every caption with every image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from .checks import check_dataset, read_captions
from .families import image_text_model
from .images import prepare_image, undecoded
from .imagetext import ImageTextModel
from .metrics import retrieval_metrics
from .surrogate import pixels_from_uint8

__all__ = ["RetrievalSet", "embed_and_rank", "pad_token_ids", "read_images", "retrieval_scores", "tokenize"]

_READ_BATCH = 256


# ---------------------------------------------------------------------------------------- reading


def iter_images(ds: datasets.Dataset, column: str, image_size: int, chunk: int = _READ_BATCH) -> Iterator[np.ndarray]:
    """uint8 (n, image_size, image_size, 3) chunks of the image column, decoded with `prepare_image`."""
    source = undecoded(ds.select_columns([column]), column)
    for start in range(0, len(source), chunk):
        values = source[start : start + chunk][column]
        yield np.stack([prepare_image(value, image_size, start + offset) for offset, value in enumerate(values)])


def read_images(ds: datasets.Dataset, column: str, image_size: int) -> np.ndarray:
    return np.concatenate(list(iter_images(ds, column, image_size)))


def pad_token_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def pad_token_ids(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both (n, longest) int64."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def tokenize(tokenizer: Any, texts: list[str], context_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to the context length, unpadded."""
    return list(tokenizer(texts, truncation=True, max_length=context_length)["input_ids"])


# ---------------------------------------------------------------------------------------- evaluation


@dataclass
class RetrievalSet:
    """A split decoded and tokenised once: images, caption ids, image of each caption, the captions."""

    images: np.ndarray  # uint8 (num_images, H, W, 3)
    token_ids: list[list[int]]  # one unpadded list per caption
    image_index: np.ndarray  # int64 (num_captions,)
    texts: list[str]  # the captions, flat, in row order

    @classmethod
    def read(
        cls,
        ds: datasets.Dataset,
        tokenizer: Any,
        image_size: int,
        context_length: int,
        image_column: str,
        caption_column: str,
    ) -> RetrievalSet:
        captions = read_captions(ds, caption_column)  # cheap checks before the costly decode
        images = read_images(ds, image_column, image_size)
        texts = [text for row_captions in captions for text in row_captions]
        image_index = np.repeat(
            np.arange(len(captions), dtype=np.int64), [len(row_captions) for row_captions in captions]
        )
        return cls(images, tokenize(tokenizer, texts, context_length), image_index, texts)


def embed_and_rank(
    surrogate: ImageTextModel,
    data: RetrievalSet,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    metrics: Callable[[torch.Tensor, np.ndarray], dict[str, float]] = retrieval_metrics,
) -> dict[str, float]:
    """Cosine similarity of every caption with every image, then ``metrics`` (the retrieval metrics)."""
    model = surrogate.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_features = torch.cat(
                [
                    surrogate.image_features(
                        pixels_from_uint8(torch.from_numpy(data.images[start : start + batch_size])).to(device)
                    )
                    for start in range(0, len(data.images), batch_size)
                ]
            )
            text_features = []
            for start in range(0, len(data.token_ids), batch_size):
                input_ids, attention_mask = pad_token_ids(data.token_ids[start : start + batch_size], pad_id)
                text_features.append(surrogate.text_features(input_ids.to(device), attention_mask.to(device)))
            similarity = torch.cat(text_features).float() @ image_features.float().T
    finally:
        model.train(was_training)
    return metrics(similarity.cpu(), data.image_index)


def retrieval_scores(
    model: nn.Module,
    processor: Any,
    ds: datasets.Dataset,
    image_column: str = "image",
    caption_column: str = "caption",
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Image-text retrieval of `model` on `ds`: Recall@1/5/10, MedR and MeanR in both directions.

    Every image is resized/cropped to the model's input size (`prepare_image`) and normalised with
    the processor's mean/std; every caption is embedded (a caption column may hold one string or a
    list of strings per image: all of them count, each caption a query of text-to-image retrieval
    and a candidate of image-to-text retrieval). Scores are cosine similarities.

    Args:
        model: a `transformers.CLIPModel` or `SiglipModel`; evaluated in eval mode without
            gradients (its training mode is restored afterwards).
        processor: its processor (tokenizer, image mean/std).
        ds: the evaluation split (a `datasets.Dataset`).
        image_column, caption_column: column names.
        batch_size: images or captions embedded at a time.
        device: where to compute (default: the model's device); the model is moved there.

    Returns:
        The dict of `hf_unlearnable.metrics.retrieval_metrics` (``i2t_r1 ... t2i_meanr``).

    Example:
        >>> model, processor = tiny_clip()
        >>> retrieval_scores(model, processor, synthetic_captions(100))["t2i_r1"]
    """
    check_dataset(ds, image_column, caption_column, name="ds")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    surrogate = image_text_model(model, processor).to(device)
    data = RetrievalSet.read(
        ds, processor.tokenizer, surrogate.image_size, surrogate.context_length, image_column, caption_column
    )
    return embed_and_rank(surrogate, data, pad_token_id(processor.tokenizer), batch_size, device)
