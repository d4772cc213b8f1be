"""Seconds per batch of MEM's surrogate step, HotFlip and PGD, their FLOPs and the FLOP rate they
attain against this run's matmul rate; with ``--reference``, the MEM authors' code timed on the
same inputs in alternating runs. Nothing is remembered from another machine: every figure printed
is measured by this run.

    python benchmarks/protect_speed.py                    # tiny and ViT-B/32-sized, CPU
    python benchmarks/protect_speed.py --sizes tiny       # seconds
    python benchmarks/protect_speed.py --sizes vit-b32 --reference ../Multimodal-Unlearnable-Examples
    python benchmarks/protect_speed.py --device cuda --mixed-precision bf16 --peak-tflops 989 --json speed.json

Models are randomly initialised from configs (speed does not depend on the weights). Batch 16,
k = 3 trigger tokens, 16 HotFlip candidates, 8 PGD steps (``--method mem``, the default:
MEMConfig(method="mem"), PGD pulls each image toward its trigger with caption bodies shuffled afresh
at every step; ``--method layered``: the library's default method, PGD through differentiable JPEG
toward each caption alone), synthetic captions. "Full schedule" is HotFlip in 5 of 20 rounds and PGD
in every round, per sample per round (the layered default's schedule too: 20 pixel rounds of PGD,
then 5 trigger rounds of HotFlip).

--reference PATH: a checkout of github.com/thinwayliu/Multimodal-Unlearnable-Examples (the MEM
paper's code; nothing of it is copied into this repository). Its modules are imported from PATH
at run time and driven as its MEM loop (``src/poison_train.py: poison``, run by ``src/poison.py``)
drives them, on its own CLIP (``pkgs/openai/model.py``) of the same size, in float32 as that code
runs (it casts the model to float32 and calls it without autocast), whatever ``--mixed-precision``
says for ours:

- PGD: ``PerturbationTool(...).min_min_attack`` (8 steps; each a forward and backward of both towers
  on the batch with its triggers and shuffled caption bodies, 77 text positions).
- HotFlip: the block of ``poison`` that runs in its first 5 rounds: one forward and backward with
  every parameter requiring a gradient and a backward hook on the token embedding, then
  ``src.attacks.hotflip_attack`` (16 candidates per position) and ``src.utils.get_best_candidates``
  (a forward of both towers per candidate and position), then the forward that logs the new loss.
  That block is inline in ``poison``, so this file repeats its few lines of glue (hook, forward,
  loss, backward); the attack itself is their functions.

HotFlip and PGD are then timed ``--pairs`` times each, theirs then ours (A B A B ...), and each
pair's ratio is printed with the medians. FLOPs are counted by ``torch.utils.flop_counter`` on the
warm-up run (matmuls, convolutions and attention, forward and backward); the attained rate is
FLOPs / median seconds, against the best of a few 2048 x 2048 ``torch.mm`` in the same dtype and
thread count, measured at the start and the end of this run. ``--peak-tflops X`` adds MFU
(attained / X). ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

from hf_unlearnable.captions import CaptionCodec, trigger_vocabulary
from hf_unlearnable.config import MEMConfig
from hf_unlearnable.images import prepare_image
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.mem.hotflip import HotFlip
from hf_unlearnable.mem.loop import MEMStep
from hf_unlearnable.surrogate import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Surrogate,
    parameter_groups,
    pixels_from_uint8,
)
from hf_unlearnable.testing import clip_tokenizer, synthetic_captions, tiny_clip_config

TRIGGER_LENGTH, CANDIDATES, PGD_STEPS = 3, 16, 8
HOTFLIP_ROUNDS, ROUNDS = 5, 20  # the full schedule: HotFlip in 5 of 20 rounds, PGD in every round

#: The files --reference must hold (the MEM loop, its attacks, its CLIP and tokenizer).
REFERENCE_FILES = (
    "src/poison_train.py",
    "src/attacks.py",
    "src/utils.py",
    "pkgs/openai/model.py",
    "pkgs/openai/tokenizer.py",
    "pkgs/openai/bpe_simple_vocab_16e6.txt.gz",
)
REFERENCE_REPOSITORY = "thinwayliu/Multimodal-Unlearnable-Examples"

#: Their CLIP's constructor arguments (embed_dim, image_resolution, vision_layers, vision_width,
#: vision_patch_size, context_length, vocab_size, transformer_width, transformer_heads,
#: transformer_layers) per size. vit-b32 is OpenAI's ViT-B/32, which their `build` reads from the
#: checkpoint; tiny mirrors tiny_clip_config(32) (their vision heads are width // 64 = 1, not 2),
#: with their tokenizer's 49,408 rows.
REFERENCE_SIZES = {
    "vit-b32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "tiny": (32, 32, 2, 64, 8, 77, 49408, 64, 2, 2),
}


def vit_b32_config(tokenizer) -> CLIPConfig:
    """openai/clip-vit-base-patch32's architecture (vocabulary of 49,408 rows like the original)."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
    )


