"""Speed and memory of the retrieval metric at MS-COCO 5k test size.

    python benchmarks/retrieval_metric_speed.py [--repeats 3] [--captions 25000] [--images 5000] [--dim 512]

Prints, for 25,000 captions x 5,000 images (5 captions per image):

1. `retrieval_metrics` on a precomputed float32 similarity matrix (numpy and torch input):
   seconds (best and median of the repeats) and the peak RSS growth over the matrix itself.
2. The `evaluate` module (`load_retrieval_metric()`) on COCO-5k-sized embeddings
   (25,000 x 512 text, 5,000 x 512 images): `compute(...)` in one call and an `add_batch` loop
   (batches of 1,000), seconds and peak RSS.

Each part runs in its own subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), out


def part_ranking(args) -> dict:
    import numpy as np
    import torch

    from hf_unlearnable.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(args.images), args.captions // args.images)
    sim = rng.standard_normal((len(index), args.images), dtype=np.float32)
    before = _peak_rss_mib()
    best, median, out = _timed(lambda: retrieval_metrics(sim, index), args.repeats)
    growth_np = _peak_rss_mib() - before
    sim_t = torch.from_numpy(sim)
    best_t, median_t, _ = _timed(lambda: retrieval_metrics(sim_t, index), args.repeats)
    return {
        "shape": list(sim.shape),
        "matrix_mib": sim.nbytes / 2**20,
        "numpy_best_s": best,
        "numpy_median_s": median,
        "torch_best_s": best_t,
        "torch_median_s": median_t,
        "peak_rss_before_call_mib": before,
        "peak_rss_growth_during_calls_mib": growth_np,
        "t2i_r10": out["t2i_r10"],
    }


def part_module(args) -> dict:
    import numpy as np

    from hf_unlearnable.metrics import load_retrieval_metric

    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(args.images), args.captions // args.images)
    text = rng.standard_normal((len(index), args.dim), dtype=np.float32)
    images = rng.standard_normal((args.images, args.dim), dtype=np.float32)
    start = time.perf_counter()
    metric = load_retrieval_metric(keep_in_memory=True)
    load_s = time.perf_counter() - start
    before = _peak_rss_mib()
    best, median, out = _timed(
        lambda: metric.compute(predictions=text, references=index, image_embeds=images), args.repeats
    )

    def batched():
        for s in range(0, len(index), 1000):
            metric.add_batch(predictions=text[s : s + 1000], references=index[s : s + 1000])
        return metric.compute(image_embeds=images)

    best_b, median_b, out_b = _timed(batched, args.repeats)
    assert out_b == out
    return {
        "text": list(text.shape),
        "images": list(images.shape),
        "load_s": load_s,
        "compute_best_s": best,
        "compute_median_s": median,
        "add_batch_loop_best_s": best_b,
        "add_batch_loop_median_s": median_b,
        "peak_rss_before_compute_mib": before,
        "peak_rss_mib": _peak_rss_mib(),
        "t2i_r10": out["t2i_r10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--captions", type=int, default=25_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--part", choices=["ranking", "module"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:
        result = (part_ranking if args.part == "ranking" else part_module)(args)
        print(json.dumps(result))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    passthrough = [
        f"--repeats={args.repeats}",
        f"--captions={args.captions}",
        f"--images={args.images}",
        f"--dim={args.dim}",
    ]
    for part in ("ranking", "module"):
        proc = subprocess.run(
            [sys.executable, __file__, f"--part={part}", *passthrough], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"part {part} failed")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if part == "ranking":
            print(
                f"retrieval_metrics, similarity {r['shape'][0]} x {r['shape'][1]} float32 ({r['matrix_mib']:.0f} MiB):\n"
                f"  numpy input: best {r['numpy_best_s']:.3f} s, median {r['numpy_median_s']:.3f} s\n"
                f"  torch input: best {r['torch_best_s']:.3f} s, median {r['torch_median_s']:.3f} s\n"
                f"  peak RSS {r['peak_rss_before_call_mib']:.0f} MiB with the matrix, "
                f"+{r['peak_rss_growth_during_calls_mib']:.0f} MiB during the calls\n"
                f"  (random scores: t2i R@10 = {r['t2i_r10']:.3f}, chance {100 * 10 / r['shape'][1]:.3f})"
            )
        else:
            print(
                f"evaluate module, text {r['text'][0]} x {r['text'][1]}, images {r['images'][0]} x {r['images'][1]}:\n"
                f"  evaluate.load: {r['load_s']:.2f} s\n"
                f"  compute(predictions=..., references=..., image_embeds=...): best {r['compute_best_s']:.2f} s, "
                f"median {r['compute_median_s']:.2f} s\n"
                f"  add_batch x{-(-r['text'][0] // 1000)} + compute(image_embeds=...): best {r['add_batch_loop_best_s']:.2f} s, "
                f"median {r['add_batch_loop_median_s']:.2f} s\n"
                f"  peak RSS {r['peak_rss_before_compute_mib']:.0f} MiB before compute, {r['peak_rss_mib']:.0f} MiB overall"
            )


if __name__ == "__main__":
    main()
