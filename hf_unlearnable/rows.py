"""Writing protected rows: what `ProtectTransform.__call__` does to each batch of ``ds.map``.

A row the transform was fitted on is recognised by its digest (a 64-bit hash of its clean base
pixels and captions, so no clean data is needed to match it) and gets its fitted noise and
trigger. Any other row is error-minimised here, against the frozen surrogate, with
``online_rounds`` rounds of HotFlip + PGD. The output is ``clean + noise`` as lossless PNG bytes
and ``"<trigger words> <caption>"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from .captions import CaptionCodec, TriggerVocabulary
from .checks import row_captions
from .config import MEMConfig
from .images import encode_png, prepare_image
from .mem.loop import MEMStep
from .store import SampleStore
from .surrogate import Surrogate

UNFITTED_WARNING = (
    "This ProtectTransform was never fitted: ds.map protects each batch against the surrogate as loaded "
    "(untrained, or merely pretrained), which protects far less than MEM. Call transform.fit(ds) (or "
    "transform.protect(ds)) first, or load a fitted one with ProtectTransform.from_pretrained."
)
_CHUNK_ROWS = 1024
_NEGATIVE_TOKENS = 8  # body length of the synthetic negatives a single new row is contrasted with


def row_digest(image: np.ndarray, captions: list[str]) -> int:
    """64-bit identity of a row: the clean base pixels and its caption(s)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(image.tobytes())
    digest.update(json.dumps(captions).encode("utf-8"))
    return int.from_bytes(digest.digest(), "little")


