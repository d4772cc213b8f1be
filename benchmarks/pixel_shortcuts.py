"""Can the pixels alone carry a shortcut on this data? Pixel-only copies (no trigger), audited.

The third target of `ablation_robust.py` asks the image noise to protect on its own, with every
trigger removed. On the icon set nothing tried so far does. This benchmark puts the pixel-side hypotheses side by side,
each as a copy of the training split with the clean captions, audited like every other table
(`hf_unlearnable.evaluate_protection`: a victim trained from scratch on the copy and one on the
clean split, R@10 on the clean test split):

    em                 EM: PGD toward each image's own caption (`hf_unlearnable.EM`).
    em-headroom=M:E    EM on images first squeezed into [M, 255 - M] (v -> M + v (255 - 2M) / 255),
                       with a noise budget of E levels. Tests whether saturated pixels (0 or 255, where
                       noise moves one way only: 77% of the icons' channel values) hold EM back. With
                       M + E <= 8 the copy stays within 8/255 of the clean image; M = E = 8 spends
                       16/255 and is a control outside the library's budget.
    cluster-sign=K     class-wise noise without optimisation: captions grouped into K clusters
                       (spherical k-means on TF-IDF word vectors), every image of a cluster gets the
                       same fixed pattern, a random +-8/255 per pixel and channel. Class-wise noise is
                       the strongest shortcut in supervised unlearnable examples (Huang et al. 2021;
                       Yu et al. 2022), and clustering supplies the missing classes (Unlearnable
                       Clusters, Zhang et al. 2023); the cluster is readable from the caption's words,
                       so caption cleaning cannot remove it.
    cluster-block4=K   the same with one +-8/255 sign per 4x4 block, equal on all channels (lower
                       frequency, survives grayscale).

    python benchmarks/pixel_shortcuts.py --dataset icons
    python benchmarks/pixel_shortcuts.py --dataset icons --variants em,em-headroom=4:4,em-headroom=8:8
    python benchmarks/pixel_shortcuts.py --smoke     # tiny sizes, < 1 min

The k-means is Lloyd's algorithm in a few lines of torch, so the benchmarks need no scikit-learn.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from _common import (
    add_victim_and_mem_arguments,
    apply_smoke,
    begin,
    benchmark_method,
    default_output,
    load_data,
    machine,
    provenance,
    victim_config,
    write_outputs,
)
from PIL import Image

from hf_unlearnable import evaluate_protection
from hf_unlearnable.images import prepare_image

BUDGET = 8  # levels: the library's l_inf budget, 8/255


def parse_variant(text: str) -> tuple[str, tuple[int, ...]]:
    """ "cluster-sign=50" -> ("cluster-sign", (50,)); "em-headroom=4:4" -> ("em-headroom", (4, 4))."""
    name, _, value = text.partition("=")
    shapes = {"em": 0, "em-headroom": 2, "cluster-sign": 1, "cluster-block4": 1}
    if name not in shapes:
        raise SystemExit(
            f"--variants: unknown {name!r}; choose from em, em-headroom=M:E, cluster-sign=K, cluster-block4=K"
        )
    numbers = tuple(int(part) for part in value.split(":")) if value else ()
    if len(numbers) != shapes[name] or any(n < 0 for n in numbers) or (name.startswith("cluster") and numbers[0] < 1):
        raise SystemExit(
            f"--variants: {text!r} needs {shapes[name]} non-negative number(s), e.g. em-headroom=4:4 or cluster-sign=50"
        )
    return name, numbers


def cluster_captions(captions: list[str], k: int, seed: int, iterations: int = 30) -> np.ndarray:
    """Cluster index (int64 (n,)) of each caption: spherical k-means on L2-normalised TF-IDF vectors
    of its lower-case words, initialised from k captions drawn with ``seed``."""
    documents = [re.findall(r"[a-z]+", caption.lower()) for caption in captions]
    vocabulary = sorted({word for words in documents for word in words})
    index = {word: column for column, word in enumerate(vocabulary)}
    counts = torch.zeros(len(documents), len(vocabulary))
    for row, words in enumerate(documents):
        for word in words:
            counts[row, index[word]] += 1
    document_frequency = (counts > 0).sum(0).clamp(min=1).float()
    vectors = torch.nn.functional.normalize(counts * torch.log(len(documents) / document_frequency), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centres = vectors[torch.randperm(len(vectors), generator=generator)[:k]].clone()
    for _ in range(iterations):
        labels = (vectors @ centres.T).argmax(1)
        for cluster in range(len(centres)):
            members = vectors[labels == cluster]
            centres[cluster] = (
                torch.nn.functional.normalize(members.mean(0), dim=0)
                if len(members)
                else vectors[int(torch.randint(len(vectors), (1,), generator=generator))]
            )
    return (vectors @ centres.T).argmax(1).numpy()


def cluster_pattern(kind: str, cluster: int, size: int, seed: int) -> np.ndarray:
    """The fixed +-BUDGET pattern (int16 (size, size, 3)) of one cluster."""
    rng = np.random.default_rng([seed, cluster])
    if kind == "cluster-sign":
        return (rng.integers(0, 2, (size, size, 3)) * 2 - 1).astype(np.int16) * BUDGET
    blocks = -(-size // 4)
    signs = (rng.integers(0, 2, (blocks, blocks, 1)) * 2 - 1).astype(np.int16) * BUDGET
    return np.repeat(np.repeat(signs, 4, 0), 4, 1)[:size, :size].repeat(3, 2)


def with_images(train: datasets.Dataset, arrays: list[np.ndarray]) -> datasets.Dataset:
    """``train`` with its image column replaced by ``arrays`` (uint8 PNG), captions untouched."""
    features = datasets.Features({"image": datasets.Image(), "caption": train.features["caption"]})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in arrays], "caption": train["caption"][:]}, features=features
    )


def build_copy(
    variant: str, train: datasets.Dataset, bases: list[np.ndarray], arguments, processor
) -> tuple[datasets.Dataset, int]:
    """(copy, levels it may differ from the clean image by) for one variant."""
    name, numbers = parse_variant(variant)
    if name.startswith("cluster"):
        labels = cluster_captions(train["caption"][:], numbers[0], arguments.seed)
        patterns = [
            cluster_pattern(name, cluster, arguments.image_size, arguments.seed) for cluster in range(numbers[0])
        ]
        arrays = [
            np.clip(base.astype(np.int16) + patterns[label], 0, 255).astype(np.uint8)
            for base, label in zip(bases, labels)
        ]
        sizes = np.bincount(labels, minlength=numbers[0])
        print(
            f"{variant}: cluster sizes min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}", flush=True
        )
        return with_images(train, arrays), BUDGET
    margin, levels = numbers if name == "em-headroom" else (0, BUDGET)
    squeezed = [
        np.round(margin + base.astype(np.float32) * (255 - 2 * margin) / 255).astype(np.uint8) for base in bases
    ]
    em = benchmark_method("em", arguments, epsilon=levels / 255)
    copy = em.protect(with_images(train, squeezed), victim_config(arguments, processor), processor, progress=False)
    return copy, margin + levels


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_victim_and_mem_arguments(parser)
    parser.add_argument("--variants", default="em,em-headroom=4:4,em-headroom=8:8,cluster-sign=50,cluster-block4=50")
    parser.add_argument("--defenses", default="none", help="comma list of defense names")
    parser.add_argument(
        "--output", help="folder (default: benchmarks/results/tmp/pixel_shortcuts_<dataset>, git-ignored)"
    )
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        apply_smoke(arguments)
    for variant in arguments.variants.split(","):
        parse_variant(variant)
    default_output(arguments, "pixel_shortcuts")
    return arguments


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    started = begin(arguments)
    train, test, _, processor = load_data(arguments)
    bases = [prepare_image(value, arguments.image_size, row) for row, value in enumerate(train["image"])]
    saturated = float(np.mean([np.isin(base, (0, 255)).mean() for base in bases]))
    copies, levels, seconds = {}, {}, {}
    for variant in arguments.variants.split(","):
        begun = time.perf_counter()
        copies[variant], levels[variant] = build_copy(variant, train, bases, arguments, processor)
        seconds[variant] = time.perf_counter() - begun
        print(f"built {variant} in {seconds[variant]:.0f} s", flush=True)
    report = evaluate_protection(
        train,
        copies,
        test,
        defenses=[d for d in arguments.defenses.split(",") if d],
        victim=victim_config(arguments, processor),
        processor=processor,
        epochs=arguments.epochs,
        batch_size=arguments.victim_batch,
        learning_rate=arguments.victim_lr,
        seed=arguments.seed,
        epsilon=max(levels.values()) / 255,
        progress=False,
    )
    total = time.perf_counter() - started
    command = provenance("pixel_shortcuts", argv)["command"]
    header = [
        f"# Pixel-only shortcuts (no trigger): {arguments.dataset}",
        "",
        f"`{command}`",
        "",
        f"{len(train)} training pairs, {len(test)} clean test images, {arguments.image_size} px, {100 * saturated:.0f}% of "
        f"the training images' channel values at 0 or 255; victim from scratch, {arguments.epochs} epochs, batch "
        f"{arguments.victim_batch}, lr {arguments.victim_lr:g}; EM {arguments.rounds} rounds, M = {arguments.surrogate_steps}, "
        f"{arguments.pgd_steps} PGD steps. Largest change from the clean image, in levels: "
        + ", ".join(f"{k} {v}" for k, v in levels.items())
        + f" (the library's budget: {BUDGET}). Total {total / 60:.1f} min "
        f"on {machine()}.",
    ]
    write_outputs(
        report,
        Path(arguments.output),
        "pixel_shortcuts",
        header,
        {"arguments": vars(arguments), "levels": levels, "build_seconds": seconds, "saturated": saturated},
        total_seconds=total,
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
