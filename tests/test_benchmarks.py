"""The benchmarks still run: smoke sizes, real processes, their outputs checked."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)


def test_protection_strength_smoke_run(tmp_path):
    result = run("benchmarks/protection_strength.py", "--smoke", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    for row in ("Chance", "Clean", "Random noise", "EM", "Trigger only", "MEM-3", "MEM-5", "MEM-3, transfer victim"):
        assert f"| {row} |" in table
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "results.json").exists()


def test_protect_speed_tiny_writes_every_figure_and_no_ratio_without_a_reference(tmp_path):
    out = tmp_path / "speed.json"
    result = run(
        "benchmarks/protect_speed.py", "--sizes", "tiny", "--repeats", "1", "--json", str(out), "--peak-tflops", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| tiny | 32 | 16 |" in result.stdout and "peak RSS" in result.stdout and "MFU" in result.stdout
    assert "ratio" not in result.stdout.lower() and "reference" not in result.stdout  # measured, never remembered
    figures = json.loads(out.read_text())
    assert figures["command"].startswith("python benchmarks/protect_speed.py --sizes tiny")
    assert figures["torch"] and figures["device"] and figures["reference"] is None
    tiny = figures["models"]["tiny"]
    for work in ("hotflip", "pgd", "surrogate_step"):
        assert tiny[f"{work}_flops_per_sample"] > 0 and tiny[f"{work}_tflops"] > 0
    assert tiny["hotflip_batch_s"] > 0 and tiny["pgd_batch_s"] > 0 and tiny["surrogate_step_s"] > 0
    assert tiny["matmul_tflops"] == figures["matmul_tflops"]["fp32"] > 0
    assert tiny["mfu_pgd"] == pytest.approx(tiny["pgd_tflops"] / 2)
    assert tiny["mfu_hotflip"] == pytest.approx(tiny["hotflip_tflops"] / 2)
    assert "ratios" not in tiny and "reference" not in tiny


def test_protect_speed_names_a_wrong_reference_and_what_it_expected(tmp_path):
    result = run("benchmarks/protect_speed.py", "--sizes", "tiny", "--reference", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert str(tmp_path / "nowhere") in result.stderr and "no such directory" in result.stderr
    assert "thinwayliu/Multimodal-Unlearnable-Examples" in result.stderr and "src/poison_train.py" in result.stderr
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "poison_train.py").write_text("")
    result = run("benchmarks/protect_speed.py", "--sizes", "tiny", "--reference", str(tmp_path))
    assert result.returncode != 0 and f"--reference {tmp_path}: not a checkout" in result.stderr
    assert "missing src/attacks.py, src/utils.py, pkgs/openai/model.py" in result.stderr


# A stand-in for the MEM authors' checkout: their modules' names and the signatures the benchmark
# calls, around a linear CLIP, so the --reference plumbing (import, alternation, ratios) runs in seconds.
FAKE_REFERENCE = {
    "src/__init__.py": "",
    "pkgs/__init__.py": "",
    "pkgs/openai/__init__.py": "",
    "pkgs/openai/bpe_simple_vocab_16e6.txt.gz": "",
    "pkgs/openai/tokenizer.py": """
class SimpleTokenizer:
    def __init__(self):
        self.encoder = {"<start_of_text>": 49406, "<end_of_text>": 49407}

    def encode(self, text):
        return [1 + len(word) for word in text.split()]
""",
    "pkgs/openai/model.py": """
import torch
from torch import nn


class CLIPOutput:
    def __init__(self, image_embeds, text_embeds):
        self.image_embeds, self.text_embeds = image_embeds, text_embeds


class CLIP(nn.Module):
    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers):
        super().__init__()
        self.visual = nn.Linear(3 * image_resolution**2, embed_dim)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.text_projection = nn.Linear(transformer_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, input_ids, attention_mask, pixel_values):
        image = self.visual(pixel_values.flatten(1))
        text = self.text_projection(self.token_embedding(input_ids).mean(1))
        return CLIPOutput(image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True))
""",
    "src/poison_train.py": """
import torch
import wandb  # as theirs: the benchmark stands one in where it is not installed


def get_loss(umodel, outputs, criterion, options, gather_backdoor_indices):
    logits = umodel.logit_scale.exp() * outputs.image_embeds @ outputs.text_embeds.t()
    target = torch.arange(len(logits))
    loss = (criterion(logits, target) + criterion(logits.t(), target)) / 2
    return loss, loss, torch.tensor(0)


