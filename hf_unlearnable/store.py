"""Per-sample MEM state on disk: clean images (uint8), noise (int8 levels), triggers (int32), captions.

Every array is a ``.npy`` file under one folder, read and written by rows with pread/pwrite
(`RowArray`), so the process's memory does not grow with the number of rows (a memory map would
keep every touched page resident) and the state survives the process. The clean arrays
(images, caption ids) exist only while a work dir needs them; the protection arrays (noise,
triggers, row digests) are what a fitted transform keeps and `save_pretrained` copies. Noise
costs one byte per pixel and channel on disk; the reference keeps float32 noise for the whole
data set in RAM.

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

# The clean copy of the data (what must not outlive the run, nor be shared) ...
CLEAN_ARRAYS = ("images", "caption_ids", "caption_lengths", "caption_positions", "caption_offsets")
# ... and the protection: all a fitted transform needs to write its rows again (matched by digest),
# and the digest of each published image, to recognise its own output ("published"; stores written
# before it existed lack it).
PROTECTION_ARRAYS = ("noise", "triggers", "digests", "published")
_OPTIONAL = ("published",)
_ARRAYS = CLEAN_ARRAYS + PROTECTION_ARRAYS


class RowArray:
    """A ``.npy`` file accessed by rows through pread/pwrite; indexing returns numpy arrays.

    Supports ``a[i]``, ``a[start:stop]`` and ``a[index_array]`` for reading and writing, and
    ``len``, ``shape``, ``dtype``, ``size``. Nothing is mapped, so resident memory holds only
    the rows of the current request. Files are created sparse, i.e. all zeros.
    """

    def __init__(self, path: str | os.PathLike, writable: bool = True):
        self.path = Path(path)
        self.writable = writable
        self.unlinked = False  # the file is gone from the file system; this open file still reads it
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran_order:
            raise ValueError(f"{self.path} is stored in Fortran order; expected C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype) -> RowArray:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            handle.truncate(handle.tell() + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return cls(path)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _rows(self, key) -> tuple[np.ndarray, bool]:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows of {self.path.name}")
            return np.array([index], dtype=np.int64), True
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)), dtype=np.int64), False
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows of {self.path.name}")
        return rows, False

    def _runs(self, rows: np.ndarray):
        """(position in rows, first row, count) for each run of consecutive rows, in sorted order."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(ordered)]):
            yield order[start:stop], int(ordered[start]), int(stop - start)

    def __getitem__(self, key) -> np.ndarray:
        rows, single = self._rows(key)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if self.row_bytes:
            for positions, first, count in self._runs(rows):
                data = os.pread(self._fd, count * self.row_bytes, self.offset + first * self.row_bytes)
                out[positions] = np.frombuffer(data, dtype=self.dtype).reshape(count, *self.row_shape)
        return out[0] if single else out

    def __setitem__(self, key, value) -> None:
        if not self.writable:
            raise PermissionError(f"{self.path} is open read-only")
        rows, _ = self._rows(key)
        values = np.broadcast_to(np.asarray(value, dtype=self.dtype), (len(rows), *self.row_shape))
        if not self.row_bytes:
            return
        for positions, first, _count in self._runs(rows):
            os.pwrite(self._fd, np.ascontiguousarray(values[positions]).tobytes(), self.offset + first * self.row_bytes)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:]
        return array.astype(dtype) if dtype is not None else array

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def unlink(self) -> None:
        """Remove the file from the file system and keep reading it through the open file: the data
        stays for as long as this object (or a copy of it in a worker process) has it open, and the
        operating system frees it when the last one closes, even after a crash."""
        self.path.unlink(missing_ok=True)
        self.unlinked = True

    def __getstate__(self) -> dict:
        if not self.unlinked:
            return {"path": str(self.path), "writable": self.writable}
        # another process (``ds.map(num_proc=...)``) reopens the deleted file through this process's handle
        path = Path(f"/proc/{os.getpid()}/fd/{self._fd}")
        if not path.exists():
            raise TypeError(
                f"{self.path.name} was deleted from disk after fit (it holds the protection noise) and this system "
                "cannot hand it to another process: map with num_proc=1, or keep the work dir "
                "(ProtectTransform(..., keep_work_dir=True) or a work_dir you name)."
            )
        return {"path": str(path), "writable": False}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["writable"])


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
    """Row-addressed arrays of one data set's MEM state; rows in data set order.

    Opened with ``clean=False`` only the protection arrays (noise, triggers, digests) are there:
    what a fitted transform keeps once the clean copy is deleted. A store opened with
    ``noise=False`` has no noise either: what `save_pretrained` writes by default (the noise and a
    published image give back the clean image, so it is as private as the originals).
    """

    def __init__(
        self, directory: str | os.PathLike, layout: StoreLayout, mode: str, clean: bool = True, noise: bool = True
    ):
        self.directory = Path(directory)
        self.layout = layout
        self.has_clean = clean
        self.has_noise = noise
        names = _ARRAYS if clean else PROTECTION_ARRAYS
        self._names = tuple(
            name
            for name in names
            if (noise or name != "noise")
            and (mode == "w+" or name not in _OPTIONAL or (self.directory / f"{name}.npy").exists())
        )
        n, s, k = layout.num_rows, layout.image_size, layout.trigger_length
        shapes = {
            "images": ((n, s, s, 3), np.uint8),
            "noise": ((n, s, s, 3), np.int8),
            "triggers": ((n, k), np.int32),
            "caption_ids": ((layout.num_captions, layout.body_budget), np.int32),
            "caption_lengths": ((layout.num_captions,), np.int32),
            "caption_positions": ((layout.num_captions,), np.int32),  # body tokens before the trigger
            "caption_offsets": ((n + 1,), np.int64),
            "digests": ((n,), np.uint64),
            "published": ((n,), np.uint64),
        }
        for name in self._names:
            path = self.directory / f"{name}.npy"
            shape, dtype = shapes[name]
            if mode == "w+":
                array = RowArray.create(path, shape, dtype)
            else:
                array = RowArray(path, writable=mode != "r")
                if array.shape != shape or array.dtype != dtype:
                    raise ValueError(f"{path} has shape {array.shape} {array.dtype}, expected {shape} {dtype}")
            setattr(self, name, array)

    @classmethod
    def create(cls, directory: str | os.PathLike, layout: StoreLayout) -> SampleStore:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory, layout, "w+")
        _atomic_write(directory / "layout.json", json.dumps(asdict(layout), indent=2).encode())
        return store

    @classmethod
    def open(
        cls, directory: str | os.PathLike, mode: str = "r+", clean: bool = True, noise: bool = True
    ) -> SampleStore:
        """Open a store; ``clean=False`` opens only the protection arrays (the clean ones may be gone),
        ``noise=False`` not the noise either."""
        directory = Path(directory)
        layout_file = directory / "layout.json"
        if not layout_file.exists():
            raise FileNotFoundError(f"{directory} holds no MEM state (no layout.json)")
        layout = StoreLayout(**json.loads(layout_file.read_text()))
        return cls(directory, layout, mode, clean, noise)

    def __len__(self) -> int:
        return self.layout.num_rows

    @property
    def has_published(self) -> bool:
        return "published" in self._names

    def arrays(self) -> dict[str, RowArray]:
        """The open arrays by name."""
        return {name: getattr(self, name) for name in self._names}

    def unlink(self) -> None:
        """Delete every array file from disk and keep reading them through the open files (`RowArray.unlink`)."""
        for array in self.arrays().values():
            array.unlink()

    def clean_files(self) -> list[Path]:
        """Files that hold or derive from the clean copy, plus the sweep's progress records and journals."""
        named = [self.directory / f"{name}.npy" for name in CLEAN_ARRAYS]
        return named + sorted(self.directory.glob("progress-rank*")) + sorted(self.directory.glob("journal-rank*"))

    def sync(self) -> None:
        """Force the arrays to disk (the end of a round), so a machine crash loses at most a round."""
        for name in self._names:
            getattr(self, name).sync()

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
        captions = self.sample_captions(indices, generator)
        return {
            "indices": torch.from_numpy(indices),
            "images": torch.from_numpy(self.images[indices]),
            "noise": torch.from_numpy(self.noise[indices]),
            "triggers": torch.from_numpy(self.triggers[indices]).long(),
            "bodies": torch.from_numpy(self.caption_ids[captions]).long(),
            "lengths": torch.from_numpy(self.caption_lengths[captions]).long(),
            "positions": torch.from_numpy(self.caption_positions[captions]).long(),
        }

    def write(
        self,
        indices: np.ndarray,
        noise: torch.Tensor | np.ndarray | None = None,
        triggers: torch.Tensor | np.ndarray | None = None,
    ) -> None:
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
        payload = {
            "indices": np.asarray(indices, dtype=np.int64),
            "record": np.frombuffer(json.dumps(record).encode(), np.uint8),
        }
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
            self.write(
                saved["indices"],
                saved["noise"] if "noise" in saved else None,
                saved["triggers"] if "triggers" in saved else None,
            )
            record = json.loads(saved["record"].tobytes().decode())
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
