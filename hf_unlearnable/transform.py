"""ProtectTransform: where the `datasets` world meets the MEM algorithm.

    transform = ProtectTransform("openai/clip-vit-base-patch32", config=MEMConfig(max_rounds=10))
    protected = transform.protect(ds, image_column="image", caption_column="caption")

or, inside a preprocessing script, ``transform.fit(ds)`` then
``ds.map(transform, batched=True, with_indices=True)``, which yields exactly the rows of
``protect``. Rows the transform was not fitted on are protected batch by batch against the
frozen surrogate, so new data can be protected as it arrives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .captions import CaptionCodec, TriggerVocabulary, check_caption
from .config import MEMConfig
from .devices import build_accelerator
from .images import encode_png, prepare_image, undecoded
from .memory import release_pages
from .mem.loop import MEMLoop, MEMStep
from .store import SampleStore, StoreLayout
from .surrogate import Surrogate

logger = logging.getLogger(__name__)

_CONFIG_FILE = "protect_config.json"
_SURROGATE_DIR = "surrogate"
_STATE_DIR = "state"
_CHECKPOINT_DIR = "checkpoint"
_IDENTITY_FILE = "identity.json"
_HASH_ROWS = 1024
_RELEASE_EVERY = 32  # batches between releases of the mapped input's pages
_READ_BATCH = 256


def load_surrogate(
    model: CLIPModel | CLIPConfig | str | os.PathLike, processor: CLIPProcessor | None, seed: int
) -> tuple[CLIPModel, CLIPProcessor]:
    """Resolve the ``model`` argument: a CLIPModel, a CLIPConfig (random init, trained from scratch)
    or a Hub id / local path loaded with `from_pretrained` (safetensors only)."""
    if isinstance(model, (str, os.PathLike)):
        loaded = CLIPModel.from_pretrained(str(model), use_safetensors=True)
        processor = processor or CLIPProcessor.from_pretrained(str(model))
        return loaded, processor
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
    return model, processor


def _caption_is_list(feature: Any, column: str) -> bool:
    if isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        inner = feature.feature
        if isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string"):
            return True
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return False
    raise TypeError(
        f"Caption column {column!r} has feature {feature}; expected strings or lists of strings. "
        "Cast it (ds.cast_column) or choose another caption_column."
    )


def _row_digest(image: np.ndarray, captions: list[str]) -> int:
    """64-bit identity of a row: the clean base pixels and its caption(s)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(image.tobytes())
    digest.update(json.dumps(captions).encode("utf-8"))
    return int.from_bytes(digest.digest(), "little")


