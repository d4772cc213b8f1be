"""Is the icon data set learnable? A small CLIP trained from scratch on its clean train split.

Protection figures mean something only if the clean victim learns far above chance. This trains
the library's victim (``hf_unlearnable.victim.train_victim``, a ``tiny_clip_config`` model with the
data set's own tokenizer from ``build_icon_dataset.py``) on the clean ``train`` split and prints
R@1/5/10 and MedR in both directions on the ``test`` split, with chance beside them.

    python benchmarks/build_icon_dataset.py --output benchmarks/results/tmp/icons
    python benchmarks/icon_learnability.py --dataset benchmarks/results/tmp/icons --image-size 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from _common import KEYS

from hf_unlearnable.audit import chance_scores
from hf_unlearnable.testing import tiny_clip, tiny_clip_config
from hf_unlearnable.victim import train_victim


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="benchmarks/results/tmp/icons", help="output of build_icon_dataset.py")
    parser.add_argument("--image-size", type=int, default=32, help="victim resolution (images are resized)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures and history here")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)

    dataset = datasets.load_from_disk(arguments.dataset)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(Path(arguments.dataset) / "tokenizer")
    _, default_processor = tiny_clip(arguments.image_size)
    processor = transformers.CLIPProcessor(image_processor=default_processor.image_processor, tokenizer=tokenizer)
    config = tiny_clip_config(
        arguments.image_size, hidden_size=arguments.hidden_size, num_layers=arguments.layers, tokenizer=tokenizer
    )
    started = time.perf_counter()
    result = train_victim(
        dataset["train"],
        dataset["test"],
        config,
        processor,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        seed=arguments.seed,
    )
    seconds = time.perf_counter() - started
    final = result.history[-1]
    random = chance_scores([1] * len(dataset["test"]))
    print(
        f"{len(dataset['train'])} train / {len(dataset['test'])} test pairs, {arguments.image_size} px, "
        f"hidden {arguments.hidden_size}, {arguments.layers} layers, {arguments.epochs} epochs, "
        f"{seconds / 60:.1f} min"
    )
    print("| Victim | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    print("| Chance | " + " | ".join(f"{random[key]:.1f}" for key in KEYS) + " |")
    print("| Clean | " + " | ".join(f"{final[key]:.1f}" for key in KEYS) + " |")
    summary = {
        "arguments": vars(arguments),
        "seconds": seconds,
        "chance": random,
        "final": final,
        "history": result.history,
    }
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
