"""Work dirs: where `fit` keeps its state, when it is reused, and what is deleted afterwards.

A work dir holds ``identity.json`` (what was protected, by which code), ``state/`` (a
`SampleStore`: the clean copy of every row plus noise, triggers and row digests) and
``checkpoint/`` (round checkpoints of the surrogate). Its identity is the data set's fingerprint,
the transform's fingerprint, the library version and `ALGORITHM_VERSION`: a run with the same
identity resumes or reuses it; another is refused. After a successful `fit` a *default* work dir
(in the `datasets` cache) is deleted whole, clean copy and noise (which with a published image
gives back the clean image), unless ``keep_work_dir=True``; a work dir the user named is the
user's and is kept, with a ``KEEP_PRIVATE.txt`` notice. Every folder the library creates carries a
marker naming its kind; the library writes only into folders of the right kind (`check_kind`) and
deletes only marked folders (`remove_tree`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from accelerate import Accelerator
from tqdm.auto import tqdm

from .captions import CaptionCodec, TriggerVocabulary
from .checks import caption_is_list, row_captions
from .images import prepare_image, undecoded
from .memory import release_pages
from .rows import row_digest
from .store import CLEAN_ARRAYS, RowArray, SampleStore, StoreLayout
from .version import ALGORITHM_VERSION, __version__

logger = logging.getLogger(__name__)

MARKER_FILE = ".hf_unlearnable"
LOCK_FILE = ".hf_unlearnable.lock"
IDENTITY_FILE = "identity.json"
PRIVATE_NOTICE = "KEEP_PRIVATE.txt"
STATE_DIR = "state"
CHECKPOINT_DIR = "checkpoint"
_READ_BATCH = 256
_COPY_ROWS = 1024


# ---------------------------------------------------------------------------------------- markers
def mark(folder: Path, kind: str) -> None:
    """Create ``folder`` (if needed) and mark it as made by this library."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER_FILE
    if not marker.exists():
        marker.write_text(json.dumps({"kind": kind, "created": time.time(), "library_version": __version__}))


def marker_of(folder: Path) -> dict | None:
    """The marker of a library-made folder, or None."""
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


#: What each kind of marked folder is, in words for error messages.
FOLDER_KINDS = {
    "work_dir": "a work dir",
    "protector": "a saved ProtectTransform (save_pretrained)",
    "protector_state": "the fitted state of a saved ProtectTransform",
    "state": "the state folder inside a work dir",
    "checkpoint": "the checkpoint folder inside a work dir",
}


def check_kind(folder: Path, kind: str, argument: str) -> None:
    """Refuse to use ``folder`` (named by ``argument``) as a folder of ``kind`` when the library made
    it as another kind (a saved protector given as a work dir, say); a work dir must also not be a
    non-empty folder the library did not make. Nothing is written before this check."""
    folder = Path(folder)
    if not folder.exists():
        return
    marker = marker_of(folder)
    if marker is None:
        if kind == "work_dir" and any(folder.iterdir()):
            raise ValueError(
                f"{argument} {folder} is not empty and hf_unlearnable did not create it: a work dir is written and "
                "deleted by the library, so it must be a new or empty folder, or one an earlier run created."
            )
        return
    found = marker.get("kind")
    if found != kind:
        raise ValueError(
            f"{argument} {folder} is {FOLDER_KINDS.get(found, repr(found))} made by hf_unlearnable, not "
            f"{FOLDER_KINDS[kind]}; nothing was written to it. Choose another folder."
        )


def remove_tree(folder: Path, purpose: str) -> None:
    """Delete ``folder`` only if this library made it (it has the marker); refuse otherwise."""
    folder = Path(folder)
    if not folder.exists():
        return
    if marker_of(folder) is None:
        raise ValueError(
            f"Refusing to delete {folder} ({purpose}): it has no {MARKER_FILE} marker, so hf_unlearnable did not "
            "create it. Move or delete it yourself, or choose another folder."
        )
    shutil.rmtree(folder)


