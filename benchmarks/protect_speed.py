"""Seconds per sample per round of MEM, split into surrogate steps, HotFlip and PGD; peak RSS.

The anchor: the reference MEM code with a ViT-B/32-sized CLIP, batch 16, 224 px, k = 3,
16 HotFlip candidates, captions of ~20 tokens costs 4.84 s per sample per round on a 2-core CPU
(HotFlip 61.7 s + 8 PGD steps 15.8 s per batch of 16); over the full schedule (HotFlip in 5 of 20
rounds) 1.95 s per sample per round. Targets: <= 1.2 s per sample per round, >= 3x over the
full schedule.

    python benchmarks/protect_speed.py                    # tiny and ViT-B/32-sized, CPU
    python benchmarks/protect_speed.py --sizes tiny       # seconds
    python benchmarks/protect_speed.py --device cuda --mixed-precision bf16   # on a GPU

Models are randomly initialised from configs (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel

from hf_unlearnable.captions import CaptionCodec, trigger_vocabulary
from hf_unlearnable.config import MEMConfig
from hf_unlearnable.images import prepare_image
from hf_unlearnable.losses import ContrastiveLoss
from hf_unlearnable.mem.hotflip import HotFlip
from hf_unlearnable.mem.loop import MEMStep
from hf_unlearnable.mem.pgd import PGD
from hf_unlearnable.surrogate import Surrogate, parameter_groups, pixels_from_uint8
from hf_unlearnable.testing import clip_tokenizer, synthetic_captions, tiny_clip_config

REFERENCE = {"per_sample_round": 4.84, "full_schedule": (5 * 61.7 / 16 + 20 * 15.8 / 16) / 20}


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


def timed(function, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(name: str, config: CLIPConfig, image_size: int, arguments, device) -> dict:
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    surrogate = Surrogate(CLIPModel(config)).to(device)
    mem = MEMConfig(
        method="mem",
        eot_transforms=(),
        batch_size=arguments.batch,
        trigger_length=3,
        hotflip_candidates=16,
        pgd_steps=8,
    )
    rows = synthetic_captions(arguments.batch, image_size=image_size, seed=0)
    images = torch.from_numpy(np.stack([prepare_image(r["image"], image_size) for r in rows])).to(device)
    codec = CaptionCodec(tokenizer, mem.trigger_length, 77)
    bodies, lengths = codec.encode_bodies(rows["caption"][:])
    vocabulary = trigger_vocabulary(tokenizer, mem)
    triggers = torch.from_numpy(vocabulary.sample((arguments.batch, 3), np.random.default_rng(0))).long()
    input_ids, mask = codec.build(triggers, torch.from_numpy(bodies).long(), torch.from_numpy(lengths).long())
    input_ids, mask = input_ids.to(device), mask.to(device)
    noise = torch.zeros_like(images, dtype=torch.int8)
    hotflip = HotFlip(surrogate, vocabulary.mask, mem.hotflip_candidates)
    pgd = PGD(surrogate, mem.epsilon_levels, mem.step_levels, mem.pgd_steps)
    loss = ContrastiveLoss()
    optimizer = torch.optim.AdamW(parameter_groups(surrogate, 0.1), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=arguments.mixed_precision == "bf16")

    def train_step():
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

    def pgd_text():  # as in MEMStep: features of each trigger with a fresh body permutation per step
        with autocast:
            return step.pgd_text_features(triggers, bodies, lengths, torch.Generator().manual_seed(0))

    def pgd_step():
        with autocast:
            pgd(images, noise, pgd_text())

    for function in (train_step, hotflip_step, pgd_step):  # warm-up
        function()
    repeats = arguments.repeats
    train_s = min(timed(train_step, device) for _ in range(repeats))
    hotflip_s = min(timed(hotflip_step, device) for _ in range(repeats))
    pgd_s = min(timed(pgd_step, device) for _ in range(repeats))
    pgd_text_s = min(timed(pgd_text, device) for _ in range(repeats))
    batch = arguments.batch
    per_sample_round = (hotflip_s + pgd_s) / batch  # a round with HotFlip, as the reference anchor
    full_schedule = (5 * hotflip_s + 20 * pgd_s) / 20 / batch  # HotFlip in 5 of 20 rounds
    return {
        "model": name,
        "image_size": image_size,
        "batch": batch,
        "caption_tokens": float(mask.sum(1).float().mean()),
        "surrogate_step_s": train_s,
        "hotflip_batch_s": hotflip_s,
        "pgd_batch_s": pgd_s,
        "pgd_text_batch_s": pgd_text_s,
        "per_sample_round_s": per_sample_round,
        "full_schedule_s": full_schedule,
    }


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,vit-b32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    tokenizer = clip_tokenizer()
    models = {"tiny": (tiny_clip_config(32), 32), "vit-b32": (vit_b32_config(tokenizer), 224)}
    print(
        "| model | px | batch | caption tokens | surrogate step s | HotFlip s/batch | 8 PGD steps s/batch "
        "| of which text features s | s/sample/round (HotFlip round) | s/sample/round (full schedule) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in arguments.sizes.split(","):
        config, size = models[name]
        result = measure(name, config, size, arguments, device)
        results.append(result)
        print(
            f"| {name} | {size} | {result['batch']} | {result['caption_tokens']:.0f} | {result['surrogate_step_s']:.2f} "
            f"| {result['hotflip_batch_s']:.2f} | {result['pgd_batch_s']:.2f} | {result['pgd_text_batch_s']:.2f} "
            f"| {result['per_sample_round_s']:.3f} "
            f"| {result['full_schedule_s']:.3f} |",
            flush=True,
        )
    for result in results:
        if result["model"] == "vit-b32":
            print(
                f"vit-b32 vs the reference: {REFERENCE['per_sample_round'] / result['per_sample_round_s']:.1f}x per HotFlip round "
                f"({REFERENCE['per_sample_round']} -> {result['per_sample_round_s']:.2f} s/sample), "
                f"{REFERENCE['full_schedule'] / result['full_schedule_s']:.1f}x over the full schedule "
                f"({REFERENCE['full_schedule']:.2f} -> {result['full_schedule_s']:.2f} s/sample/round)"
            )
    print(
        f"peak RSS {peak_rss_mib():.0f} MiB; device {device} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {arguments.threads} threads), torch {torch.__version__}, mixed precision {arguments.mixed_precision}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