class PerturbationTool:
    def __init__(self, seed, epsilon, num_steps, step_size, lower_limit=None, upper_limit=None,
                 num_trigger_tokens=1, options=None):
        self.epsilon, self.num_steps, self.step_size, self.k = epsilon, num_steps, step_size, num_trigger_tokens
        self.lower_limit, self.upper_limit = lower_limit, upper_limit

    def min_min_attack(self, batch, model, criterion, batch_token, random_noise=None, options=None):
        images = batch["pixel_values"] + random_noise
        for _ in range(self.num_steps):
            images = images.detach().requires_grad_(True)
            ids = batch["input_ids"][torch.randperm(len(images))]
            ids[:, 1:1 + self.k] = batch_token
            loss, _, _ = get_loss(model, model(ids, batch["attention_mask"], images), criterion, options, None)
            loss.backward()
            images = torch.max(torch.min(images - self.step_size * images.grad.sign(), self.upper_limit), self.lower_limit)
        return images, images - batch["pixel_values"]
""",
    "src/attacks.py": """
from sklearn.cluster import KMeans  # as theirs: the benchmark stands one in where it is not installed


def hotflip_attack(averaged_grad, embedding_matrix, increase_loss=False, num_candidates=1, num_trigger_tokens=1):
    scores = averaged_grad.cpu()[:, 1:1 + num_trigger_tokens] @ embedding_matrix.cpu().T
    return (-scores).topk(num_candidates, dim=2).indices.numpy()
""",
    "src/utils.py": """
import torch

from .poison_train import get_loss


def get_best_candidates(model, input_ids, attention_mask, pixel_values, trigger_token_ids, cand_trigger_token_ids,
                        num_trigger_tokens, snli=False, criterion=None, beam_size=1, increase_loss=False, options=None):
    candidates, best = torch.as_tensor(cand_trigger_token_ids), trigger_token_ids.clone()
    for index in range(num_trigger_tokens):
        losses = []
        for column in range(candidates.shape[-1]):
            ids = input_ids.clone()
            ids[:, 1 + index] = candidates[:, index, column]
            with torch.no_grad():
                losses.append(float(get_loss(model, model(ids, attention_mask, pixel_values), criterion, options, None)[0]))
        best[:, index] = candidates[:, index, losses.index(min(losses))]
    return best
