"""The library's work dirs in the `datasets` cache: what `hf-unlearnable cache list` shows and
`hf-unlearnable cache clean` deletes. Only folders with the library's marker count."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .workdir import (
    CHECKPOINT_DIR,
    STATE_DIR,
    WorkDir,
    cache_root,
    folder_size,
    human_size,
    marker_of,
    remove_tree,
    unless_in_use,
)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _method_of(folder: Path, identity: dict) -> str | None:
    """The method a work dir's run uses, as `MEMConfig.method_name` names it: from its identity when
    recorded there, else from what its rounds recorded (their stages, the trigger length, whether any
    image noise was written); None before the first round ends."""
    if identity.get("method"):
        return str(identity["method"])
    stages = {entry.get("stage") for entry in _read_json(folder / CHECKPOINT_DIR / "state.json").get("history", [])}
    trigger_length = _read_json(folder / STATE_DIR / "layout.json").get("trigger_length")
    if stages & {"pixels", "triggers"}:
        return "layered" if trigger_length else "EM"
    if "mem" not in stages:
        return None
    if not trigger_length:
        return "EM"
    try:  # every round's sweep moves every row's noise; still zero after a round: the trigger-only baseline
        noise = np.load(folder / STATE_DIR / "noise.npy", mmap_mode="r")
        moved = bool(np.any(noise[:16]))
    except (OSError, ValueError):
        moved = True
    return f"MEM-{trigger_length}" if moved else "trigger only"


def list_work_dirs(root: str | os.PathLike | None = None) -> list[dict]:
    """The library's work dirs under ``root`` (default: `cache_root`): path, bytes, rows, created
    (seconds since the epoch), finished, whether a clean copy of the data is still there, and what
    tells runs apart: the data set (its name where recorded, else its `datasets` fingerprint) and
    the method (None before the first round ends)."""
    root = Path(root) if root is not None else cache_root()
    found = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        marker = marker_of(folder)
        if marker is None or marker.get("kind") != "work_dir":
            continue
        identity = WorkDir(folder, default=True).read_identity()
        with unless_in_use(folder) as free:
            in_use = not free
        found.append(
            {
                "path": str(folder),
                "bytes": folder_size(folder),
                "rows": identity.get("rows"),
                "created": identity.get("created", marker.get("created")),
                "finished": bool(identity.get("finished")),
                "clean_copy": (folder / STATE_DIR / "images.npy").exists(),
                "library_version": identity.get("library_version"),
                "dataset": identity.get("dataset") or identity.get("dataset_fingerprint"),
                "method": _method_of(folder, identity),
                "in_use": in_use,
            }
        )
    return found


def clean_work_dirs(root: str | os.PathLike | None = None, entries: list[dict] | None = None) -> list[dict]:
    """Delete ``entries`` (default: every work dir `list_work_dirs` shows under ``root``) but those a
    running run holds (it would crash, or write into a folder that is gone); returns the deleted ones.
    Pass the entries a user was shown, so that a work dir created since is not deleted unseen."""
    removed = []
    for entry in list_work_dirs(root) if entries is None else entries:
        with unless_in_use(Path(entry["path"])) as free:
            if free:  # deleted while its lock is held: no run can start in it meanwhile
                remove_tree(Path(entry["path"]), "a work dir in the cache")
                removed.append(entry)
    return removed


def format_work_dirs(entries: list[dict], root: str | os.PathLike) -> str:
    """`list_work_dirs` as a table for the CLI: one line per work dir."""
    lines = [f"{len(entries)} work dir(s) under {root}, {human_size(sum(e['bytes'] for e in entries))} in all"]
    for entry in entries:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created"])) if entry["created"] else "?"
        state = "finished" if entry["finished"] else "unfinished"
        clean = "clean copy kept" if entry["clean_copy"] else "no clean copy"
        if entry.get("in_use"):
            state = "IN USE by a running run (not deleted by clean), " + state
        lines.append(
            f"  {entry['path']}  created {created}  data set {entry.get('dataset') or '?'}, {entry['rows']} rows  "
            f"{entry.get('method') or 'no round done'}  {human_size(entry['bytes'])}  {state}, {clean}"
        )
    return "\n".join(lines)