def copy_protection_state(store: SampleStore, target: Path, include_noise: bool = False) -> None:
    """Write the protection state of ``store`` (layout, triggers, row digests; the noise only with
    ``include_noise``) into ``target``, replacing an earlier copy only if the library made it. Read
    from the open arrays, so a state whose files are already deleted from disk copies too."""
    if target.resolve() == store.directory.resolve():
        return
    remove_tree(target, "the fitted state of an earlier save_pretrained")
    mark(target, "protector_state")
    (target / "layout.json").write_text(json.dumps(dataclasses.asdict(store.layout), indent=2))
    names = (
        ["triggers", "digests"] + (["published"] if store.has_published else []) + (["noise"] if include_noise else [])
    )
    for name in names:
        source = getattr(store, name)
        copy = RowArray.create(target / f"{name}.npy", source.shape, source.dtype)
        for start in range(0, len(source), _COPY_ROWS):
            copy[start : start + _COPY_ROWS] = source[start : start + _COPY_ROWS]
        copy.close()
    if include_noise:
        write_private_notice(target, "the noise of every row it was fitted on (noise.npy)")


def write_private_notice(folder: Path, what: str) -> None:
    """A plain-words notice in ``folder`` that it must stay as private as the original data."""
    (folder / PRIVATE_NOTICE).write_text(
        f"This folder holds {what}, written by hf_unlearnable.\n\n"
        "Keep it as private as your original, unprotected data. The noise and a published protected image\n"
        "give back the clean image exactly; a clean copy is the clean data. Do not upload, share or publish\n"
        "this folder, and delete it when you no longer need it.\n"
    )


def folder_size(folder: Path) -> int:
    """Bytes used by the files under ``folder`` (sparse files count their allocated blocks)."""
    total = 0
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_blocks * 512
    return total


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


# ---------------------------------------------------------------------------------------- identity
def cache_root() -> Path:
    """The library's folder in the `datasets` cache, parent of every default work dir."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_unlearnable"


def work_dir_identity(ds: datasets.Dataset, transform_fingerprint: str) -> dict:
    """What a work dir's state was computed from: data, transform, and the code that computed it."""
    return {
        "format": 2,
        "dataset_fingerprint": ds._fingerprint,
        "rows": len(ds),
        "transform": transform_fingerprint,
        "library_version": __version__,
        "algorithm_version": ALGORITHM_VERSION,
    }


