"""Two real processes (torchrun, gloo on CPU): sharded sweeps, DDP surrogate, one output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import datasets
import numpy as np

from hf_unlearnable.images import decode_png, prepare_image
from hf_unlearnable.testing import clip_tokenizer, synthetic_captions

ROWS = 36  # 5 batches of 7-8: rank 0 sweeps 3, rank 1 sweeps 2 (uneven shards)

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import datasets
    import torch.distributed as dist
    from hf_unlearnable import MEMConfig, ProtectTransform
    from hf_unlearnable.testing import tiny_clip
    datasets.disable_progress_bars()
    out_dir = sys.argv[1]
    model, processor = tiny_clip(seed=0)
    ds = datasets.load_from_disk(os.path.join(out_dir, "input"))  # disk-backed: the map output is a shared cache file
    config = MEMConfig(max_rounds=2, surrogate_steps=3, batch_size=8, pgd_steps=2, trigger_rounds=1,
                       hotflip_candidates=4, learning_rate=5e-4)
    work_dir = None if os.environ.get("DEFAULT_WORK_DIR") else os.path.join(out_dir, "work")
    transform = ProtectTransform(model, processor, config, work_dir=work_dir, progress=False)
    protected = transform.protect(ds)
    accelerator = transform.accelerator
    if accelerator.is_main_process:
        protected.save_to_disk(os.path.join(out_dir, "protected"))
    digest = hashlib.sha256(json.dumps(protected["caption"][:]).encode()).hexdigest()
    weights = hashlib.sha256()
    for name, tensor in sorted(transform.surrogate.model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    report = {
        "rank": accelerator.process_index,
        "world": accelerator.num_processes,
        "distributed": dist.is_initialized(),
        "rows": len(protected),
        "captions_sha256": digest,
        "weights_sha256": weights.hexdigest(),
        "history": transform.history,
    }
    with open(os.path.join(out_dir, f"rank{accelerator.process_index}.json"), "w") as handle:
        json.dump(report, handle)
    accelerator.wait_for_everyone()
    """
).replace("ROWS", str(ROWS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_shard_the_work_and_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    source = synthetic_captions(ROWS, seed=0)
    source.add_column("row_id", list(range(ROWS))).save_to_disk(str(tmp_path / "input"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world"] == 2 and r["distributed"] for r in reports)
    assert reports[0]["captions_sha256"] == reports[1]["captions_sha256"]  # every process got the same Dataset
    # DDP kept one surrogate: both processes end with the same trained weights (without the gradient
    # all-reduce each would train on its own batches and the weights would differ)
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    losses = [
        [{k: v for k, v in r.items() if k not in ("seconds", "surrogate_seconds")} for r in report["history"]]
        for report in reports
    ]
    # losses reduced over both processes; the layered default: two pixel rounds, one trigger round
    assert losses[0] == losses[1] and [r["stage"] for r in losses[0]] == ["pixels", "pixels", "triggers"]
    # both processes wrote their share of the sweep
    progress = [json.loads((tmp_path / "work" / "state" / f"progress-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [p["done"] for p in progress] == [3, 2] and sum(p["rows"] for p in progress) == ROWS

    out = datasets.load_from_disk(str(tmp_path / "protected"))
    clean = synthetic_captions(ROWS, seed=0)
    assert out["row_id"][:] == list(range(ROWS))  # every row exactly once, in order
    tokenizer = clip_tokenizer()
    raw = out.cast_column("image", datasets.Image(decode=False))
    clean_raw = clean.cast_column("image", datasets.Image(decode=False))
    changed = 0
    for row, clean_row, text, clean_text in zip(raw, clean_raw, out["caption"][:], clean["caption"][:]):
        difference = decode_png(row["image"]["bytes"]).astype(int) - prepare_image(clean_row["image"], 32)
        assert np.abs(difference).max() <= 8
        changed += bool(np.abs(difference).max())
        assert (
            text.endswith(clean_text)
            and len(tokenizer(text)["input_ids"]) == len(tokenizer(clean_text)["input_ids"]) + 3
        )
    assert changed == ROWS  # rows of both shards were perturbed


def test_two_processes_with_the_default_work_dir_leave_nothing_behind_and_agree(tmp_path):
    # The default work dir is deleted after fit while both processes still map through their open files.
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    synthetic_captions(ROWS, seed=0).add_column("row_id", list(range(ROWS))).save_to_disk(str(tmp_path / "input"))
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache),
        "DEFAULT_WORK_DIR": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2] and all(r["distributed"] for r in reports)
    assert reports[0]["captions_sha256"] == reports[1]["captions_sha256"]
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    assert not (cache / "hf_unlearnable").exists() or not any((cache / "hf_unlearnable").iterdir())  # no work dir left
    out = datasets.load_from_disk(str(tmp_path / "protected"))
    clean = synthetic_captions(ROWS, seed=0).cast_column("image", datasets.Image(decode=False))
    raw = out.cast_column("image", datasets.Image(decode=False))
    moved = [
        np.abs(decode_png(row["image"]["bytes"]).astype(int) - prepare_image(clean_row["image"], 32)).max()
        for row, clean_row in zip(raw, clean)
    ]
    assert out["row_id"][:] == list(range(ROWS)) and all(0 < value <= 8 for value in moved)
