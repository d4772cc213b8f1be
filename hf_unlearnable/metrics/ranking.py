"""Image-text retrieval ranks and metrics (Recall@K, MedR, MeanR), vectorised and chunked.

This module is the plain, dependency-light core behind the ``retrieval`` `evaluate` module
(``hf_unlearnable/metrics/retrieval/retrieval.py``). It imports only ``numpy`` and ``torch``
so that it can be imported on its own (the `evaluate` script imports it after `evaluate`
copies the script into its module cache).

Protocol (Flickr30K / MS-COCO retrieval, as in CLIP, ALBEF and open_clip evaluations):

* text-to-image (t2i): every caption is a query; its rank is the rank of its own image among
  all images.
* image-to-text (i2t): every image is a query; its rank is the best (smallest) rank among all
  of its captions, over all captions.

Ties are counted pessimistically: rank = 1 + the number of *wrong* items whose score is
``>=`` the score of the correct item. A model that gives every pair the same score therefore
lands at (or below) chance level, never above it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["RECALL_KS", "METRIC_KEYS", "retrieval_ranks", "retrieval_metrics", "ranks_to_metrics"]

#: The K of the reported Recall@K.
RECALL_KS: tuple[int, ...] = (1, 5, 10)

#: The keys of the dict returned by :func:`retrieval_metrics`, in order.
METRIC_KEYS: tuple[str, ...] = tuple(
    f"{direction}_{name}" for direction in ("i2t", "t2i") for name in (*(f"r{k}" for k in RECALL_KS), "medr", "meanr")
)

# Default chunk: about this many similarity entries per slab (bool temporaries of this size).
_DEFAULT_CHUNK_ELEMENTS = 1 << 20


def _score_tensor(similarity: Any) -> torch.Tensor:
    """``similarity`` as a 2-D real torch tensor sharing memory with the input when possible."""
    if isinstance(similarity, torch.Tensor):
        scores = similarity.detach()
        if scores.is_complex() or scores.dtype == torch.bool:
            raise TypeError(
                f"similarity must hold real-valued scores, got a tensor of dtype {scores.dtype}; "
                "pass e.g. `similarity.float()`."
            )
    else:
        try:
            array = np.asarray(similarity)
        except Exception as err:  # ragged nested lists and the like
            raise TypeError(
                "similarity must be a 2-D numpy array, torch tensor or nested list of numbers of shape "
                f"(num_captions, num_images); could not convert {type(similarity).__name__}: {err}"
            ) from err
        if array.dtype == bool or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise TypeError(
                f"similarity must hold real-valued scores, got dtype {array.dtype}; pass a float array "
                "of shape (num_captions, num_images)."
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if array.dtype in (np.uint16, np.uint32, np.uint64):
            array = array.astype(np.int64)  # torch lacks full support for these
        elif np.issubdtype(array.dtype, np.floating) and array.dtype not in (np.float16, np.float32, np.float64):
            array = array.astype(np.float64)  # e.g. longdouble
        with warnings.catch_warnings():
            # Read-only arrays (e.g. from Arrow) trigger a warning; the scores are never written.
            warnings.simplefilter("ignore", UserWarning)
            try:
                scores = torch.from_numpy(array)
            except ValueError:  # negative strides
                scores = torch.from_numpy(np.ascontiguousarray(array))
    if scores.ndim != 2:
        raise ValueError(
            "similarity must be 2-D with shape (num_captions, num_images), one row per caption; "
            f"got shape {tuple(scores.shape)}."
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"similarity must have at least one caption and one image, got shape {tuple(scores.shape)}.")
    return scores


def _index_tensor(image_index: Any, num_captions: int, num_images: int, device: torch.device) -> torch.Tensor:
    """Validate ``image_index`` and return it as an int64 tensor on ``device``."""
    if isinstance(image_index, torch.Tensor):
        index = image_index.detach().cpu().numpy()
    else:
        try:
            index = np.asarray(image_index)
        except Exception as err:
            raise TypeError(
                "image_index must be a 1-D sequence of ints (the image of each caption); "
                f"could not convert {type(image_index).__name__}: {err}"
            ) from err
    if index.ndim != 1:
        raise ValueError(f"image_index must be 1-D (one image id per caption), got shape {index.shape}.")
    if len(index) != num_captions:
        hint = ""
        if len(index) == num_images:
            hint = (
                " It matches the number of columns: did you pass an image-by-caption matrix? "
                "similarity must be (num_captions, num_images); transpose it."
            )
        raise ValueError(
            f"image_index has {len(index)} entries but similarity has {num_captions} rows (captions); "
            f"give one image id per caption.{hint}"
        )
    if index.dtype == bool or not np.issubdtype(index.dtype, np.integer):
        raise TypeError(
            f"image_index must hold integer image ids, got dtype {index.dtype}; "
            "convert it with `np.asarray(image_index, dtype=np.int64)`."
        )
    index = index.astype(np.int64, copy=False)
    bad = np.flatnonzero((index < 0) | (index >= num_images))
    if bad.size:
        raise ValueError(
            f"image_index values must be in [0, {num_images}) (similarity has {num_images} image columns); "
            f"{bad.size} out of range, e.g. caption {int(bad[0])} -> {int(index[bad[0]])}."
        )
    counts = np.bincount(index, minlength=num_images)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(str(int(i)) for i in missing[:10])
        more = f" (and {missing.size - 10} more)" if missing.size > 10 else ""
        raise ValueError(
            f"{missing.size} image(s) have no caption in image_index: {shown}{more}. Image-to-text "
            "retrieval is undefined for them; drop their columns from similarity (and renumber "
            "image_index) before calling."
        )
    return torch.from_numpy(np.ascontiguousarray(index)).to(device)


def _check_chunk_size(chunk_size: int | None, num_images: int) -> int:
    if chunk_size is None:
        return max(1, _DEFAULT_CHUNK_ELEMENTS // num_images)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size}.")
    return int(chunk_size)


def _raise_nan(chunk: torch.Tensor, row_offset: int) -> None:
    row, col = (int(v) for v in torch.nonzero(torch.isnan(chunk))[0])
    raise ValueError(
        f"similarity contains NaN (first at caption {row + row_offset}, image {col}); ranks are "
        "undefined. Check the embeddings (e.g. zero vectors normalised to NaN) or replace NaN "
        "with a score such as -inf."
    )


def retrieval_ranks(
    similarity: Any,
    image_index: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based retrieval ranks in both directions (see :func:`retrieval_metrics`).

    Returns:
        ``(i2t_ranks, t2i_ranks)``: int64 numpy arrays of length ``num_images`` (rank of the
        best caption of each image among all captions) and ``num_captions`` (rank of each
        caption's image among all images). Ties are pessimistic.
    """
    scores = _score_tensor(similarity)
    num_captions, num_images = scores.shape
    index = _index_tensor(image_index, num_captions, num_images, scores.device)
    rows = _check_chunk_size(chunk_size, num_images)
    check_nan = scores.is_floating_point()

    # Score of each caption with its own image, and each image's best correct score.
    correct = scores[torch.arange(num_captions, device=scores.device), index]
    best = torch.zeros(num_images, dtype=scores.dtype, device=scores.device)
    best.scatter_reduce_(0, index, correct, reduce="amax", include_self=False)

    t2i = torch.empty(num_captions, dtype=torch.int64, device=scores.device)
    at_least_best = torch.zeros(num_images, dtype=torch.int64, device=scores.device)
    for start in range(0, num_captions, rows):
        chunk = scores[start : start + rows]
        # One cheap reduction; the exact NaN scan runs only if the sum is not finite (NaN, inf).
        if check_nan and not bool(torch.isfinite(chunk.sum())) and bool(torch.isnan(chunk).any()):
            _raise_nan(chunk, start)
        # Pessimistic t2i rank = number of images scoring >= the correct one (itself included).
        t2i[start : start + rows] = (chunk >= correct[start : start + rows, None]).sum(dim=1)
        # Number of captions (any image) scoring >= each image's best correct score.
        at_least_best += (chunk >= best[None, :]).sum(dim=0)

    # The correct captions counted above are exactly those tied with the best one.
    tied_correct = torch.bincount(index[correct == best[index]], minlength=num_images)
    i2t = at_least_best - tied_correct + 1
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def ranks_to_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """Recall@K (percent), median and mean rank from 1-based ranks, as plain floats."""
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        ranks = np.asarray(ranks)
        for k in RECALL_KS:
            out[f"{direction}_r{k}"] = float(100.0 * np.count_nonzero(ranks <= k) / ranks.size)
        out[f"{direction}_medr"] = float(np.median(ranks))
        out[f"{direction}_meanr"] = float(np.mean(ranks, dtype=np.float64))
    return out