def timed(function: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def count_flops(function: Callable) -> int:
    """FLOPs of one call (torch's flop counter: matmuls, convolutions, attention; forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The best rate of a size x size torch.mm in ``dtype`` at this process's thread count."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * size**3 / best / 1e12


# ---------------------------------------------------------------------------------------- ours
def our_workload(config: CLIPConfig, rows, images: torch.Tensor, arguments, device) -> tuple[dict, float]:
    """This library's surrogate step, HotFlip, PGD (and PGD's text features alone) on one batch,
    as callables; and the mean caption length in tokens (start, trigger, body, end)."""
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    surrogate = Surrogate(CLIPModel(config)).to(device)
    batch = len(images)
    mem = MEMConfig(
        method=arguments.method,
        eot_transforms=() if arguments.method == "mem" else MEMConfig().eot_transforms,
        batch_size=batch,
        trigger_length=TRIGGER_LENGTH,
        hotflip_candidates=CANDIDATES,
        pgd_steps=PGD_STEPS,
    )
    codec = CaptionCodec(tokenizer, mem.trigger_length, 77)
    bodies, lengths = codec.encode_bodies(rows["caption"][:])
    vocabulary = trigger_vocabulary(tokenizer, mem)
    triggers = torch.from_numpy(vocabulary.sample((batch, TRIGGER_LENGTH), np.random.default_rng(0))).long()
    input_ids, mask = codec.build(triggers, torch.from_numpy(bodies).long(), torch.from_numpy(lengths).long())
    input_ids, mask = input_ids.to(device), mask.to(device)
    noise = torch.zeros_like(images, dtype=torch.int8)
    hotflip = HotFlip(surrogate, vocabulary.mask, mem.hotflip_candidates)
    loss = ContrastiveLoss()
    optimizer = torch.optim.AdamW(parameter_groups(surrogate, 0.1), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=arguments.mixed_precision == "bf16")

    def surrogate_step():
        with autocast:
            image_features, text_features = surrogate(pixels_from_uint8(images, noise), input_ids, mask)
            value = loss(image_features, text_features, surrogate.logit_scale())
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def hotflip_step():
        with autocast:
            with torch.no_grad():
                image_features = surrogate.image_features(pixels_from_uint8(images, noise))
            hotflip(image_features, input_ids, mask, mem.trigger_length)

    step = MEMStep(surrogate, codec, vocabulary, mem)
    bodies, lengths = torch.from_numpy(bodies).long().to(device), torch.from_numpy(lengths).long().to(device)
    triggers = triggers.to(device)

    def pgd_text():  # as in MEMStep: "mem", each trigger with a fresh body permutation per step;
        with autocast:  # "layered", each caption alone
            return step.pgd_text_features(triggers, bodies, lengths, torch.Generator().manual_seed(0))

    def pgd_step():  # MEMStep's PGD: through the method's EOT operations (the layered default: JPEG)
        with autocast:
            step.pgd(images, noise, pgd_text(), torch.Generator().manual_seed(0))

    functions = {"surrogate_step": surrogate_step, "hotflip": hotflip_step, "pgd": pgd_step, "pgd_text": pgd_text}
    return functions, float(mask.sum(1).float().mean())


# ------------------------------------------------------------------------------- the reference
def check_reference(path: Path) -> str | None:
    """Why ``path`` is not a usable checkout of the reference code (None: it is)."""
    expected = f"a checkout of {REFERENCE_REPOSITORY} (the MEM authors' code) holding {', '.join(REFERENCE_FILES)}"
    if not path.is_dir():
        return f"--reference {path}: no such directory; expected {expected}."
    missing = [name for name in REFERENCE_FILES if not (path / name).is_file()]
    if missing:
        return f"--reference {path}: not {expected}; missing {', '.join(missing)}."
    return None


def import_reference(path: Path) -> types.SimpleNamespace:
    """Their modules, imported from ``path`` (put first on sys.path)."""
    # Run-time patch: their src/poison_train.py and src/utils.py import wandb (logging, off here)
    # and src/attacks.py imports sklearn.cluster (k-means for baselines off the MEM path). Where
    # neither is installed, empty stand-ins let the modules import; nothing calls into them.
    for name in ("wandb", "sklearn"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            if name == "sklearn":
                cluster = types.ModuleType("sklearn.cluster")
                cluster.MeanShift = cluster.KMeans = cluster.estimate_bandwidth = None
                sys.modules["sklearn.cluster"] = cluster
    sys.path.insert(0, str(path))
    names = {
        "poison_train": "src.poison_train",
        "attacks": "src.attacks",
        "utils": "src.utils",
        "model": "pkgs.openai.model",
        "tokenizer": "pkgs.openai.tokenizer",
    }
    modules = {}
    for key, name in names.items():
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise SystemExit(
                f"--reference {path}: importing its {name} failed ({error}); install what it needs "
                "(its requirements.txt) or point --reference at an unmodified checkout."
            ) from error
        if not Path(module.__file__).resolve().is_relative_to(path.resolve()):
            raise SystemExit(
                f"--reference {path}: {name} was imported from {module.__file__}, not from the checkout "
                "(another package of that name is on sys.path); run from a directory without one."
            )
        modules[key] = module
    return types.SimpleNamespace(**modules)


def reference_workload(reference, name: str, captions: list[str], images: torch.Tensor, device) -> tuple[dict, float]:
    """Their HotFlip block and PGD on the same batch, as callables; and their caption length in tokens."""
    torch.manual_seed(0)
    size = REFERENCE_SIZES[name]
    model = reference.model.CLIP(*size).float().to(device).eval()  # as their load(): float32 weights
    batch, k, image_size = len(images), TRIGGER_LENGTH, size[1]
    # Their data set (src/data.py, ImageCaptionDataset_Poison) puts k placeholder words before each
    # caption, which the triggers overwrite; their Processor.process_text tokenizes to 77 ids
    # (start, BPE tokens, end, zeros). Processor lives in pkgs/openai/clip.py, which imports
    # torchvision for its image transform, so its three lines of tokenization are repeated here.
    tokenizer = reference.tokenizer.SimpleTokenizer()
    start, end = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
    input_ids = torch.zeros(batch, 77, dtype=torch.long)
    for row, caption in enumerate(captions):
        tokens = ([start] + tokenizer.encode("The " * k + caption) + [end])[:77]
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    attention_mask = torch.empty(batch)  # as their Processor returns it; their CLIP ignores it
    triggers = torch.randint(30522, size=(batch, k), generator=torch.Generator().manual_seed(0))  # their init
    caption_tokens = float((input_ids != 0).sum(1).float().mean())
    input_ids[:, 1 : 1 + k] = triggers
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    # their normalisation (Processor's Normalize) of the same uint8 images; the 8/255 budget and
    # the step of 1/255 in normalised units, as `poison` builds them (at 224 px there; here at the
    # image size, so the tiny size runs too)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1).expand(3, image_size, image_size)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1).expand(3, image_size, image_size)
    pixel_values = ((pixels_from_uint8(images).cpu() - mean) / std).to(device)
    options = argparse.Namespace(
        device=str(device), inmodal=False, distributed=False, unlearn=False, token_num=k, epsilon=8
    )
    criterion = torch.nn.CrossEntropyLoss().to(device)
    tool = reference.poison_train.PerturbationTool(
        seed=0,
        epsilon=(options.epsilon / 255) / std,
        num_steps=PGD_STEPS,
        step_size=(1 / 255) / std,
        lower_limit=(0 - mean) / std,
        upper_limit=(1 - mean) / std,
        num_trigger_tokens=k,
        options=options,
    )
    batch_dict = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    noise = torch.zeros_like(pixel_values)
    embedding_weight = model.token_embedding.weight.detach()  # their get_embedding_weight

    def pgd():
        for parameter in model.parameters():  # as poison() before min_min_attack
            parameter.requires_grad = False
        model.eval()
        tool.min_min_attack(batch_dict, model, criterion, triggers, random_noise=noise, options=options)

    # Left out of their block: logging.info(attacks.decode_vis(input_ids[0])), twice, which builds a
    # new BPE tokenizer each time (a fraction of a second; not part of the attack). Its cost would
    # count against them, so leaving it out can only flatter the reference.
    def hotflip():
        for parameter in model.parameters():  # as poison() in its HotFlip rounds
            parameter.requires_grad = True
        model.eval()
        ids = input_ids.clone()
        model.zero_grad()
        extracted = []
        # their add_hooks: a (non-full, deprecated) backward hook whose grad_out[0] is d loss / d embeddings
        handle = model.token_embedding.register_backward_hook(
            lambda module, grad_in, grad_out: extracted.append(grad_out[0])
        )
        with warnings.catch_warnings():  # torch's FutureWarning on non-full hooks, once per call
            warnings.simplefilter("ignore", FutureWarning)
            outputs = model(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values)
            loss, _, _ = reference.poison_train.get_loss(model, outputs, criterion, options, None)
            loss.backward()
        handle.remove()
        candidates = reference.attacks.hotflip_attack(
            extracted[0], embedding_weight, increase_loss=False, num_candidates=CANDIDATES, num_trigger_tokens=k
        )
        best = reference.utils.get_best_candidates(
            model,
            ids,
            attention_mask,
            pixel_values,
            triggers,
            candidates,
            k,
            criterion=criterion,
            increase_loss=False,
            options=options,
        )
        ids[:, 1 : 1 + k] = best
        with torch.no_grad():
            outputs = model(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values)
            reference.poison_train.get_loss(model, outputs, criterion, options, gather_backdoor_indices=None)

    return {"hotflip": hotflip, "pgd": pgd}, caption_tokens


# ----------------------------------------------------------------------------------- measuring
#: (work, the key of its median seconds) for the FLOP rates
WORKS = (("surrogate_step", "surrogate_step_s"), ("hotflip", "hotflip_batch_s"), ("pgd", "pgd_batch_s"))


def add_rates(result: dict, matmul: dict, peak: float | None) -> None:
    """Attained TFLOP/s of each timed work (FLOPs / median seconds), its fraction of the matmul rate
    in the side's dtype and, with ``peak``, MFU; in place, for ours and the reference."""
    sides = [(result, result["precision"])]
    if "reference" in result:
        sides.append((result["reference"], result["reference"]["precision"]))
    for figures, dtype in sides:
        figures["matmul_tflops"] = matmul[dtype]
        for key, seconds in WORKS:
            if f"{key}_flops_per_sample" not in figures:
                continue
            attained = figures[f"{key}_flops_per_sample"] * result["batch"] / figures[seconds] / 1e12
            figures[f"{key}_tflops"] = attained
            figures[f"{key}_matmul_fraction"] = attained / matmul[dtype]
            if peak:
                figures[f"mfu_{key}"] = attained / peak


