"""release_pages lets the kernel reclaim read pages of a memory-mapped data set, never data."""

import os
import platform
import sys

import datasets
import pytest

from hf_unlearnable import memory


def file_backed_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return 0.0


def linux_with_pageout() -> bool:
    release = platform.release().split(".")
    return sys.platform == "linux" and tuple(int(part) for part in release[:2] if part.isdigit()) >= (5, 4)


@pytest.mark.skipif(not linux_with_pageout(), reason="reads /proc/self/status and needs MADV_PAGEOUT (Linux >= 5.4)")
def test_release_pages_keeps_data_and_drops_resident_pages(tmp_path):
    payload = [os.urandom(20_000) for _ in range(3000)]  # about 60 MB on disk
    datasets.Dataset.from_dict({"blob": payload}).save_to_disk(str(tmp_path / "ds"))
    on_disk = datasets.load_from_disk(str(tmp_path / "ds"))
    for start in range(0, len(on_disk), 500):
        assert on_disk[start : start + 500]["blob"] == payload[start : start + 500]
    before = file_backed_mib()
    memory.release_pages(on_disk)
    assert memory._libc is not None, "MADV_PAGEOUT should be available on Linux >= 5.4"
    assert file_backed_mib() < before - 30
    assert on_disk[2999]["blob"] == payload[2999] and on_disk[0]["blob"] == payload[0]  # read back from the file


def test_in_memory_data_is_left_alone():
    ds = datasets.Dataset.from_dict({"x": list(range(1000))})
    memory.release_pages(ds)
    assert ds["x"][:] == list(range(1000))