""",
}


def test_protect_speed_times_a_reference_checkout_in_alternating_pairs(tmp_path):
    checkout = tmp_path / "Multimodal-Unlearnable-Examples"
    for name, text in FAKE_REFERENCE.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
    out = tmp_path / "speed.json"
    args = ("--sizes", "tiny", "--repeats", "1", "--reference", str(checkout), "--pairs", "3", "--json", str(out))
    result = run("benchmarks/protect_speed.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny, pair 3 of 3: HotFlip" in result.stdout
    for row in ("| 1 |", "| 2 |", "| 3 |", "| median |", "| tiny | reference | fp32 | HotFlip |"):
        assert row in result.stdout
    tiny = json.loads(out.read_text())["models"]["tiny"]
    reference = tiny["reference"]
    assert len(reference["runs"]["hotflip_batch_s"]) == len(tiny["runs"]["pgd_batch_s"]) == 3
    assert reference["hotflip_flops_per_sample"] > 0 and reference["pgd_tflops"] > 0
    for work in ("hotflip", "pgd", "full_schedule"):
        assert len(tiny["ratios"][work]) == 3 and tiny["ratios"][f"{work}_median"] > 0
    assert tiny["ratios"]["pgd"][0] == pytest.approx(
        reference["runs"]["pgd_batch_s"][0] / tiny["runs"]["pgd_batch_s"][0]
    )


def test_memory_scaling_small():
    result = run("benchmarks/memory_scaling.py", "--rows", "40", "80")
    assert "peak RSS" in result.stdout and "| 80 |" in result.stdout, result.stderr[-3000:]


def test_robustness_smoke_run_writes_every_verdict(tmp_path):
    result = run("benchmarks/robustness.py", "--smoke", "--output", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "robustness.md").read_text()
    rows = [
        (copy, victim, defense)
        for victim in ("from scratch", "transfer", "fine-tuned")
        for defense in ("none", "jpeg-75+strip-3")
        for copy in ("MEM-3", "EM", "Trigger only")
    ]
    for copy, victim, defense in rows:
        assert f"| {copy} | {victim} | {defense} |" in table
    assert "| - | - | chance |" in table and "`python benchmarks/robustness.py --smoke" in table
    lines = (tmp_path / "robustness.csv").read_text().splitlines()
    assert len(lines) == 1 + len(rows) and lines[0].startswith("copy,victim,defense,verdict,i2t_r1,")
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert [(v["copy"], v["victim"], v["defense"]) for v in saved["report"]["verdicts"]] == [
        (copy, victim, defense) for copy, victim, defense in rows
    ]
    assert saved["pretrained"]["t2i_r10"] >= 0  # the fine-tuned victim's starting point is recorded
    assert (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_robustness_reuses_clean_victims_only_once_one_of_them_reproduces(tmp_path):
    first = run(
        "benchmarks/robustness.py",
        "--smoke",
        "--methods",
        "mem3",
        "--victims",
        "transfer",
        "--output",
        str(tmp_path / "a"),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    again = [
        "benchmarks/robustness.py",
        "--smoke",
        "--methods",
        "em",
        "--victims",
        "transfer",
        "--defenses",
        "jpeg-75+strip-3,none,strip-1",
        "--clean-from",
        str(tmp_path / "a"),
        "--output",
        str(tmp_path / "b"),
    ]
    second = run(*again)
    assert second.returncode == 0, second.stderr[-3000:]
    before = json.loads((tmp_path / "a" / "robustness.json").read_text())["report"]
    after = json.loads((tmp_path / "b" / "robustness.json").read_text())["report"]
    # jpeg-75+strip-3 is retrained and checked, none reused, strip-1 (not stored) trained.
    assert after["settings"]["reused_clean"] == ["transfer | none"]
    assert [v["defense"] for v in after["verdicts"]] == ["jpeg-75+strip-3", "none", "strip-1"]
    key = "transfer | none | clean"
    assert after["histories"][key] == before["histories"][key]  # the stored history itself, timings included
    scores = lambda history: [{k: v for k, v in epoch.items() if "seconds" not in k} for epoch in history]  # noqa: E731
    key = "transfer | jpeg-75+strip-3 | clean"
    assert scores(after["histories"][key]) == scores(before["histories"][key])  # retrained: the same victim
    assert "not retrained: transfer | none." in (tmp_path / "b" / "robustness.md").read_text()
    # A stored clean victim that the retrained one does not reproduce stops the run.
    before["histories"]["transfer | jpeg-75+strip-3 | clean"][-1]["i2t_r10"] += 1.0
    saved = json.loads((tmp_path / "a" / "robustness.json").read_text())
    (tmp_path / "a" / "robustness.json").write_text(json.dumps({**saved, "report": before}))
    tampered = run(*again[:-1], str(tmp_path / "c"))
    assert tampered.returncode != 0 and "differs from the stored one" in tampered.stderr
    assert not (tmp_path / "c" / "robustness.json").exists()
    other_seed = run(*again[:-1], str(tmp_path / "d"), "--seed", "1")
    assert other_seed.returncode != 0 and "it ran with seed=0, this run with seed=1" in other_seed.stderr


def test_trigger_length_smoke_run_on_a_saved_dataset_has_a_row_per_length(tmp_path):
    """--dataset PATH: any save_to_disk DatasetDict with train/test splits (and its own tokenizer/)."""
    import datasets

    from hf_unlearnable.testing import clip_tokenizer, synthetic_captions

    train = synthetic_captions(60, seed=0)
    data = datasets.DatasetDict(
        {"train": train.add_column("name", [f"n{i}" for i in range(60)]), "test": synthetic_captions(30, seed=7)}
    )
    data.save_to_disk(str(tmp_path / "data"))
    clip_tokenizer().save_pretrained(str(tmp_path / "data" / "tokenizer"))
    output = tmp_path / "out"
    result = run(
        "benchmarks/trigger_length.py",
        "--smoke",
        "--dataset",
        str(tmp_path / "data"),
        "--output",
        str(output),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (output / "trigger_length.md").read_text()
    for copy in ("k=0 (EM)", "k=1", "k=3", "k=5", "k=7"):
        assert f"| {copy} | from scratch | none |" in table and f"| from scratch | none | {copy} |" in table
    assert "| from scratch | none | clean |" in table and "| - | - | chance |" in table
    assert "48 training pairs, 24 clean test images" in table
    assert len((output / "trigger_length.csv").read_text().splitlines()) == 6
    assert json.loads((output / "trigger_length.json").read_text())["arguments"]["lengths"] == "0,1,3,5,7"
    assert (output / "trigger_length.png").read_bytes()[:4] == b"\x89PNG"


def test_ablation_smoke_run_in_parallel_stages_marks_every_target(tmp_path):
    """--jobs 2 runs protect and audit stages as separate processes and merges their parts."""
    result = run(
        "benchmarks/ablation_robust.py",
        "--smoke",
        "--jobs",
        "2",
        "--variants",
        "paper,pos=random+own",
        "--defenses",
        "none,strip-3",
        "--output",
        str(tmp_path),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "ablation.md").read_text()
    assert (
        "| copy | from scratch / none | from scratch / strip-3 | triggers removed (oracle) | T1 | T2 | T3 | T4 |"
        in table
    )
    for variant in ("clean", "paper", "pos=random+own"):
        assert f"| {variant} |" in table
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "paper.scratch.json",
        "pos_random_own.scratch.json",
    ]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["costs"]["pos_random_own"]["config"]["trigger_position"] == "random"
    assert saved["costs"]["pos_random_own"]["config"]["shuffle_captions"] is False
    copies = {v["copy"] for v in saved["verdicts"]}
    assert copies == {"paper", "paper | images only", "pos=random+own", "pos=random+own | images only"}
    assert (
        len((tmp_path / "ablation.csv").read_text().splitlines()) == 1 + 2 * 2 + 2
    )  # 2 defenses per copy + 2 oracles (none only)
    bad = run(
        "benchmarks/ablation_robust.py", "--smoke", "--variants", "paper+sparkle", "--output", str(tmp_path / "x")
    )
    assert bad.returncode != 0 and "unknown lever 'sparkle'" in bad.stderr


def test_pixel_shortcuts_cluster_copy_gives_every_caption_cluster_one_pattern(tmp_path, monkeypatch):
    import argparse

    import datasets
    import numpy as np

    from hf_unlearnable.images import decode_png, prepare_image
    from hf_unlearnable.testing import synthetic_captions

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import pixel_shortcuts

    captions = [
        f"{animal} {verb} near the {place}"
        for animal, place in (("fox", "river"), ("whale", "harbor"))
        for verb in ("running", "sleeping", "eating", "waiting")
    ]
    labels = pixel_shortcuts.cluster_captions(captions, 2, seed=0)
    assert len(set(labels[:4])) == len(set(labels[4:])) == 1 and labels[0] != labels[4]  # the two subjects

    train = synthetic_captions(40, seed=3)
    bases = [prepare_image(value, 32) for value in train["image"]]
    arguments = argparse.Namespace(seed=0, image_size=32)
    for kind in ("cluster-sign", "cluster-block4"):
        copy, levels = pixel_shortcuts.build_copy(f"{kind}=3", train, bases, arguments, None)
        assert levels == 8 and copy["caption"][:] == train["caption"][:]
        labels = pixel_shortcuts.cluster_captions(train["caption"][:], 3, seed=0)
        stored = copy.cast_column("image", datasets.Image(decode=False))["image"][:]
        for row, (value, base) in enumerate(zip(stored, bases)):
            shift = decode_png(value["bytes"]).astype(int) - base
            room = (base >= 8) & (base <= 247)  # no clipping there
            expected = pixel_shortcuts.cluster_pattern(kind, int(labels[row]), 32, 0)
            assert np.array_equal(shift[room], expected[room]) and np.abs(shift).max() <= 8
        if kind == "cluster-block4":  # one sign per 4x4 block, the same on every channel
            assert (expected == expected[:, :, :1]).all() and (expected[:4, :4] == expected[0, 0, 0]).all()

    result = run(
        "benchmarks/pixel_shortcuts.py",
        "--smoke",
        "--variants",
        "em-headroom=4:4,cluster-sign=3",
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "out" / "pixel_shortcuts.md").read_text()
    assert "| em-headroom=4:4 | from scratch | none |" in table and "| cluster-sign=3 | from scratch | none |" in table
    assert json.loads((tmp_path / "out" / "pixel_shortcuts.json").read_text())["levels"] == {
        "em-headroom=4:4": 8,
        "cluster-sign=3": 8,
    }


@pytest.mark.parametrize(
    "script", ["protection_strength", "robustness", "trigger_length", "pixel_shortcuts", "ablation_robust"]
)
def test_each_data_set_gets_its_own_default_output_folder(script, monkeypatch):
    # A run on the icons must not overwrite the recorded synthetic results (and the reverse).
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    synthetic = module.parse_arguments([]).output
    icons = module.parse_arguments(["--dataset", "icons"]).output
    assert synthetic != icons and synthetic.endswith("_synthetic") and icons.endswith("_icons")
    assert module.parse_arguments(["--dataset", "icons", "--output", "elsewhere"]).output == "elsewhere"


def _robustness_run(results, name, finetune_lr, rows):
    """A result folder as robustness.py writes it: its arguments and the audit's report."""
    from hf_unlearnable.audit import ProtectionReport, Verdict

    folder = results / name
    folder.mkdir(parents=True)
    verdicts = [
        Verdict(copy, victim, defense, verdict, protected, clean, 2.0, 1.0, "")
        for copy, victim, defense, verdict, protected, clean in rows
    ]
    report = ProtectionReport(verdicts, {}, {}, {})
    (folder / "robustness.json").write_text(
        json.dumps({"arguments": {"dataset": "icons", "finetune_lr": finetune_lr}, "report": report.to_dict()})
    )