def measure(name: str, config: CLIPConfig, image_size: int, arguments, device, reference) -> dict:
    """Seconds (medians, and every run) and FLOPs per sample of ours, and of the reference when given."""
    batch = arguments.batch
    rows = synthetic_captions(batch, image_size=image_size, seed=0)
    images = torch.from_numpy(np.stack([prepare_image(r["image"], image_size) for r in rows])).to(device)
    ours, caption_tokens = our_workload(config, rows, images, arguments, device)
    flops = {key: count_flops(function) for key, function in ours.items()}  # also the warm-up
    runs = {key: [timed(ours[key], device) for _ in range(arguments.repeats)] for key in ("surrogate_step", "pgd_text")}
    result = {"model": name, "image_size": image_size, "batch": batch, "caption_tokens": caption_tokens}
    result["precision"] = "bf16" if arguments.mixed_precision == "bf16" else "fp32"  # of the matmul rate
    if reference is None:
        for key in ("hotflip", "pgd"):
            runs[key] = [timed(ours[key], device) for _ in range(arguments.repeats)]
    else:
        theirs, their_tokens = reference_workload(reference, name, list(rows["caption"][:]), images, device)
        their_flops = {key: count_flops(function) for key, function in theirs.items()}  # also the warm-up
        their_runs = {"hotflip": [], "pgd": []}
        runs["hotflip"], runs["pgd"] = [], []
        for pair in range(arguments.pairs):  # A B A B ...: theirs then ours, for HotFlip, then for PGD
            for key in ("hotflip", "pgd"):
                their_runs[key].append(timed(theirs[key], device))
                runs[key].append(timed(ours[key], device))
            print(
                f"  {name}, pair {pair + 1} of {arguments.pairs}: HotFlip {their_runs['hotflip'][-1]:.2f} s "
                f"(reference), {runs['hotflip'][-1]:.2f} s (ours); 8 PGD steps {their_runs['pgd'][-1]:.2f} s "
                f"(reference), {runs['pgd'][-1]:.2f} s (ours)",
                flush=True,
            )
        result["reference"] = {
            "precision": "fp32",
            "caption_tokens": their_tokens,
            "text_positions": 77,
            **schedule_figures(their_runs, batch),
            "hotflip_flops_per_sample": their_flops["hotflip"] / batch,
            "pgd_flops_per_sample": their_flops["pgd"] / batch,
        }
    result.update(schedule_figures(runs, batch))
    result["surrogate_step_s"] = statistics.median(runs["surrogate_step"])
    result["pgd_text_batch_s"] = statistics.median(runs["pgd_text"])
    result["runs"]["surrogate_step_s"] = runs["surrogate_step"]
    result["runs"]["pgd_text_batch_s"] = runs["pgd_text"]
    for key in ("surrogate_step", "hotflip", "pgd", "pgd_text"):
        result[f"{key}_flops_per_sample"] = flops[key] / batch
    if reference is not None:
        ours_runs, their_runs = result["runs"], result["reference"]["runs"]
        result["ratios"] = {  # reference seconds / our seconds, pair by pair
            key: [t / o for t, o in zip(their_runs[field], ours_runs[field])]
            for key, field in (
                ("hotflip", "hotflip_batch_s"),
                ("pgd", "pgd_batch_s"),
                ("full_schedule", "full_schedule_s"),
            )
        }
        for key in ("hotflip", "pgd", "full_schedule"):
            result["ratios"][f"{key}_median"] = statistics.median(result["ratios"][key])
    return result