class ProtectTransform:
    """Multi-step Error Minimization (MEM) of an image-caption data set against a CLIP surrogate.

    Args:
        model: a `transformers.CLIPModel`, a `CLIPConfig` (a surrogate trained from scratch, as in
            the paper) or a Hub id / local path (loaded with `from_pretrained`, safetensors only).
        processor: the `CLIPProcessor` (tokenizer and image normalisation); loaded with the model
            when ``model`` is a path.
        config: MEM settings (`MEMConfig()` when None).
        work_dir: folder for the per-sample state and checkpoints of `fit` (None: a folder in the
            `datasets` cache named after the data set and this transform); rerun to resume.
        progress: show tqdm progress bars.
    """

    def __init__(
        self,
        model: CLIPModel | CLIPConfig | str | os.PathLike,
        processor: CLIPProcessor | None = None,
        config: MEMConfig | None = None,
        *,
        work_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ):
        self.config = config if config is not None else MEMConfig()
        if not isinstance(self.config, MEMConfig):
            raise TypeError(f"config must be a MEMConfig, got {type(self.config).__name__}")
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
            self.codec = CaptionCodec(self.tokenizer, self.config.trigger_length, max_tokens)
        except ValueError as error:
            raise ValueError(f"MEMConfig.trigger_length: {error}") from error
        self.vocabulary = TriggerVocabulary(self.tokenizer) if self.config.trigger_length else None
        self.image_size = self.surrogate.image_size
        self.image_column, self.caption_column = "image", "caption"
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.progress = progress
        self.history: list[dict] = []
        self._store: SampleStore | None = None
        self._digest_rows: dict[int, int] | None = None
        self._accelerator: Accelerator | None = None
        self._fingerprint: str | None = None
        self._mapping_source: datasets.Dataset | None = None  # the data set `apply` is mapping
        self._batches_mapped = 0

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

    def fit(self, ds: datasets.Dataset, image_column: str = "image", caption_column: str = "caption") -> "ProtectTransform":
        """Run Algorithm 1 on the whole data set; keep the per-sample noise and triggers.

        The state lives in ``work_dir`` (default: a folder in the `datasets` cache named after the
        data set's fingerprint and this transform's config and weights). Run again with the same
        work_dir after an interruption and it resumes; a finished work_dir is reused as it is.
        """
        self._check_dataset(ds, image_column, caption_column)
        self.image_column, self.caption_column = image_column, caption_column
        if len(ds) < 2:
            raise ValueError(f"fit needs at least 2 rows (the contrastive loss needs negatives); got {len(ds)}.")
        accelerator = self.accelerator
        identity = {
            "format": 1,
            "dataset_fingerprint": ds._fingerprint,
            "rows": len(ds),
            "transform": self.fingerprint,
        }
        work_dir = self._work_dir_for(identity)
        store = self._open_or_ingest(ds, work_dir, identity)
        torch.manual_seed(self.config.seed)
        loop = MEMLoop(
            self.surrogate, store, self.codec, self.vocabulary, self.config, accelerator, self.progress,
            checkpoint_dir=work_dir / _CHECKPOINT_DIR,
        )
        self.history = loop.run()
        self._store, self._digest_rows, self._fingerprint = store, None, None
        return self

    def _work_dir_for(self, identity: dict) -> Path:
        """The given work_dir, or one in the datasets cache; decided on the main process for all."""
        if self.work_dir is not None:
            return self.work_dir
        key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=10).hexdigest()
        chosen = [str(Path(datasets.config.HF_DATASETS_CACHE) / "hf_unlearnable" / f"mem-{key}")]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(chosen, from_process=0)
        return Path(chosen[0])

    def _open_or_ingest(self, ds: datasets.Dataset, work_dir: Path, identity: dict) -> SampleStore:
        """Reuse the state of an earlier (possibly interrupted) run with the same identity, else ingest."""
        accelerator = self.accelerator
        identity_file = work_dir / _IDENTITY_FILE
        processes = accelerator.num_processes
        if identity_file.exists():
            saved = json.loads(identity_file.read_text())
            if {k: saved.get(k) for k in identity} != identity:
                raise ValueError(
                    f"work_dir {work_dir} holds the state of another data set or config "
                    f"(saved {saved.get('rows')} rows, data set fingerprint {saved.get('dataset_fingerprint')}). "
                    "Use a new work_dir for this run, or delete that folder to start over."
                )
            if saved.get("processes") != processes and (work_dir / _CHECKPOINT_DIR / "state.json").exists():
                raise ValueError(
                    f"work_dir {work_dir} was started with {saved.get('processes')} processes; resume it with "
                    f"the same number (now {processes}) or use a new work_dir."
                )
            if saved.get("ingested"):
                accelerator.wait_for_everyone()
                return SampleStore.open(work_dir / _STATE_DIR)
        if accelerator.is_main_process:
            work_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = work_dir / _CHECKPOINT_DIR
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            store = self._ingest(ds, self.image_column, self.caption_column, work_dir / _STATE_DIR)
            temporary = identity_file.with_suffix(".tmp")
            temporary.write_text(json.dumps({**identity, "processes": processes, "ingested": True}, indent=2))
            os.replace(temporary, identity_file)
        accelerator.wait_for_everyone()
        return store if accelerator.is_main_process else SampleStore.open(work_dir / _STATE_DIR)

    def protect(self, ds: datasets.Dataset, image_column: str = "image", caption_column: str = "caption") -> datasets.Dataset:
        """Fit on ``ds`` and return its protected copy: same rows, order and other columns;
        images replaced by lossless PNGs of x + d, captions prefixed with their trigger."""
        self.fit(ds, image_column, caption_column)
        return self.apply(ds)

    def apply(self, ds: datasets.Dataset, batch_size: int | None = None) -> datasets.Dataset:
        """``ds.map(self, batched=True, with_indices=True)`` with the output features set."""
        self._check_dataset(ds, self.image_column, self.caption_column)
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
        for column in (self.image_column, self.caption_column):
            if column not in batch:
                raise ValueError(
                    f"The batch has no column {column!r} (columns: {sorted(batch)}). Fit with the right "
                    "image_column/caption_column, and call map with batched=True."
                )
        raw_images, raw_captions = batch[self.image_column], batch[self.caption_column]
        rows = list(indices) if indices is not None else [None] * len(raw_images)
        size = self.image_size
        clean = np.stack([prepare_image(value, size, row) for value, row in zip(raw_images, rows)]) if rows else np.zeros((0, size, size, 3), np.uint8)
        captions = [self._captions_of(value, row) for value, row in zip(raw_captions, rows)]
        noise = np.zeros_like(clean, dtype=np.int8)
        triggers = np.zeros((len(rows), self.config.trigger_length), dtype=np.int32)

        unseen = []
        for position, (image, caption_list, row) in enumerate(zip(clean, captions, rows)):
            fitted_row = self._fitted_row(image, caption_list, row)
            if fitted_row is None:
                unseen.append(position)
            else:
                noise[position] = self._store.noise[fitted_row]
                triggers[position] = self._store.triggers[fitted_row]
        if unseen:
            new_noise, new_triggers = self._protect_unseen(clean[unseen], [captions[i] for i in unseen])
            noise[unseen], triggers[unseen] = new_noise, new_triggers

        self._batches_mapped += 1
        if self._mapping_source is not None and self._batches_mapped % _RELEASE_EVERY == 0:
            release_pages(self._mapping_source)
        protected = (clean.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)
        out_images = [{"bytes": encode_png(image), "path": None} for image in protected]
        out_captions = []
        for value, caption_list, trigger in zip(raw_captions, captions, triggers):
            texts = [self.codec.apply(trigger, text) for text in caption_list]
            out_captions.append(texts if isinstance(value, (list, tuple)) else texts[0])
        return {self.image_column: out_images, self.caption_column: out_captions}

    def _captions_of(self, value: Any, row: int | None) -> list[str]:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"Caption column {self.caption_column!r} holds an empty list at row {row}; drop or fill it.")
            return [check_caption(text, row, self.caption_column) for text in value]
        return [check_caption(value, row, self.caption_column)]

    def _fitted_row(self, image: np.ndarray, captions: list[str], row: int | None) -> int | None:
        if self._store is None:
            return None
        digest = _row_digest(image, captions)
        if row is not None and 0 <= row < len(self._store) and int(self._store.digests[row]) == digest:
            return row
        if self._digest_rows is None:
            self._digest_rows = {}
            for index, value in enumerate(self._store.digests[:].tolist()):
                self._digest_rows.setdefault(int(value), index)
        return self._digest_rows.get(digest)

    def _protect_unseen(self, images: np.ndarray, captions: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Error-minimise noise and triggers of new rows against the frozen surrogate."""
        config = self.config
        count = len(images)
        seed_material = hashlib.blake2b(images.tobytes() + json.dumps(captions).encode(), digest_size=8).digest()
        rng = np.random.default_rng([config.seed, int.from_bytes(seed_material, "little")])
        bodies = [self.codec.encode_bodies(texts) for texts in captions]
        images_all, context = images, 0
        if count < 2:
            if self._store is None:
                raise ValueError(
                    "Protecting a single row needs a fitted transform (its rows serve as negatives) or a "
                    "batch of at least 2 rows: call fit first, or map with batch_size >= 2."
                )
            extra = rng.choice(len(self._store), size=min(config.batch_size, len(self._store)) - count, replace=False)
            context = len(extra)
            images_all = np.concatenate([images, self._store.images[np.sort(extra)]])
            for index in np.sort(extra):
                start, stop = self._store.caption_offsets[index], self._store.caption_offsets[index + 1]
                bodies.append((np.asarray(self._store.caption_ids[start:stop]), np.asarray(self._store.caption_lengths[start:stop])))
        total = count + context
        noise = torch.zeros((total, *images_all.shape[1:]), dtype=torch.int8)
        triggers = torch.from_numpy(self.vocabulary.sample((total, config.trigger_length), rng)).long() if self.vocabulary else torch.zeros((total, 0), dtype=torch.long)
        step = MEMStep(self.surrogate, self.codec, self.vocabulary, config)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.surrogate.eval()
        for _ in range(config.online_rounds):
            choice = [int(rng.integers(len(ids))) for ids, _ in bodies]
            batch = {
                "images": torch.from_numpy(images_all),
                "noise": noise,
                "triggers": triggers,
                "bodies": torch.from_numpy(np.stack([ids[c] for (ids, _), c in zip(bodies, choice)])).long(),
                "lengths": torch.from_numpy(np.array([lengths[c] for (_, lengths), c in zip(bodies, choice)])).long(),
            }
            with self.accelerator.autocast():
                result = step(batch, update_triggers=True, generator=generator)
            noise = result.noise.cpu() if config.image_noise else noise
            triggers = result.triggers.cpu()
        return noise[:count].numpy(), triggers[:count].numpy().astype(np.int32)

    # ------------------------------------------------------------------ data in
    def _check_dataset(self, ds: Any, image_column: str, caption_column: str) -> None:
        if not isinstance(ds, datasets.Dataset):
            raise TypeError(
                f"Expected a datasets.Dataset, got {type(ds).__name__}. For a DatasetDict pick a split "
                "(ds['train']); an IterableDataset must be materialised first (Dataset.from_generator)."
            )
        for name, column in (("image_column", image_column), ("caption_column", caption_column)):
            if column not in ds.column_names:
                raise ValueError(f"{name}={column!r} is not a column of the data set; its columns are {ds.column_names}.")
        _caption_is_list(ds.features[caption_column], caption_column)

    def _ingest(self, ds: datasets.Dataset, image_column: str, caption_column: str, directory: Path) -> SampleStore:
        """Decode, resize and tokenise every row into a fresh `SampleStore` in ``directory``."""
        caption_lists = _caption_is_list(ds.features[caption_column], caption_column)
        source = undecoded(ds.select_columns([image_column, caption_column]), image_column)
        if caption_lists:
            num_captions = sum(len(value or []) for value in source.select_columns([caption_column]).to_dict()[caption_column])
        else:
            num_captions = len(source)
        layout = StoreLayout(
            num_rows=len(source),
            num_captions=num_captions,
            image_size=self.image_size,
            trigger_length=self.config.trigger_length,
            body_budget=self.codec.body_budget,
            caption_lists=caption_lists,
        )
        if directory.exists():
            shutil.rmtree(directory)
        store = SampleStore.create(directory, layout)
        caption_row = 0
        store.caption_offsets[0] = 0
        progress = tqdm(total=len(source), desc="Reading rows", disable=not self.progress, leave=False)
        for start in range(0, len(source), _READ_BATCH):
            chunk = source[start : start + _READ_BATCH]
            for offset, (value, caption_value) in enumerate(zip(chunk[image_column], chunk[caption_column])):
                row = start + offset
                image = prepare_image(value, self.image_size, row)
                texts = self._captions_of(caption_value, row)
                ids, lengths = self.codec.encode_bodies(texts)
                store.images[row] = image
                store.caption_ids[caption_row : caption_row + len(texts)] = ids
                store.caption_lengths[caption_row : caption_row + len(texts)] = lengths
                caption_row += len(texts)
                store.caption_offsets[row + 1] = caption_row
                store.digests[row] = _row_digest(image, texts)
            progress.update(len(chunk[image_column]))
            release_pages(source)  # read pages of the input may go: RSS stays flat over the pass
        progress.close()
        if self.vocabulary is not None:
            rng = np.random.default_rng([self.config.seed, 12345])
            store.triggers[:] = self.vocabulary.sample((len(source), self.config.trigger_length), rng)
        return store  # noise files are created as zeros

    # ------------------------------------------------------------------ identity for datasets' cache
    @property
    def fingerprint(self) -> str:
        """Hash of config, surrogate weights, tokenizer, columns and fitted state (what `datasets` hashes)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.config.to_json().encode())
            digest.update(json.dumps([self.image_column, self.caption_column, self.image_size]).encode())
            digest.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
            for name, tensor in sorted(self.surrogate.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            if self._store is not None:
                for name in ("digests", "noise", "triggers"):
                    array = getattr(self._store, name)
                    for start in range(0, len(array), _HASH_ROWS):  # in chunks: RAM stays bounded
                        digest.update(np.ascontiguousarray(array[start : start + _HASH_ROWS]).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __getstate__(self) -> dict:
        # for `map(num_proc=...)`: reopen the memory maps in the worker; no Accelerator across processes
        state = self.__dict__.copy()
        state["_store"] = str(self._store.directory) if self._store is not None else None
        state["_accelerator"] = None
        state["_digest_rows"] = None
        state["_mapping_source"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        store = state.pop("_store")
        self.__dict__.update(state)
        self._store = SampleStore.open(store, mode="r") if store else None

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config, surrogate (safetensors), processor and fitted state, loadable in another process."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.surrogate.model.save_pretrained(directory / _SURROGATE_DIR, safe_serialization=True)
        self.processor.save_pretrained(directory / _SURROGATE_DIR)
        meta = {
            "config": self.config.to_dict(),
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "history": self.history,
            "fitted": self.is_fitted,
            "library_version": _library_version(),
        }
        if self._store is not None:
            self._store.sync()
            target = directory / _STATE_DIR
            if target.resolve() != self._store.directory.resolve():
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(self._store.directory, target)
        (directory / _CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, progress: bool = True) -> "ProtectTransform":
        """Load what `save_pretrained` wrote; a fitted transform maps its rows without refitting."""
        directory = Path(directory)
        config_file = directory / _CONFIG_FILE
        if not config_file.exists():
            raise FileNotFoundError(f"{directory} is not a saved ProtectTransform (no {_CONFIG_FILE}).")
        meta = json.loads(config_file.read_text())
        transform = cls(directory / _SURROGATE_DIR, config=MEMConfig.from_dict(meta["config"]), progress=progress)
        transform.image_column, transform.caption_column = meta["image_column"], meta["caption_column"]
        transform.history = meta.get("history", [])
        if meta.get("fitted"):
            transform._store = SampleStore.open(directory / _STATE_DIR, mode="r")
        return transform

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Rows, budget used and the last round's losses."""
        info: dict[str, Any] = {"fitted": self.is_fitted, "epsilon_levels": self.config.epsilon_levels}
        if self._store is not None:
            noise, largest, total = self._store.noise, 0, 0.0
            for start in range(0, len(noise), _HASH_ROWS):
                chunk = np.abs(np.asarray(noise[start : start + _HASH_ROWS], dtype=np.int16))
                largest, total = max(largest, int(chunk.max(initial=0))), total + float(chunk.sum())
            info.update(
                rows=len(self._store),
                max_noise_levels=largest,
                mean_abs_noise_levels=total / max(noise.size, 1),
            )
        if self.history:
            last = self.history[-1]
            info.update(
                rounds=len(self.history),
                surrogate_loss=last["surrogate_loss"],
                protected_loss=last["protected_loss"],
                clean_loss=last["clean_loss"],
                seconds=sum(record["seconds"] for record in self.history),
            )
        return info


def _library_version() -> str:
    from . import __version__

    return __version__


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