class WorkDir:
    """One work dir: its identity, state store and checkpoint folder."""

    def __init__(self, root: str | os.PathLike, default: bool):
        self.root = Path(root)
        self.default = default  # in the datasets cache, chosen by the library (not named by the user)
        self.state = self.root / STATE_DIR
        self.checkpoint = self.root / CHECKPOINT_DIR
        self.identity_file = self.root / IDENTITY_FILE

    @classmethod
    def choose(cls, work_dir: str | os.PathLike | None, identity: dict, accelerator: Accelerator) -> WorkDir:
        """The user's work dir, or one in the cache named after the identity (main process decides)."""
        if work_dir is not None:
            return cls(work_dir, default=False)
        key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=10).hexdigest()
        chosen = [str(cache_root() / f"mem-{key}")]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(chosen, from_process=0)
        return cls(chosen[0], default=True)

    @contextlib.contextmanager
    def lock(self, accelerator: Accelerator) -> Iterator[None]:
        """Hold an exclusive lock on the work dir while a run uses it (the main process holds it for
        all the run's processes). A second run on the same folder, such as the same script started
        twice on the same data and settings, would write into the same noise and journal files and
        silently corrupt both outputs: it is refused instead, naming the folder."""
        handle, error = None, None
        if accelerator.is_main_process:
            try:
                check_kind(self.root, "work_dir", "work_dir")
            except ValueError as refused:
                error = str(refused)
        if accelerator.is_main_process and error is None:
            if marker_of(self.root) is None:  # new, or empty (check_kind)
                mark(self.root, "work_dir")
                write_private_notice(self.root, "a clean copy of a data set being protected and its noise")
            handle = open(self.root / LOCK_FILE, "a+")
            try:
                _try_lock(handle)
            except OSError:
                handle.close()
                handle = None
                error = (
                    f"work_dir {self.root} is in use by another run right now (the same data and settings, or "
                    "the same work_dir): wait for it to finish, then rerun to reuse its result, or pass another "
                    "work_dir."
                )
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            shared = [error]
            broadcast_object_list(shared, from_process=0)
            error = shared[0]
        if error is not None:
            raise ValueError(error)
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # closing the file releases the lock

    def read_identity(self) -> dict:
        return json.loads(self.identity_file.read_text()) if self.identity_file.exists() else {}

    def _write_identity(self, values: dict) -> None:
        temporary = self.identity_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(values, indent=2))
        os.replace(temporary, self.identity_file)

    @property
    def finished(self) -> bool:
        return bool(self.read_identity().get("finished"))

    def open_or_ingest(self, identity: dict, accelerator: Accelerator, ingest) -> SampleStore:
        """Reuse the state of an earlier (possibly interrupted) run with the same identity, else call
        ``ingest(state_dir)`` on the main process to create it. A finished run opens without its clean copy."""
        processes = accelerator.num_processes
        saved = self.read_identity()
        if saved:
            if {k: saved.get(k) for k in identity} != identity:
                raise ValueError(
                    f"work_dir {self.root} holds the state of another data set or config, or of another version "
                    f"of the algorithm (saved {saved.get('rows')} rows, data set fingerprint "
                    f"{saved.get('dataset_fingerprint')}, hf_unlearnable {saved.get('library_version')} algorithm "
                    f"{saved.get('algorithm_version')}; now hf_unlearnable {__version__} algorithm {ALGORITHM_VERSION}). "
                    "Use a new work_dir for this run, or delete that folder to start over."
                )
            if (
                saved.get("processes") != processes
                and (self.checkpoint / "state.json").exists()
                and not saved.get("finished")
            ):
                raise ValueError(
                    f"work_dir {self.root} was started with {saved.get('processes')} processes; resume it with "
                    f"the same number (now {processes}) or use a new work_dir."
                )
            if saved.get("finished"):
                accelerator.wait_for_everyone()
                return SampleStore.open(self.state, mode="r", clean=False)
            if saved.get("ingested") and all((self.state / f"{name}.npy").exists() for name in CLEAN_ARRAYS):
                accelerator.wait_for_everyone()
                return SampleStore.open(self.state)
        store = None
        if accelerator.is_main_process:
            if marker_of(self.root) is None:  # new, or empty (check_kind)
                mark(self.root, "work_dir")
                write_private_notice(self.root, "a clean copy of a data set being protected and its noise")
            remove_tree(self.checkpoint, "an incomplete run's checkpoints in the work_dir")
            remove_tree(self.state, "an incomplete run's state in the work_dir")
            mark(self.checkpoint, "checkpoint")
            mark(self.state, "state")
            try:
                store = ingest(self.state)
            except BaseException:  # a bad row: no partial clean copy stays behind (nothing resumes an ingest)
                store = None
                remove_tree(self.root if self.default else self.state, "the partial state of a failed ingest")
                raise
            self._write_identity({**identity, "processes": processes, "ingested": True, "created": time.time()})
        accelerator.wait_for_everyone()
        return store if store is not None else SampleStore.open(self.state)

    def mark_finished(self, accelerator: Accelerator) -> None:
        """Record that Algorithm 1 ran to its end here: a rerun reuses the state without training."""
        if accelerator.is_main_process:
            self._write_identity({**self.read_identity(), "finished": True})
        accelerator.wait_for_everyone()

    def release(self, keep: bool, store: SampleStore, accelerator: Accelerator) -> None:
        """After a successful fit, on every process. A default work dir (unless ``keep``) is deleted
        whole: its clean copy, and the noise, which with a published image gives back the clean
        image. ``store`` (this process's open protection arrays) keeps reading them through its open
        files until it is closed, and the system frees them then, even after a crash. A work dir the
        user named, or kept, stays as it is; its size and its notice are logged."""
        accelerator.wait_for_everyone()  # every process has opened its store
        size = folder_size(self.root) if accelerator.is_main_process else 0
        if not self.default or keep:
            if accelerator.is_main_process:
                why = "keep_work_dir=True" if self.default else "a work_dir you chose is yours to delete"
                logger.warning(
                    "The work dir %s keeps a clean copy of the protected data set and its noise (%s in all; %s): keep "
                    "it as private as the originals (%s) and delete it when done (`hf-unlearnable cache clean` for "
                    "work dirs in the datasets cache).",
                    self.root,
                    human_size(size),
                    why,
                    PRIVATE_NOTICE,
                )
            return
        store.unlink()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            remove_tree(self.root, "a finished run's work dir")
            logger.warning(
                "Deleted the work dir %s (%s): its clean copy of the data and the noise are gone from disk. This "
                "transform still maps the rows it was fitted on until it is garbage-collected or the process ends; "
                "save_pretrained() keeps the surrogate, triggers and row digests, not the noise. A rerun computes "
                "again; keep_work_dir=True keeps the work dir (and its clean copy) for reuse.",
                self.root,
                human_size(size),
            )
        accelerator.wait_for_everyone()