def schedule_figures(runs: dict[str, list[float]], batch: int) -> dict:
    """Medians of the HotFlip and PGD runs, and of each run's per-sample-per-round cost."""
    hotflip, pgd = runs["hotflip"], runs["pgd"]
    full = [(HOTFLIP_ROUNDS * h + ROUNDS * p) / ROUNDS / batch for h, p in zip(hotflip, pgd)]
    hotflip_round = [(h + p) / batch for h, p in zip(hotflip, pgd)]
    return {
        "hotflip_batch_s": statistics.median(hotflip),
        "pgd_batch_s": statistics.median(pgd),
        "per_sample_round_s": statistics.median(hotflip_round),  # a round with HotFlip
        "full_schedule_s": statistics.median(full),  # HotFlip in 5 of 20 rounds
        "runs": {"hotflip_batch_s": hotflip, "pgd_batch_s": pgd, "full_schedule_s": full},
    }


def peak_rss_mib() -> float:
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------- tables
def tflops_text(value: float) -> str:
    return f"{value * 1e3:.1f} GFLOP/s" if value < 1 else f"{value:.2f} TFLOP/s"


def print_tables(results: list[dict], arguments, matmul: dict) -> None:
    print(
        "\n| model | px | batch | caption tokens | surrogate step s | HotFlip s/batch | 8 PGD steps s/batch "
        "| of which text features s | s/sample/round (HotFlip round) | s/sample/round (full schedule) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['caption_tokens']:.0f} | {r['surrogate_step_s']:.2f} "
            f"| {r['hotflip_batch_s']:.2f} | {r['pgd_batch_s']:.2f} | {r['pgd_text_batch_s']:.2f} "
            f"| {r['per_sample_round_s']:.3f} | {r['full_schedule_s']:.3f} |"
        )
    precision = "bf16 autocast" if arguments.mixed_precision == "bf16" else "fp32"
    mfu = " MFU |" if arguments.peak_tflops else ""
    print(f"\n| model | code | precision | work | GFLOP/sample | s/batch | attained | % of matmul rate |{mfu}")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if mfu else ""))
    labels = {"surrogate_step": "surrogate step", "hotflip": "HotFlip", "pgd": "8 PGD steps"}
    for r in results:
        sides = [("ours", precision, r)] + ([("reference", "fp32", r["reference"])] if "reference" in r else [])
        for code, side_precision, figures in sides:
            for key, seconds in WORKS:
                if f"{key}_tflops" not in figures:
                    continue
                row = (
                    f"| {r['model']} | {code} | {side_precision} | {labels[key]} "
                    f"| {figures[f'{key}_flops_per_sample'] / 1e9:.2f} | {figures[seconds]:.2f} "
                    f"| {tflops_text(figures[f'{key}_tflops'])} | {100 * figures[f'{key}_matmul_fraction']:.0f}% |"
                )
                print(row + (f" {100 * figures[f'mfu_{key}']:.1f}% |" if mfu else ""))
    rates_text = ", ".join(f"{key} {tflops_text(value)}" for key, value in matmul.items())
    print(
        f"matmul rate (best 2048 x 2048 torch.mm, {arguments.threads} threads, start and end of the run): {rates_text}"
    )
    for r in results:
        if "reference" in r:
            print_pairs(r, precision)


