"""Per-sample MEM state on disk: clean images (uint8), noise (int8 levels), triggers (int32), captions.

Every array is a memory-mapped ``.npy`` file under one folder, so RAM does not grow with the
number of rows and the state survives the process (it is what `save_pretrained` copies).
Noise costs one byte per pixel and channel; the reference keeps float32 noise in RAM.

Crash safety: a batch's new noise and triggers are first written to a small journal file
(atomically renamed into place), then applied to the arrays, then the progress record moves on
and the journal is removed. After a SIGKILL anywhere in between, `recover` re-applies a complete
journal (setting values is idempotent) or ignores an incomplete one, so a resumed run sees
exactly the state an uninterrupted run had at that batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

_ARRAYS = ("images", "noise", "triggers", "caption_ids", "caption_lengths", "caption_offsets", "digests")


@dataclass(frozen=True)
class StoreLayout:
    """Shapes of a store; written to ``layout.json`` beside the arrays."""

    num_rows: int
    num_captions: int
    image_size: int
    trigger_length: int
    body_budget: int
    caption_lists: bool  # the caption column holds a list of captions per image


class SampleStore:
    """Memory-mapped arrays of one data set's MEM state; rows in data set order."""

    def __init__(self, directory: str | os.PathLike, layout: StoreLayout, mode: str):
        self.directory = Path(directory)
        self.layout = layout
        n, s, k = layout.num_rows, layout.image_size, layout.trigger_length
        shapes = {
            "images": ((n, s, s, 3), np.uint8),
            "noise": ((n, s, s, 3), np.int8),
            "triggers": ((n, k), np.int32),
            "caption_ids": ((layout.num_captions, layout.body_budget), np.int32),
            "caption_lengths": ((layout.num_captions,), np.int32),
            "caption_offsets": ((n + 1,), np.int64),
            "digests": ((n,), np.uint64),
        }
        for name in _ARRAYS:
            path = self.directory / f"{name}.npy"
            shape, dtype = shapes[name]
            if mode == "w+":
                array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            else:
                array = np.load(path, mmap_mode=mode)
                if array.shape != shape or array.dtype != dtype:
                    raise ValueError(f"{path} has shape {array.shape} {array.dtype}, expected {shape} {dtype}")
            setattr(self, name, array)

    @classmethod
    def create(cls, directory: str | os.PathLike, layout: StoreLayout) -> "SampleStore":
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory, layout, "w+")
        _atomic_write(directory / "layout.json", json.dumps(asdict(layout), indent=2).encode())
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, mode: str = "r+") -> "SampleStore":
        directory = Path(directory)
        layout_file = directory / "layout.json"
        if not layout_file.exists():
            raise FileNotFoundError(f"{directory} holds no MEM state (no layout.json)")
        layout = StoreLayout(**json.loads(layout_file.read_text()))
        return cls(directory, layout, mode)

    def __len__(self) -> int:
        return self.layout.num_rows

    def flush(self) -> None:
        for name in _ARRAYS:
            array = getattr(self, name)
            if isinstance(array, np.memmap):
                array.flush()

    def sample_captions(self, indices: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        """One caption row per image: uniformly among the image's captions."""
        start = self.caption_offsets[indices]
        count = self.caption_offsets[indices + 1] - start
        if not self.layout.caption_lists:
            return start
        return start + np.floor(generator.random(len(indices)) * count).astype(np.int64)

    def batch(self, indices: np.ndarray, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """Tensors of a batch of rows (on the CPU): images, noise, triggers, one caption per image."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")  # sorted reads are faster on a memory map
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        sorted_indices = indices[order]
        captions = self.sample_captions(indices, generator)
        return {
            "indices": torch.from_numpy(indices),
            "images": torch.from_numpy(np.ascontiguousarray(self.images[sorted_indices][inverse])),
            "noise": torch.from_numpy(np.ascontiguousarray(self.noise[sorted_indices][inverse])),
            "triggers": torch.from_numpy(np.ascontiguousarray(self.triggers[sorted_indices][inverse])).long(),
            "bodies": torch.from_numpy(np.ascontiguousarray(self.caption_ids[captions])).long(),
            "lengths": torch.from_numpy(np.ascontiguousarray(self.caption_lengths[captions])).long(),
        }

    def write(self, indices: np.ndarray, noise: torch.Tensor | np.ndarray | None = None, triggers: torch.Tensor | np.ndarray | None = None) -> None:
        """Store a batch's new noise and/or triggers (no journal: use `commit` inside a sweep)."""
        indices = np.asarray(indices, dtype=np.int64)
        if noise is not None and len(noise):
            self.noise[indices] = _numpy(noise).astype(np.int8)
        if triggers is not None and len(triggers):
            self.triggers[indices] = _numpy(triggers).astype(np.int32)

    # ------------------------------------------------------------------ progress and crash safety
    def _journal(self, rank: int) -> Path:
        return self.directory / f"journal-rank{rank}.npz"

    def _progress_file(self, rank: int) -> Path:
        return self.directory / f"progress-rank{rank}.json"

    def read_progress(self, rank: int) -> dict | None:
        """The last committed progress record of this process, or None."""
        path = self._progress_file(rank)
        return json.loads(path.read_text()) if path.exists() else None

    def write_progress(self, rank: int, record: dict) -> None:
        _atomic_write(self._progress_file(rank), json.dumps(record).encode())

    def commit(
        self, rank: int, indices: np.ndarray, noise: torch.Tensor | None, triggers: torch.Tensor | None, record: dict
    ) -> None:
        """Journal, apply and record one batch's update so that a crash at any point is recoverable."""
        payload = {"indices": np.asarray(indices, dtype=np.int64), "record": np.frombuffer(json.dumps(record).encode(), np.uint8)}
        if noise is not None:
            payload["noise"] = _numpy(noise).astype(np.int8)
        if triggers is not None:
            payload["triggers"] = _numpy(triggers).astype(np.int32)
        journal = self._journal(rank)
        temporary = journal.with_suffix(".tmp.npz")
        np.savez(temporary, **payload)
        os.replace(temporary, journal)
        self._apply_journal(rank)

    def _apply_journal(self, rank: int) -> None:
        journal = self._journal(rank)
        with np.load(journal) as saved:
            self.write(saved["indices"], saved["noise"] if "noise" in saved else None, saved["triggers"] if "triggers" in saved else None)
            record = json.loads(saved["record"].tobytes().decode())
        self.flush()
        self.write_progress(rank, record)
        journal.unlink()

    def recover(self, rank: int) -> dict | None:
        """Finish a batch commit interrupted by a crash; return the progress record."""
        if self._journal(rank).exists():
            self._apply_journal(rank)
        leftover = self._journal(rank).with_suffix(".tmp.npz")
        if leftover.exists():
            leftover.unlink()  # a journal that was never completed: that batch is simply redone
        return self.read_progress(rank)


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