@contextlib.contextmanager
def unless_in_use(folder: Path) -> Iterator[bool]:
    """Take a work dir's lock for the block if no run holds it; yields whether it was free (a run
    that holds it is using the folder, so it must not be deleted under it)."""
    lock = Path(folder) / LOCK_FILE
    if not lock.exists():
        yield True
        return
    with open(lock, "a+") as handle:
        try:
            _try_lock(handle)
        except OSError:
            yield False
            return
        yield True


def _try_lock(handle) -> None:
    """An exclusive, non-blocking lock on an open file; OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not guarded there
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---------------------------------------------------------------------------------------- ingest
def ingest(
    ds: datasets.Dataset,
    image_column: str,
    caption_column: str,
    directory: Path,
    *,
    codec: CaptionCodec,
    image_size: int,
    vocabulary: TriggerVocabulary | None,
    seed: int,
    progress: bool,
) -> SampleStore:
    """Decode, resize and tokenise every row into a fresh `SampleStore` in ``directory``, with each
    row's digest and its random initial trigger; noise starts at zero."""
    caption_lists = caption_is_list(ds.features[caption_column], caption_column)
    source = undecoded(ds.select_columns([image_column, caption_column]), image_column)
    captions_column = source.select_columns([caption_column]).to_dict()[caption_column]
    num_captions = sum(len(value or []) for value in captions_column) if caption_lists else len(source)
    layout = StoreLayout(
        num_rows=len(source),
        num_captions=num_captions,
        image_size=image_size,
        trigger_length=codec.trigger_length,
        body_budget=codec.body_budget,
        caption_lists=caption_lists,
    )
    store = SampleStore.create(directory, layout)
    caption_row = 0
    store.caption_offsets[0] = 0
    bar = tqdm(total=len(source), desc="Reading rows", disable=not progress, leave=False)
    for start in range(0, len(source), _READ_BATCH):
        chunk = source[start : start + _READ_BATCH]
        for offset, (value, caption_value) in enumerate(zip(chunk[image_column], chunk[caption_column])):
            row = start + offset
            image = prepare_image(value, image_size, row)
            texts = row_captions(caption_value, row, caption_column)
            ids, lengths = codec.encode_bodies(texts)
            store.images[row] = image
            store.caption_ids[caption_row : caption_row + len(texts)] = ids
            store.caption_lengths[caption_row : caption_row + len(texts)] = lengths
            store.caption_positions[caption_row : caption_row + len(texts)] = codec.encode_positions(texts)
            caption_row += len(texts)
            store.caption_offsets[row + 1] = caption_row
            store.digests[row] = row_digest(image, texts)
        bar.update(len(chunk[image_column]))
        release_pages(source)  # read pages of the input may go: RSS stays flat over the pass
    bar.close()
    if vocabulary is not None:
        store.triggers[:] = initial_triggers(vocabulary, len(source), codec.trigger_length, seed)
    return store


def initial_triggers(vocabulary: TriggerVocabulary, rows: int, trigger_length: int, seed: int) -> np.ndarray:
    """The random triggers (rows, trigger_length) a run starts from, the same for every run with ``seed``."""
    return vocabulary.sample((rows, trigger_length), np.random.default_rng([seed, 12345]))
