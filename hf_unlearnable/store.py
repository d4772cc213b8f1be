"""Per-sample MEM state on disk: clean images (uint8), noise (int8 levels), triggers (int32), captions.

Every array is a memory-mapped ``.npy`` file under one folder, so RAM does not grow with the
number of rows and the state survives the process (it is what `save_pretrained` copies).
Noise costs one byte per pixel and channel; the reference keeps float32 noise in RAM.
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
        (directory / "layout.json").write_text(json.dumps(asdict(layout), indent=2))
        return cls(directory, layout, "w+")

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

    def write(self, indices: np.ndarray, noise: torch.Tensor | None = None, triggers: torch.Tensor | None = None) -> None:
        """Store a batch's new noise and/or triggers."""
        indices = np.asarray(indices, dtype=np.int64)
        if noise is not None:
            self.noise[indices] = noise.detach().cpu().numpy().astype(np.int8)
        if triggers is not None:
            self.triggers[indices] = triggers.detach().cpu().numpy().astype(np.int32)