def test_robustness_tables_gather_cells_across_runs_at_one_finetune_rate(tmp_path, capsys):
    tables = importlib.import_module("benchmarks.robustness_tables")
    results = tmp_path / "results"
    _robustness_run(
        results,
        "robustness_icons_a",
        3e-4,
        [
            ("MEM-3", "transfer", "none", "broken", 22.6, 41.8),
            ("MEM-3", "fine-tuned", "none", "broken", 20.6, 34.8),
            ("MEM-3", "transfer", "grayscale", "broken", 21.3, 41.8),
            ("MEM-3", "transfer", "iss-grayscale", "broken", 21.3, 41.8),
        ],
    )
    _robustness_run(
        results,
        "robustness_icons_b",
        3e-5,
        [  # another fine-tuning rate: its fine-tuned rows are left out
            ("MEM-3", "fine-tuned", "none", "broken", 11.7, 12.1),
            ("EM", "transfer", "grayscale", "broken", 42.0, 41.8),
            ("MEM-3", "from scratch", "none", "weakened", 15.6, 38.2),
        ],
    )
    assert tables.main(["--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| none |  |  |  | 15.6 of 38.2 weakened | 22.6 of 41.8 **broken** | 20.6 of 34.8 **broken** |" in out
    assert "| none | 41.8 | 22.6 **broken** |  |  | 34.8 | 20.6 **broken** |  |  |" in out
    # ISS-grayscale is grayscale under another name: EM, run only under grayscale, points there
    assert "| iss-grayscale | 41.8 | 21.3 **broken** | = grayscale |  |  |  |  |  |" in out
    assert "11.7" not in out and "12.1" not in out
    assert "| none | 38.2 | 15.6 weakened |  |  |" in out  # the victim from scratch, all three copies
    # the same cell measured twice with other figures: the runs differ, and mixing them is refused
    _robustness_run(results, "robustness_icons_c", 3e-4, [("MEM-3", "transfer", "none", "broken", 25.0, 41.8)])
    with pytest.raises(SystemExit, match="robustness_icons_a but 25.0 in robustness_icons_c"):
        tables.main(["--results", str(results)])


@pytest.mark.parametrize("method", ["mem", "layered"])
def test_protect_speed_times_the_pgd_of_the_method_it_names(method):
    # MEM's PGD pulls toward each trigger with a fresh body permutation per step (S x B text features);
    # the layered default's toward each caption alone (B), through differentiable JPEG.
    import argparse

    import numpy as np
    import torch

    from hf_unlearnable.images import prepare_image
    from hf_unlearnable.testing import synthetic_captions, tiny_clip_config

    speed = importlib.import_module("benchmarks.protect_speed")
    rows = synthetic_captions(4, image_size=32, seed=0)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in rows]))
    arguments = argparse.Namespace(method=method, mixed_precision="no")
    functions, _ = speed.our_workload(tiny_clip_config(32), rows, images, arguments, torch.device("cpu"))
    text = functions["pgd_text"]()
    assert text.shape[:-1] == ((speed.PGD_STEPS, 4) if method == "mem" else (4,))
    step_config = functions["pgd"].__closure__  # the MEMStep whose PGD it times
    (step,) = [cell.cell_contents for cell in step_config if type(cell.cell_contents).__name__ == "MEMStep"]
    assert step.config.method == method and bool(step.config.eot_transforms) == (method == "layered")
    functions["pgd"]()  # runs