def print_pairs(r: dict, precision: str) -> None:
    """The reference against ours, pair by pair, and the medians."""
    their, ours, ratios = r["reference"], r, r["ratios"]
    print(
        f"\n{r['model']}: the reference code (fp32; {their['caption_tokens']:.0f} caption tokens, all 77 positions "
        f"computed) against ours ({precision}; {r['caption_tokens']:.0f} tokens). Ratio: reference s / our s."
    )
    print(
        "| pair | HotFlip s, reference | ours | ratio | 8 PGD steps s, reference | ours | ratio "
        "| full schedule s/sample/round, reference | ours | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [(str(pair + 1), pair) for pair in range(len(ratios["hotflip"]))] + [("median", None)]
    for label, pair in rows:
        cells = []
        for key, field in (
            ("hotflip", "hotflip_batch_s"),
            ("pgd", "pgd_batch_s"),
            ("full_schedule", "full_schedule_s"),
        ):
            digits = 3 if key == "full_schedule" else 2
            if pair is None:
                values = (their[field], ours[field], ratios[f"{key}_median"])
            else:
                values = (their["runs"][field][pair], ours["runs"][field][pair], ratios[key][pair])
            cells.append(f"{values[0]:.{digits}f} | {values[1]:.{digits}f} | {values[2]:.2f}x")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,vit-b32", help="comma list of tiny, vit-b32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs of each of ours (median); with --reference, HotFlip and PGD run --pairs times",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"], help="ours; the reference runs fp32")
    parser.add_argument(
        "--method",
        default="mem",
        choices=["mem", "layered"],
        help="ours: mem (the work the reference does) or layered (the default: PGD through differentiable "
        "JPEG toward each caption alone; 20 PGD rounds and 5 HotFlip rounds, the same full-schedule formula)",
    )
    parser.add_argument("--reference", type=Path, default=None, help=f"a checkout of {REFERENCE_REPOSITORY}")
    parser.add_argument(
        "--pairs", type=int, default=3, help="with --reference: alternating runs of HotFlip and PGD (at least 3)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s: prints MFU")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    arguments = parser.parse_args(argv)
    sizes = [size.strip() for size in arguments.sizes.split(",") if size.strip()]
    if not sizes or set(sizes) - set(REFERENCE_SIZES):
        parser.error(f"--sizes {arguments.sizes}: choose from {', '.join(REFERENCE_SIZES)}")
    if arguments.pairs < 3:
        parser.error(f"--pairs {arguments.pairs}: at least 3 alternating pairs")
    if arguments.repeats < 1:
        parser.error(f"--repeats {arguments.repeats}: at least 1")
    if arguments.peak_tflops is not None and arguments.peak_tflops <= 0:
        parser.error(f"--peak-tflops {arguments.peak_tflops}: a positive rate")
    if arguments.reference is not None and (reason := check_reference(arguments.reference)):
        parser.error(reason)
    torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    reference = import_reference(arguments.reference) if arguments.reference is not None else None
    tokenizer = clip_tokenizer()
    models = {"tiny": (tiny_clip_config(32), 32), "vit-b32": (vit_b32_config(tokenizer), 224)}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # fp32 always (the reference runs in it), and the dtype of our autocast
    matmul = {
        key: matmul_tflops(dtypes[key], device)
        for key in dict.fromkeys(["fp32", "bf16" if arguments.mixed_precision == "bf16" else "fp32"])
    }
    from _common import provenance  # benchmarks/ is on sys.path when run as a script

    figures = {
        **provenance("protect_speed", argv),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(arguments).items()},
        "torch": torch.__version__,
        "device": device_name(device),
        "device_type": device.type,
        "threads": arguments.threads,
        "mixed_precision": arguments.mixed_precision,
        "method": arguments.method,
        "peak_tflops": arguments.peak_tflops,
        "reference": str(arguments.reference) if arguments.reference is not None else None,
        "pairs": arguments.pairs if arguments.reference is not None else None,
        "matmul_tflops": matmul,
        "models": {},
    }

    def write() -> None:
        if arguments.json is not None:
            figures["peak_rss_mib"] = peak_rss_mib()
            arguments.json.parent.mkdir(parents=True, exist_ok=True)
            arguments.json.write_text(json.dumps(figures, indent=1))

    results = []
    for name in sizes:
        config, size = models[name]
        result = measure(name, config, size, arguments, device, reference)
        add_rates(result, matmul, arguments.peak_tflops)
        results.append(result)
        figures["models"][name] = result
        write()  # after every model, so a later failure keeps what was measured
    # the matmul rate again at the end, the best of both (the machine may be busier at one of them)
    for key in matmul:
        matmul[key] = max(matmul[key], matmul_tflops(dtypes[key], device))
    for result in results:
        add_rates(result, matmul, arguments.peak_tflops)
    write()
    print_tables(results, arguments, matmul)
    print(
        f"peak RSS {peak_rss_mib():.0f} MiB; device {device} ({device_name(device)}, {arguments.threads} threads), "
        f"torch {torch.__version__}, mixed precision {arguments.mixed_precision}, method {arguments.method}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
