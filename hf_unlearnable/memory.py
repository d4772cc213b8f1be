"""Keep resident memory flat while streaming through a memory-mapped `datasets` table.

`datasets` memory-maps its Arrow files; every page a pass reads stays resident in the process
(file-backed RSS) until the kernel needs it back, so one pass over a 20,000-row set grows RSS by
the size of the set. `release_pages` tells the kernel those pages may go (MADV_PAGEOUT): the data
stays in the file and is read again on the next access; memory that is not a file mapping is left
as it is. A no-op where madvise or MADV_PAGEOUT (Linux >= 5.4) is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import datasets

logger = logging.getLogger(__name__)

_MADV_PAGEOUT = 21
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _libc = None
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_pages(ds: datasets.Dataset) -> None:
    """Let the kernel reclaim the pages of ``ds``'s memory-mapped Arrow data that this process touched."""
    global _libc
    if _libc is None or not isinstance(getattr(ds, "data", None), datasets.table.MemoryMappedTable):
        return
    for column in ds.data.table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is None or buffer.size == 0:
                    continue
                start = buffer.address // _PAGE * _PAGE
                if _libc.madvise(start, buffer.address + buffer.size - start, _MADV_PAGEOUT) != 0:
                    logger.debug("madvise(MADV_PAGEOUT) failed (errno %d); not releasing pages", ctypes.get_errno())
                    _libc = None
                    return
