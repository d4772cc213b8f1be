"""ProtectTransform: where the `datasets` world meets the MEM algorithm.

    transform = ProtectTransform("openai/clip-vit-base-patch32", method=Layered(max_rounds=10))
    protected = transform.protect(ds, image_column="image", caption_column="caption")

or, inside a preprocessing script, ``transform.fit(ds)`` then
``ds.map(transform, batched=True, with_indices=True)``, which yields exactly the rows of
``protect``. Rows the transform was not fitted on are protected batch by batch against the
frozen surrogate, so new data can be protected as it arrives. The method is one of
`hf_unlearnable.methods`; ``config=MEMConfig(...)`` sets every field directly instead.

This module is the facade: work dirs and ingest live in `workdir`, Algorithm 1 in `mem.loop`,
writing rows in `rows`, model loading in `surrogate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .captions import CaptionCodec, trigger_vocabulary
from .checks import check_dataset
from .config import MEMConfig
from .devices import build_accelerator
from .errors import NoProtectionError
from .images import load_image, to_rgb, undecoded
from .mem.checkpoint import DiskCheckpointer
from .mem.loop import MEMLoop
from .memory import release_pages
from .rows import UNFITTED_WARNING, FittedRows, OnlineProtector, image_digest, protect_batch, record_published
from .store import SampleStore
from .surrogate import Surrogate, hash_weights, load_surrogate
from .version import ALGORITHM_VERSION, __version__
from .workdir import WorkDir, check_kind, copy_protection_state, ingest, initial_triggers, mark, work_dir_identity

if TYPE_CHECKING:
    from .methods import SurrogateMethod

__all__ = ["ProtectTransform"]

logger = logging.getLogger(__name__)

_CONFIG_FILE = "protect_config.json"
_SURROGATE_DIR = "surrogate"
_STATE_DIR = "state"
_RELEASE_EVERY = 32  # batches between releases of the mapped input's pages
_CHECK_ROWS = 256  # rows read at a time by unprotected_rows


class ProtectTransform:
    """Multi-step Error Minimization (MEM) of an image-caption data set against a CLIP surrogate.

    Args:
        model: a `transformers.CLIPModel`, a `CLIPConfig` (a surrogate trained from scratch, as in
            the paper) or a Hub id / local path (loaded with `from_pretrained`, safetensors only).
        processor: the `CLIPProcessor` (tokenizer and image normalisation); loaded with the model
            when ``model`` is a path.
        config: every setting as one `MEMConfig` (`MEMConfig()`, the layered method, when neither
            this nor ``method`` is given).
        method: a method object of `hf_unlearnable.methods` that optimises against the surrogate
            (`MEM`, `EM`, `TriggerOnly`, `Layered`); the transform runs ``method.config()``. Give
            ``config`` or ``method``, not both.
        work_dir: folder for the per-sample state and checkpoints of `fit` (None: a folder in the
            `datasets` cache named after the data set and this transform); rerun to resume. A
            work_dir you name is yours: it keeps its clean copy of the data and the noise (as
            private as the originals: it carries a ``KEEP_PRIVATE.txt`` notice) until you delete it,
            and a rerun reuses it.
        keep_work_dir: keep the default work dir after `fit`, clean copy and noise included, so a
            rerun reuses it (default False: deleted as soon as fit has finished).
        progress: show tqdm progress bars.
    """

    def __init__(
        self,
        model: CLIPModel | CLIPConfig | str | os.PathLike,
        processor: CLIPProcessor | None = None,
        config: MEMConfig | None = None,
        *,
        method: SurrogateMethod | None = None,
        work_dir: str | os.PathLike | None = None,
        keep_work_dir: bool = False,
        progress: bool = True,
    ):
        if method is not None:
            if config is not None:
                raise TypeError(
                    "Give ProtectTransform a config or a method, not both: the method builds its own config."
                )
            if not callable(getattr(method, "config", None)):
                raise TypeError(
                    f"method={method!r} trains no surrogate, so ProtectTransform cannot run it; "
                    "call its protect(ds, ...) instead."
                )
            config = method.config()
        self.config = config if config is not None else MEMConfig()
        if not isinstance(self.config, MEMConfig):
            hint = (
                f" A method object goes to method=: ProtectTransform(model, processor, method={config!r})."
                if callable(getattr(config, "config", None))
                else ""
            )
            raise TypeError(f"config must be a MEMConfig, got {type(self.config).__name__}.{hint}")
        clip, self.processor = load_surrogate(model, processor, self.config.seed)
        self.surrogate = Surrogate.from_processor(clip, self.processor)
        self.tokenizer = self.processor.tokenizer
        context = self.surrogate.context_length
        max_tokens = self.config.max_caption_tokens or context
        if max_tokens > context:
            raise ValueError(
                f"MEMConfig.max_caption_tokens={max_tokens} exceeds the surrogate's text context of {context} tokens."
            )
        try:
            self.codec = CaptionCodec(
                self.tokenizer, self.config.trigger_length, max_tokens, self.config.trigger_position, self.config.seed
            )
        except ValueError as error:
            raise ValueError(f"MEMConfig.trigger_length: {error}") from error
        self.vocabulary = trigger_vocabulary(self.tokenizer, self.config)
        self.image_size = self.surrogate.image_size
        self.image_column, self.caption_column = "image", "caption"
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.keep_work_dir = bool(keep_work_dir)
        self.progress = progress
        self.history: list[dict] = []
        self._store: SampleStore | None = None  # the fitted protection state (no clean data)
        self._work: WorkDir | None = None
        self._reused = False  # the last fit found a finished work dir and trained nothing
        self._fitted_rows: FittedRows | None = None
        self._accelerator: Accelerator | None = None
        self._fingerprint: str | None = None
        self._mapping_source: datasets.Dataset | None = None  # the data set `apply` is mapping
        self._batches_mapped = 0
        self._warned_unfitted = False
        self._written: dict[int, tuple[int, ...]] = {}  # rows protected online in this process: digest -> trigger

    # ------------------------------------------------------------------ accelerate
    @property
    def accelerator(self) -> Accelerator:
        if self._accelerator is None:
            self._accelerator = build_accelerator(self.config.mixed_precision)
            self.surrogate.to(self._accelerator.device)
        return self._accelerator

    # ------------------------------------------------------------------ fitting
    @property
    def is_fitted(self) -> bool:
        return self._store is not None

    def fit(
        self, ds: datasets.Dataset, image_column: str = "image", caption_column: str = "caption"
    ) -> ProtectTransform:
        """Run Algorithm 1 on the whole data set; keep the per-sample noise and triggers.

        The state lives in ``work_dir`` (default: a folder in the `datasets` cache named after the
        data set's fingerprint, this transform's config and weights, and the library's algorithm
        version). Run again with the same work_dir after an interruption and it resumes; a
        finished work_dir is reused as it is. Once finished, a default work dir is deleted whole
        (unless ``keep_work_dir``): its clean copy of ``ds``, and the noise, which with a published
        image gives back the clean image. The transform keeps reading noise, triggers and row digests
        through its open files until it is garbage-collected or the process ends, so map with it in
        this process (or save the protected copy); a rerun computes again.
        """
        if self.is_fitted:
            raise ValueError(
                f"This transform is already fitted (on {len(self._store)} rows); fitting again would start from the "
                "surrogate the first fit trained. Map the data with it (rows it was not fitted on are protected "
                "against that surrogate), or create a new ProtectTransform to fit other data."
            )
        check_dataset(ds, image_column, caption_column, min_rows=2)
        self.image_column, self.caption_column = image_column, caption_column
        accelerator = self.accelerator
        identity = work_dir_identity(ds, self.fingerprint)
        work = WorkDir.choose(self.work_dir, identity, accelerator)
        with work.lock(accelerator):  # one run at a time per work dir
            store = work.open_or_ingest(
                identity,
                accelerator,
                lambda directory: ingest(
                    ds,
                    image_column,
                    caption_column,
                    directory,
                    codec=self.codec,
                    image_size=self.image_size,
                    vocabulary=self.vocabulary,
                    seed=self.config.seed,
                    progress=self.progress,
                ),
            )
            checkpointer = DiskCheckpointer(work.checkpoint, accelerator)
            self._reused = work.finished
            if self._reused:  # computed before: the surrogate's final weights and the history suffice
                if accelerator.is_main_process:
                    logger.warning("Reusing the finished run in %s: no MEM round runs now.", work.root)
                self.history = checkpointer.load(self.surrogate, None)["history"]
                self.surrogate.eval()
            else:
                torch.manual_seed(self.config.seed)
                loop = MEMLoop(
                    self.surrogate,
                    store,
                    self.codec,
                    self.vocabulary,
                    self.config,
                    accelerator,
                    self.progress,
                    checkpointer=checkpointer,
                )
                self.history = loop.run()
                refuse_no_protection(store, self.config, self.vocabulary)
                if accelerator.is_main_process:
                    record_published(store)  # so that push_protected recognises this run's output
                work.mark_finished(accelerator)
            del store
            self._store = SampleStore.open(work.state, mode="r", clean=False)
            self._work, self._fitted_rows, self._fingerprint = work, None, None
            work.release(self.keep_work_dir, self._store, accelerator)  # a default work dir goes, noise included
        return self

    def protect(
        self, ds: datasets.Dataset, image_column: str = "image", caption_column: str = "caption"
    ) -> datasets.Dataset:
        """Fit on ``ds`` and return its protected copy: same rows, order and other columns;
        images replaced by lossless PNGs of x + d, captions prefixed with their trigger.

        A default work dir is gone by then, clean copy and noise (see `fit`). On a transform that is
        already fitted, ``ds`` is mapped with that fit (rows it was fitted on get their noise and
        trigger, others are protected against its surrogate) and nothing is fitted again."""
        if self.is_fitted:
            if (image_column, caption_column) != (self.image_column, self.caption_column):
                raise ValueError(
                    f"This transform was fitted with image_column={self.image_column!r}, caption_column="
                    f"{self.caption_column!r}; protect() got {image_column!r}, {caption_column!r}. Rename the columns "
                    "or create a new ProtectTransform."
                )
            logger.warning(
                "This transform is already fitted (on %d rows): protect() maps the data set with that fit "
                "and does not fit again.",
                len(self._store),
            )
            return self.apply(ds)
        self.fit(ds, image_column, caption_column)
        return self.apply(ds)

    def apply(self, ds: datasets.Dataset, batch_size: int | None = None) -> datasets.Dataset:
        """``ds.map(self, batched=True, with_indices=True)`` with the output features set."""
        check_dataset(ds, self.image_column, self.caption_column)
        features = ds.features.copy()
        features[self.image_column] = datasets.Image()
        source = undecoded(ds, self.image_column)
        self._mapping_source = source  # __call__ releases its read pages now and then
        try:
            # with several processes the main one writes the cache file first; the others load it
            with self.accelerator.main_process_first():
                return source.map(
                    self,
                    batched=True,
                    with_indices=True,
                    batch_size=batch_size or self.config.batch_size,
                    features=features,
                    desc="Writing protected rows",
                )
        finally:
            self._mapping_source = None

    # ------------------------------------------------------------------ the map callable
    def __call__(self, batch: dict[str, list], indices: Sequence[int] | None = None) -> dict[str, list]:
        """Protect a batch of rows (``ds.map(transform, batched=True, with_indices=True)``).

        Rows seen by `fit` get their fitted noise and trigger (matched by index and content);
        others are error-minimised here against the frozen surrogate.
        """
        if self._store is None and not self._warned_unfitted:
            self._warned_unfitted = True
            logger.warning(UNFITTED_WARNING)
        if self._store is not None and self._fitted_rows is None:
            self._fitted_rows = FittedRows(self._store)
        protected = protect_batch(
            batch,
            indices,
            image_column=self.image_column,
            caption_column=self.caption_column,
            image_size=self.image_size,
            codec=self.codec,
            fitted=self._fitted_rows,
            online=self._protect_unseen,
            written=self._written,
        )
        self._batches_mapped += 1
        if self._mapping_source is not None and self._batches_mapped % _RELEASE_EVERY == 0:
            release_pages(self._mapping_source)
        return protected

    def _protect_unseen(self, images: np.ndarray, captions: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        online = OnlineProtector(self.surrogate, self.codec, self.vocabulary, self.config)
        return online(images, captions, fitted=self.is_fitted, autocast=self.accelerator.autocast)

    # ------------------------------------------------------------------ recognising its own output
    def unprotected_rows(self, ds: datasets.Dataset) -> list[int]:
        """Rows of ``ds`` that are not this transform's protected output: the image is not one it
        wrote (a fitted row's published image, or a row it protected in this process), or a caption
        lacks that row's trigger words. `push_protected` refuses a data set with any."""
        check_dataset(ds, self.image_column, self.caption_column)
        known: dict[int, tuple[int, ...]] = {}
        if self._store is not None and self._store.has_published:
            for value, trigger in zip(self._store.published[:].tolist(), self._store.triggers[:].tolist()):
                known.setdefault(int(value), tuple(trigger))
        known.update(self._written)
        source = undecoded(ds.select_columns([self.image_column, self.caption_column]), self.image_column)
        failed = []
        for start in range(0, len(source), _CHECK_ROWS):
            chunk = source[start : start + _CHECK_ROWS]
            for offset, (value, caption_value) in enumerate(zip(chunk[self.image_column], chunk[self.caption_column])):
                row = start + offset
                try:
                    image = np.asarray(to_rgb(load_image(value, row)))
                except ValueError:
                    failed.append(row)
                    continue
                trigger = known.get(image_digest(image))
                texts = caption_value if isinstance(caption_value, (list, tuple)) else [caption_value]
                if trigger is None or not all(self._carries_trigger(trigger, text) for text in texts):
                    failed.append(row)
        return failed

    def _carries_trigger(self, trigger: tuple[int, ...], text: Any) -> bool:
        if not isinstance(text, str):
            return False
        if not trigger:
            return True
        words = self.codec.trigger_text(trigger)
        if self.config.trigger_position == "start":
            return text == words or text.startswith(words + " ")
        return f" {words} " in f" {text} "

    # ------------------------------------------------------------------ identity for datasets' cache
    @property
    def fingerprint(self) -> str:
        """Hash of config, surrogate weights, tokenizer, columns and fitted state (what `datasets` hashes)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.config.to_json().encode())
            digest.update(json.dumps([self.image_column, self.caption_column, self.image_size]).encode())
            digest.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
            hash_weights(self.surrogate.model, digest)
            if self._store is not None:
                FittedRows(self._store).hash_into(digest)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __getstate__(self) -> dict:
        # for `map(num_proc=...)`: reopen the store in the worker; no Accelerator across processes
        # (the store pickles as its open files: a work dir already deleted is reopened through them)
        state = self.__dict__.copy()
        state.update(_accelerator=None, _fitted_rows=None, _mapping_source=None)
        return state

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike, *, include_fitted_noise: bool = False) -> None:
        """Write config, surrogate (safetensors), processor and, for a fitted transform, the triggers
        and row digests of the rows it was fitted on: loadable in another process, where it protects
        new rows and recognises fitted ones. No clean pixels, caption text or ids are written.

        The noise of the fitted rows is not written unless ``include_fitted_noise=True``: the noise
        and a published image give back the clean image exactly, so a folder with it is as private
        as the originals (it then carries a ``KEEP_PRIVATE.txt`` notice). Without it, the loaded
        transform refuses to map rows it was fitted on: their protected copy is the one written then.
        """
        directory = Path(directory)
        if include_fitted_noise and self._store is not None and not self._store.has_noise:
            raise ValueError(
                "include_fitted_noise=True, but this transform holds no noise of its fitted rows (it was loaded from a "
                "folder saved without it)."
            )
        check_kind(directory, "protector", "save_pretrained directory")
        if not directory.exists():
            mark(directory, "protector")
        self.surrogate.model.save_pretrained(directory / _SURROGATE_DIR, safe_serialization=True)
        self.processor.save_pretrained(directory / _SURROGATE_DIR)
        meta = {
            "config": self.config.to_dict(),
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "history": self.history,
            "fitted": self.is_fitted,
            "fitted_noise": bool(self.is_fitted and include_fitted_noise),
            "library_version": __version__,
            "algorithm_version": ALGORITHM_VERSION,
        }
        if self._store is not None:
            copy_protection_state(self._store, directory / _STATE_DIR, include_noise=include_fitted_noise)
        (directory / _CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, progress: bool = True) -> ProtectTransform:
        """Load what `save_pretrained` wrote; a fitted transform maps its rows without refitting."""
        directory = Path(directory)
        config_file = directory / _CONFIG_FILE
        if not config_file.exists():
            raise FileNotFoundError(f"{directory} is not a saved ProtectTransform (no {_CONFIG_FILE}).")
        meta = json.loads(config_file.read_text())
        # a config saved by an older release: the fields it lacks or that have left, by MEMConfig.from_saved's rules
        transform = cls(directory / _SURROGATE_DIR, config=MEMConfig.from_saved(meta["config"]), progress=progress)
        transform.image_column, transform.caption_column = meta["image_column"], meta["caption_column"]
        transform.history = meta.get("history", [])
        if meta.get("fitted"):
            state = directory / _STATE_DIR
            noise = (state / "noise.npy").exists()  # saved with include_fitted_noise, or before it existed
            transform._store = SampleStore.open(state, mode="r", clean=False, noise=noise)
        return transform

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Method, rows, budget used and the last round's losses; ``reused`` and ``work_dir`` after a fit
        (``reused``: the work dir held a finished run, so ``seconds`` is what its rounds took then)."""
        info: dict[str, Any] = {
            "method": self.config.method_name,
            "fitted": self.is_fitted,
            "epsilon_levels": self.config.epsilon_levels,
        }
        if self._store is not None:
            info.update(rows=len(self._store), **FittedRows(self._store).noise_statistics())
        if self.history:
            last = {key: self.history[-1][key] for key in ("surrogate_loss", "protected_loss", "clean_loss")}
            info.update(rounds=len(self.history), seconds=sum(record["seconds"] for record in self.history), **last)
        if self._work is not None:
            info.update(reused=self._reused, work_dir=str(self._work.root))
        return info


def refuse_no_protection(store: SampleStore, config: MEMConfig, vocabulary: Any) -> None:
    """Raise `NoProtectionError` when a finished run moved no pixel although its method adds image
    noise, or left every trigger as the random one it started from although it searches triggers."""
    pgd_runs = config.image_noise and config.pgd_steps > 0
    if pgd_runs and FittedRows(store).noise_statistics()["max_noise_levels"] == 0:
        raise NoProtectionError(
            f"MEM finished ({config.method_name}) without moving a single pixel of {len(store)} rows although "
            "image_noise=True: the output would protect nothing. This happens when every PGD gradient is zero or "
            "not finite (a surrogate whose weights are not finite, or an epsilon below one 8-bit level)."
        )
    searches_triggers = (
        vocabulary is not None and config.trigger_length and config.trigger_rounds and config.hotflip_candidates
    )
    if searches_triggers:
        start = initial_triggers(vocabulary, len(store), config.trigger_length, config.seed)
        if np.array_equal(store.triggers[:], start):
            raise NoProtectionError(
                f"MEM finished ({config.method_name}) with every trigger of {len(store)} rows still the random "
                "one it started from: HotFlip changed nothing, so the captions carry no learned trigger. This "
                "happens when the surrogate's gradients are zero or not finite."
            )


def _register_datasets_hashing() -> None:
    """Make `datasets` hash a ProtectTransform by its fingerprint, not by pickling the model."""
    try:
        from datasets.utils._dill import pklregister
    except ImportError:  # pragma: no cover - other datasets versions
        logger.warning("datasets has no pklregister; ds.map fingerprints will hash the whole transform")
        return

    @pklregister(ProtectTransform)
    def _save_protect_transform(pickler, obj):
        pickler.save_reduce(_transform_fingerprint, (obj.fingerprint,), obj=obj)


def _transform_fingerprint(value: str) -> str:
    return value


_register_datasets_hashing()