def retrieval_metrics(
    similarity: Any,
    image_index: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@1/5/10, median and mean rank for image-text retrieval, in both directions.

    Args:
        similarity: score matrix of shape ``(num_captions, num_images)``, one row per caption
            (e.g. cosine similarity of text and image embeddings); a numpy array, torch tensor
            (any device; not modified, no gradient) or nested list of real numbers. Higher means
            more similar. NaN is rejected; ``+-inf`` is allowed.
        image_index: length ``num_captions``; ``image_index[i]`` is the column of caption ``i``'s
            image, an int in ``[0, num_images)``. Every image must have at least one caption
            (1, 5 or an uneven number per image are all fine).
        chunk_size: number of caption rows processed at a time (default: about 1M scores per
            chunk). Memory beyond the input is O(chunk_size * num_images) bytes plus
            O(num_captions + num_images).

    Returns:
        A flat dict of plain floats with keys ``i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr,
        t2i_r1, t2i_r5, t2i_r10, t2i_medr, t2i_meanr``. Recall is in percent (0..100); ranks
        are 1-based.

        * ``t2i`` (text-to-image): for each caption, the rank of its image among all
          ``num_images`` images.
        * ``i2t`` (image-to-text): for each image, the best (smallest) rank among its captions,
          over all ``num_captions`` captions.
        * ``rK`` = percent of queries with rank ``<= K`` (100 when K >= the number of
          candidates); ``medr`` = ``numpy.median`` of the ranks (may end in .5 for an even
          number of queries; VSE++-style code floors it); ``meanr`` = mean rank.

    Ties are pessimistic: rank = 1 + the number of *wrong* candidates whose score is ``>=``
    the correct one's. For t2i the wrong candidates are the other images; for i2t they are
    the captions of other images, compared with the image's best-scoring own caption (other
    captions of the same image never count against it). So a model that scores everything
    equal gets t2i rank ``num_images`` for every caption and i2t rank
    ``1 + num_captions - n_j`` for image ``j`` with ``n_j`` captions: chance level or worse,
    never better. (A random continuous-valued model gets t2i R@K ~ 100 * K / num_images.)

    Raises:
        TypeError: non-numeric ``similarity``, non-integer ``image_index`` or bad ``chunk_size`` type.
        ValueError: wrong shapes, length mismatch, index out of range, images without a caption,
            NaN scores, non-positive ``chunk_size``.

    Example:
        >>> import numpy as np
        >>> sim = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])  # 3 captions x 2 images
        >>> m = retrieval_metrics(sim, [0, 0, 1])
        >>> m["t2i_r1"], m["i2t_r1"]
        (100.0, 100.0)
    """
    i2t, t2i = retrieval_ranks(similarity, image_index, chunk_size=chunk_size)
    return ranks_to_metrics(i2t, t2i)
