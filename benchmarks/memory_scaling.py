"""Peak memory of protecting 1,000 vs 20,000 rows at 64 px: it must not grow with the rows.

Each size runs in a fresh process: the data set is generated and saved to disk first (in its own
process), then a second process loads it from disk, protects it (one short MEM round: every phase
runs: ingest, surrogate steps, HotFlip, PGD, writing the output Arrow file) and saves the result.
Reported: that process's peak resident set size (VmHWM) when `protect` returns, the sampled peaks
of its anonymous and file-backed parts, and VmHWM after `save_to_disk`.

    python benchmarks/memory_scaling.py                  # 1,000 and 20,000 rows (a few minutes)
    python benchmarks/memory_scaling.py --rows 200 2000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

GENERATE = textwrap.dedent(
    """
    import sys, datasets
    from hf_unlearnable.testing import synthetic_captions
    datasets.disable_progress_bars()
    synthetic_captions(int(sys.argv[1]), image_size=64, seed=0).save_to_disk(sys.argv[2])
    """
)

PROTECT = textwrap.dedent(
    """
    import json, sys, threading, time, datasets, torch

    def status():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "RssAnon", "RssFile")}

    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    def sample():
        while True:
            now = status()
            for key in peaks:
                peaks[key] = max(peaks[key], now[key])
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    from hf_unlearnable import MEMConfig, ProtectTransform
    from hf_unlearnable.testing import tiny_clip
    datasets.disable_progress_bars()
    torch.set_num_threads(2)
    started = time.perf_counter()
    ds = datasets.load_from_disk(sys.argv[1])
    model, processor = tiny_clip(image_size=64, seed=0)
    config = MEMConfig(method="mem", eot_transforms=(), max_rounds=1, surrogate_steps=10, pgd_steps=1, trigger_rounds=1, hotflip_candidates=4, batch_size=32)
    transform = ProtectTransform(model, processor, config, work_dir=sys.argv[3], progress=False)
    out = transform.protect(ds)
    protect_peak, protect_peaks = status()["VmHWM"], dict(peaks)
    out.save_to_disk(sys.argv[2])
    print(json.dumps({"rows": len(out), "peak_rss_mib": protect_peak, "peak_anon_mib": protect_peaks["RssAnon"],
                      "peak_file_mib": protect_peaks["RssFile"], "peak_with_save_mib": status()["VmHWM"],
                      "seconds": time.perf_counter() - started}))
    """
)


def measure(rows: int, folder: str) -> dict:
    data, output, work = (os.path.join(folder, f"{name}-{rows}") for name in ("data", "out", "work"))
    subprocess.run([sys.executable, "-c", GENERATE, str(rows), data], check=True)
    result = subprocess.run(
        [sys.executable, "-c", PROTECT, data, output, work], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs=2, default=[1000, 20000])
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_unlearnable-memory-") as folder:
        small, large = (measure(rows, folder) for rows in arguments.rows)
    growth = (large["peak_rss_mib"] - small["peak_rss_mib"]) / small["peak_rss_mib"]
    anon_growth = (large["peak_anon_mib"] - small["peak_anon_mib"]) / small["peak_anon_mib"]
    print(
        "| rows | peak RSS of protect (VmHWM, MiB) | of which anonymous (MiB) | file-backed (MiB) "
        "| peak RSS incl. save_to_disk (MiB) | seconds |"
    )
    print("|---|---|---|---|---|---|")
    for result in (small, large):
        print(
            f"| {result['rows']:,} | {result['peak_rss_mib']:.0f} | {result['peak_anon_mib']:.0f} "
            f"| {result['peak_file_mib']:.0f} | {result['peak_with_save_mib']:.0f} | {result['seconds']:.0f} |"
        )
    print(
        f"for {large['rows'] / small['rows']:.0f}x the rows: peak RSS of protect {100 * growth:+.1f}%, anonymous "
        f"{100 * anon_growth:+.1f}% (requirement: under 20%); save_to_disk afterwards reads the output's memory-mapped "
        f"Arrow file (datasets' own pass); {os.cpu_count()} CPU cores, {time.perf_counter() - started:.0f} s in all"
    )
    return 0 if growth < 0.20 else 1


if __name__ == "__main__":
    sys.exit(main())