def published_pixels(clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The uint8 pixels a protected row is written with: clean base plus noise levels, clipped. The
    one place this is computed, so the digests `record_published` stores match the images written."""
    return (clean.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)


def image_digest(image: np.ndarray) -> int:
    """64-bit identity of a published image (uint8 pixels as written)."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest(), "little")


def record_published(store: SampleStore) -> None:
    """Fill ``store.published`` with the digest of each row's published image (clean + noise); needs
    the clean copy, so it runs at the end of a fit."""
    for start in range(0, len(store), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(store))
        published = published_pixels(store.images[start:stop], store.noise[start:stop])
        store.published[start:stop] = np.array([image_digest(image) for image in published], dtype=np.uint64)


class FittedRows:
    """Finds a row's fitted state: by its index when the digest there matches, else by digest alone."""

    def __init__(self, store: SampleStore):
        self.store = store
        self._by_digest: dict[int, int] | None = None

    def find(self, image: np.ndarray, captions: list[str], row: int | None) -> int | None:
        digest = row_digest(image, captions)
        if row is not None and 0 <= row < len(self.store) and int(self.store.digests[row]) == digest:
            return row
        if self._by_digest is None:
            self._by_digest = {}
            for index, value in enumerate(self.store.digests[:].tolist()):
                self._by_digest.setdefault(int(value), index)
        return self._by_digest.get(digest)

    def hash_into(self, digest: hashlib._Hash) -> None:
        """Feed the fitted state (digests, noise if kept, triggers) to ``digest``, in chunks: RAM stays bounded."""
        for name in ("digests", "noise", "triggers") if self.store.has_noise else ("digests", "triggers"):
            array = getattr(self.store, name)
            for start in range(0, len(array), _CHUNK_ROWS):
                digest.update(np.ascontiguousarray(array[start : start + _CHUNK_ROWS]).tobytes())

    def noise_statistics(self) -> dict[str, float]:
        """Largest and mean absolute noise, in 8-bit levels, over every fitted row (nothing when the
        noise was not kept)."""
        if not self.store.has_noise:
            return {}
        noise, largest, total = self.store.noise, 0, 0.0
        for start in range(0, len(noise), _CHUNK_ROWS):
            chunk = np.abs(np.asarray(noise[start : start + _CHUNK_ROWS], dtype=np.int16))
            largest, total = max(largest, int(chunk.max(initial=0))), total + float(chunk.sum())
        return {"max_noise_levels": largest, "mean_abs_noise_levels": total / max(noise.size, 1)}


class OnlineProtector:
    """Error-minimises noise and triggers of rows that were not fitted, against the frozen surrogate."""

    def __init__(
        self, surrogate: Surrogate, codec: CaptionCodec, vocabulary: TriggerVocabulary | None, config: MEMConfig
    ):
        self.surrogate, self.codec, self.vocabulary, self.config = surrogate, codec, vocabulary, config
        self._token_pool: np.ndarray | None = None

    def __call__(
        self,
        images: np.ndarray,
        captions: list[list[str]],
        fitted: bool,
        autocast: Callable[[], AbstractContextManager],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(noise int8 (n, H, W, 3), triggers int32 (n, k)) for n new rows, deterministic in their content.

        The contrastive loss needs negatives: a batch of one row borrows synthetic ones (random
        pixels, random words), never a fitted row, whose clean copy may be gone (and must not be kept)."""
        config, codec = self.config, self.codec
        count = len(images)
        seed_material = hashlib.blake2b(images.tobytes() + json.dumps(captions).encode(), digest_size=8).digest()
        rng = np.random.default_rng([config.seed, int.from_bytes(seed_material, "little")])
        bodies = [(*codec.encode_bodies(texts), codec.encode_positions(texts)) for texts in captions]
        images_all = images
        if count < 2:
            if not fitted:
                raise ValueError(
                    "Protecting a single row needs a fitted transform (it sets the surrogate the row is protected "
                    "against) or a batch of at least 2 rows: call fit first, or map with batch_size >= 2."
                )
            extra = config.batch_size - count
            images_all = np.concatenate([images, rng.integers(0, 256, (extra, *images.shape[1:]), dtype=np.uint8)])
            bodies += [self._random_body(rng) for _ in range(extra)]
        total = len(images_all)
        noise = torch.zeros((total, *images_all.shape[1:]), dtype=torch.int8)
        if self.vocabulary is not None:
            triggers = torch.from_numpy(self.vocabulary.sample((total, config.trigger_length), rng)).long()
        else:
            triggers = torch.zeros((total, 0), dtype=torch.long)
        step = MEMStep(self.surrogate, codec, self.vocabulary, config)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.surrogate.eval()
        for _ in range(config.online_rounds):
            choice = [int(rng.integers(len(ids))) for ids, _, _ in bodies]
            batch = {
                "images": torch.from_numpy(images_all),
                "noise": noise,
                "triggers": triggers,
                "bodies": torch.from_numpy(np.stack([ids[c] for (ids, _, _), c in zip(bodies, choice)])).long(),
                "lengths": torch.from_numpy(
                    np.array([lengths[c] for (_, lengths, _), c in zip(bodies, choice)])
                ).long(),
                "positions": torch.from_numpy(np.array([where[c] for (_, _, where), c in zip(bodies, choice)])).long(),
            }
            with autocast():
                result = step(batch, update_triggers=True, generator=generator)
            noise = result.noise.cpu() if config.image_noise else noise
            triggers = result.triggers.cpu()
        return noise[:count].numpy(), triggers[:count].numpy().astype(np.int32)

    def _random_body(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A caption body of random whole words: (ids (1, body_budget), lengths (1,), positions (1,))."""
        if self._token_pool is None:
            if self.vocabulary is not None:
                self._token_pool = self.vocabulary.token_ids
            else:
                tokenizer = self.codec.tokenizer
                special = set(getattr(tokenizer, "all_special_ids", []))
                self._token_pool = np.array(sorted(set(tokenizer.get_vocab().values()) - special), dtype=np.int64)
        length = min(_NEGATIVE_TOKENS, self.codec.body_budget)
        ids = np.full((1, self.codec.body_budget), self.codec.pad, dtype=np.int32)
        ids[0, :length] = rng.choice(self._token_pool, size=length)
        return ids, np.array([length], dtype=np.int32), np.zeros(1, dtype=np.int32)


def protect_batch(
    batch: dict[str, list],
    indices: Sequence[int] | None,
    *,
    image_column: str,
    caption_column: str,
    image_size: int,
    codec: CaptionCodec,
    fitted: FittedRows | None,
    online: Callable[[np.ndarray, list[list[str]]], tuple[np.ndarray, np.ndarray]],
    written: dict[int, tuple[int, ...]] | None = None,
) -> dict[str, list]:
    """The protected image and caption columns of one ``ds.map`` batch; rows protected here (not
    fitted) are recorded in ``written`` (published image digest -> trigger ids)."""
    for column in (image_column, caption_column):
        if column not in batch:
            raise ValueError(
                f"The batch has no column {column!r} (columns: {sorted(batch)}). Fit with the right "
                "image_column/caption_column, and call map with batched=True."
            )
    raw_images, raw_captions = batch[image_column], batch[caption_column]
    rows = list(indices) if indices is not None else [None] * len(raw_images)
    clean = np.zeros((0, image_size, image_size, 3), np.uint8)
    if rows:
        clean = np.stack([prepare_image(value, image_size, row) for value, row in zip(raw_images, rows)])
    captions = [row_captions(value, row, caption_column) for value, row in zip(raw_captions, rows)]
    noise = np.zeros_like(clean, dtype=np.int8)
    triggers = np.zeros((len(rows), codec.trigger_length), dtype=np.int32)

    unseen, without_noise = [], []
    for position, (image, caption_list, row) in enumerate(zip(clean, captions, rows)):
        fitted_row = fitted.find(image, caption_list, row) if fitted is not None else None
        if fitted_row is None:
            unseen.append(position)
        elif not fitted.store.has_noise:
            without_noise.append(position if row is None else row)
        else:
            noise[position] = fitted.store.noise[fitted_row]
            triggers[position] = fitted.store.triggers[fitted_row]
    if without_noise:
        raise ValueError(
            f"{len(without_noise)} row(s) of this batch (rows {without_noise[:10]}) were protected when this transform "
            "was fitted, and it was saved without their noise (save_pretrained keeps it only with "
            "include_fitted_noise=True: the noise and a published image give back the clean image). Use the "
            "protected copy written then; protecting them again with new noise would publish two copies whose "
            "difference helps undo both. Rows it was not fitted on are protected as usual: filter the fitted ones out."
        )
    if unseen:
        noise[unseen], triggers[unseen] = online(clean[unseen], [captions[i] for i in unseen])

    protected = published_pixels(clean, noise)
    if written is not None:
        for position in unseen:
            written[image_digest(protected[position])] = tuple(int(t) for t in triggers[position])
    out_images = [{"bytes": encode_png(image), "path": None} for image in protected]
    out_captions = []
    for value, caption_list, trigger in zip(raw_captions, captions, triggers):
        texts = [codec.apply(trigger, text) for text in caption_list]
        out_captions.append(texts if isinstance(value, (list, tuple)) else texts[0])
    return {image_column: out_images, caption_column: out_captions}
