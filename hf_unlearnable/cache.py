"""The library's work dirs in the `datasets` cache: what `hf-unlearnable cache list` shows and
`hf-unlearnable cache clean` deletes. Only folders with the library's marker count."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .workdir import STATE_DIR, WorkDir, cache_root, folder_size, human_size, marker_of, remove_tree

def list_work_dirs(root: str | os.PathLike | None = None) -> list[dict]:
    """The library's work dirs under ``root`` (default: `cache_root`): path, bytes, rows, created
    (seconds since the epoch), finished, and whether a clean copy of the data is still there."""
    root = Path(root) if root is not None else cache_root()
    found = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        marker = marker_of(folder)
        if marker is None or marker.get("kind") != "work_dir":
            continue
        identity = WorkDir(folder, default=True).read_identity()
        found.append(
            {
                "path": str(folder),
                "bytes": folder_size(folder),
                "rows": identity.get("rows"),
                "created": identity.get("created", marker.get("created")),
                "finished": bool(identity.get("finished")),
                "clean_copy": (folder / STATE_DIR / "images.npy").exists(),
                "library_version": identity.get("library_version"),
            }
        )
    return found


def clean_work_dirs(root: str | os.PathLike | None = None) -> list[dict]:
    """Delete every work dir `list_work_dirs` shows; returns what was deleted."""
    removed = list_work_dirs(root)
    for entry in removed:
        remove_tree(Path(entry["path"]), "a work dir in the cache")
    return removed


def format_work_dirs(entries: list[dict], root: str | os.PathLike) -> str:
    """`list_work_dirs` as a table for the CLI."""
    lines = [f"{len(entries)} work dir(s) under {root}, {human_size(sum(e['bytes'] for e in entries))} in all"]
    for entry in entries:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created"])) if entry["created"] else "?"
        state = "finished" if entry["finished"] else "unfinished"
        clean = "clean copy kept" if entry["clean_copy"] else "no clean copy"
        lines.append(f"  {entry['path']}  {human_size(entry['bytes'])}  {entry['rows']} rows  {created}  {state}, {clean}")
    return "\n".join(lines)
