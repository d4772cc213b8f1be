"""Algorithm 1 of MEM: alternate surrogate training with HotFlip (Eq. 6) and PGD (Eq. 5) sweeps.

    init d = 0, t = random safe tokens
    repeat (round r = 1, 2, ...):
        M steps: train the surrogate on (x + d, t + caption), contrastive loss, AdamW
        for each batch:
            if r <= trigger_rounds: HotFlip update of t
            PGD update of d, caption bodies shuffled inside the batch, triggers kept with images
    until protected loss < stop_loss or r = max_rounds

This module works on tensors and a `SampleStore`; it knows nothing of `datasets`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from ..captions import CaptionCodec, TriggerVocabulary
from ..config import MEMConfig
from ..store import SampleStore
from ..surrogate import ContrastiveLoss, Surrogate, parameter_groups, pixels_from_uint8
from .hotflip import HotFlip
from .pgd import PGD

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    noise: torch.Tensor  # int8 (B, H, W, 3)
    triggers: torch.Tensor  # long (B, k)
    protected_loss: float  # loss on (x + d, t + own caption) after the update
    clean_loss: float  # loss on (x, caption) without protection


class MEMStep:
    """One sweep step on one batch: HotFlip on the triggers, then PGD on the noise."""

    def __init__(self, surrogate: Surrogate, codec: CaptionCodec, vocabulary: TriggerVocabulary | None, config: MEMConfig):
        self.surrogate = surrogate
        self.codec = codec
        self.clean_codec = CaptionCodec(codec.tokenizer, 0, codec.max_tokens)
        self.config = config
        self.hotflip = HotFlip(surrogate, vocabulary.mask, config.hotflip_candidates) if vocabulary is not None else None
        self.pgd = PGD(surrogate, config.epsilon_levels, config.step_levels, config.pgd_steps)
        self.loss = ContrastiveLoss(gather=False)

    def __call__(self, batch: dict[str, torch.Tensor], update_triggers: bool, generator: torch.Generator) -> BatchResult:
        surrogate, codec, config = self.surrogate, self.codec, self.config
        device = surrogate.image_mean.device
        images, noise = batch["images"].to(device), batch["noise"].to(device)
        triggers, bodies, lengths = batch["triggers"].to(device), batch["bodies"].to(device), batch["lengths"].to(device)

        if update_triggers and self.hotflip is not None and codec.trigger_length:
            with torch.no_grad():
                image_features = surrogate.image_features(pixels_from_uint8(images, noise))
            input_ids, mask = codec.build(triggers, bodies, lengths)
            input_ids = self.hotflip(image_features, input_ids, mask, codec.trigger_length)
            triggers = input_ids[:, 1 : 1 + codec.trigger_length]

        if config.image_noise and config.pgd_steps:
            order = torch.arange(len(images), device=device)
            if config.shuffle_captions:
                order = torch.randperm(len(images), generator=generator).to(device)
            input_ids, mask = codec.build(triggers, bodies[order], lengths[order])
            with torch.no_grad():
                text_features = surrogate.text_features(input_ids, mask)
            noise = self.pgd(images, noise, text_features)

        with torch.no_grad():
            logit_scale = surrogate.logit_scale()
            input_ids, mask = codec.build(triggers, bodies, lengths)
            protected = self.loss(
                surrogate.image_features(pixels_from_uint8(images, noise)), surrogate.text_features(input_ids, mask), logit_scale
            )
            clean_ids, clean_mask = self.clean_codec.build(triggers[:, :0], bodies, lengths)
            clean = self.loss(
                surrogate.image_features(pixels_from_uint8(images)), surrogate.text_features(clean_ids, clean_mask), logit_scale
            )
        return BatchResult(noise, triggers, float(protected), float(clean))


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split into ceil(n / batch_size) near-equal batches, so no batch is left with a single sample."""
    count = max(1, -(-len(order) // batch_size))
    return [part for part in np.array_split(order, count) if len(part)]


class MEMLoop:
    """Runs Algorithm 1 over a `SampleStore`, writing noise and triggers back into it.

    With several processes (``accelerate launch``), the surrogate trains with DDP and global
    negatives, and each sweep's batches are sharded by batch number: process p takes batches
    p, p + P, p + 2P, ... Sweeps need no collective per batch, so uneven shards cannot hang.

    With a ``checkpoint_dir`` the loop saves the surrogate and optimizer after each round's
    training, commits every sweep batch through the store's journal, and resumes from there when
    run again: the output is identical to an uninterrupted run.

    Args:
        surrogate: the model being trained and attacked.
        store: per-sample state (images, noise, triggers, captions).
        codec: builds token ids with trigger slots.
        vocabulary: allowed trigger tokens (None when trigger_length = 0).
        config: the MEM settings.
        accelerator: devices, processes and autocast.
        checkpoint_dir: where to checkpoint (None: no checkpoints, no resume).
    """

    def __init__(
        self,
        surrogate: Surrogate,
        store: SampleStore,
        codec: CaptionCodec,
        vocabulary: TriggerVocabulary | None,
        config: MEMConfig,
        accelerator: Accelerator,
        progress: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.surrogate = surrogate
        self.store = store
        self.codec = codec
        self.config = config
        self.accelerator = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.progress = progress and accelerator.is_local_main_process
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.step = MEMStep(surrogate, codec, vocabulary, config)
        self.loss = ContrastiveLoss(gather=self.world > 1)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(surrogate, config.weight_decay), lr=config.learning_rate
        )
        self.model, self.optimizer = accelerator.prepare(surrogate, self.optimizer)

    def _rng(self, *keys: int) -> np.random.Generator:
        """A generator that depends only on the seed and the keys, so any batch can be replayed."""
        return np.random.default_rng([self.config.seed, *keys])

    def train_surrogate(self, round_index: int) -> float:
        """M steps of contrastive training on the current protected data; returns the mean loss."""
        config, store = self.config, self.store
        if config.surrogate_steps == 0:
            return float("nan")
        rng = self._rng(round_index, 0, self.rank)
        device = self.accelerator.device
        stream = rng.permutation(len(store))
        position, losses = 0, []
        self.model.train()
        for _ in tqdm(range(config.surrogate_steps), desc=f"round {round_index} surrogate", leave=False, disable=not self.progress):
            if position + config.batch_size > len(stream):
                stream, position = rng.permutation(len(store)), 0
            indices = stream[position : position + config.batch_size]
            position += config.batch_size
            batch = store.batch(indices, rng)
            pixels = pixels_from_uint8(batch["images"], batch["noise"]).to(device)
            input_ids, mask = self.codec.build(batch["triggers"], batch["bodies"], batch["lengths"])
            with self.accelerator.autocast():
                image_features, text_features = self.model(pixels, input_ids.to(device), mask.to(device))
                loss = self.loss(image_features, text_features, self.surrogate.logit_scale())
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.surrogate.clamp_logit_scale()
            losses.append(float(loss.detach()))
        total, count = self._global_sums(sum(losses), len(losses))
        return total / count

    def shard(self, round_index: int) -> list[tuple[int, np.ndarray]]:
        """(batch number, row indices) of this process's share of the round's sweep."""
        batches = split_batches(self._rng(round_index, 1).permutation(len(self.store)), self.config.batch_size)
        return [(number, indices) for number, indices in enumerate(batches) if number % self.world == self.rank]

    def sweep(self, round_index: int) -> tuple[float, float]:
        """HotFlip (early rounds) and PGD over every batch; returns (protected loss, clean loss)."""
        config, store = self.config, self.store
        update_triggers = round_index <= config.trigger_rounds
        shard = self.shard(round_index)
        record = store.recover(self.rank) if self.checkpoint_dir is not None else None
        if record is None or record.get("round") != round_index:
            record = {"round": round_index, "done": 0, "protected": 0.0, "clean": 0.0, "rows": 0}
        self.surrogate.eval()
        for position in tqdm(range(record["done"], len(shard)), desc=f"round {round_index} sweep", leave=False, disable=not self.progress):
            number, indices = shard[position]
            rng = self._rng(round_index, 2, number)
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            batch = store.batch(indices, rng)
            with self.accelerator.autocast():
                result = self.step(batch, update_triggers, generator)
            record = {
                "round": round_index,
                "done": position + 1,
                "protected": record["protected"] + result.protected_loss * len(indices),
                "clean": record["clean"] + result.clean_loss * len(indices),
                "rows": record["rows"] + len(indices),
            }
            noise = result.noise if config.image_noise else None
            if self.checkpoint_dir is not None:
                store.commit(self.rank, indices, noise, result.triggers, record)
            else:
                store.write(indices, noise, result.triggers)
        store.sync()
        self.accelerator.wait_for_everyone()
        protected, clean, rows = self._global_sums(record["protected"], record["clean"], record["rows"])
        return protected / rows, clean / rows

    def _global_sums(self, *values: float) -> list[float]:
        """Each value summed over processes (itself with one process)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        if self.world > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor.tolist()

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, state: dict) -> None:
        """Surrogate and optimizer files named by round, then state.json pointing at them, atomically."""
        if self.checkpoint_dir is None:
            return
        if self.accelerator.is_main_process:
            directory = self.checkpoint_dir
            directory.mkdir(parents=True, exist_ok=True)
            weights, optimizer = f"surrogate-round{state['round']}.safetensors", f"optimizer-round{state['round']}.pt"
            if state["phase"] == "sweep":  # the surrogate changes only in the training phase
                save_model(self.surrogate.model, str(directory / "surrogate.tmp"))
                torch.save(self.optimizer.state_dict(), directory / "optimizer.tmp")
                os.replace(directory / "surrogate.tmp", directory / weights)
                os.replace(directory / "optimizer.tmp", directory / optimizer)
            state = {**state, "weights": weights, "optimizer": optimizer}
            (directory / "state.json.tmp").write_text(json.dumps(state))
            os.replace(directory / "state.json.tmp", directory / "state.json")
            for old in [*directory.glob("surrogate-round*.safetensors"), *directory.glob("optimizer-round*.pt")]:
                if old.name not in (weights, optimizer):
                    old.unlink()
        self.accelerator.wait_for_everyone()

    def _load_checkpoint(self) -> dict | None:
        path = self.checkpoint_dir / "state.json" if self.checkpoint_dir is not None else None
        if path is None or not path.exists():
            return None
        state = json.loads(path.read_text())
        device = self.accelerator.device
        load_model(self.surrogate.model, str(self.checkpoint_dir / state["weights"]), device=str(device))
        self.optimizer.load_state_dict(torch.load(self.checkpoint_dir / state["optimizer"], map_location=device, weights_only=True))
        logger.info("resuming MEM from %s at round %d (%s)", self.checkpoint_dir, state["round"], state["phase"])
        return state

    def run(self) -> list[dict]:
        """All rounds until the stop rule; returns the history (one dict per round)."""
        config = self.config
        state = self._load_checkpoint()
        history: list[dict] = state["history"] if state else []
        if history and config.stop_loss is not None and history[-1]["protected_loss"] < config.stop_loss:
            return history
        first = 1 if state is None else state["round"] + (1 if state["phase"] == "done" else 0)
        for round_index in tqdm(range(first, config.max_rounds + 1), desc="MEM rounds", disable=not self.progress):
            started = time.perf_counter()
            if state is not None and state["round"] == round_index and state["phase"] == "sweep":
                surrogate_loss, started = state["surrogate_loss"], started - state["seconds"]
            else:
                surrogate_loss = self.train_surrogate(round_index)
                self._save_checkpoint(
                    {"round": round_index, "phase": "sweep", "surrogate_loss": surrogate_loss,
                     "seconds": time.perf_counter() - started, "history": history}
                )
            protected_loss, clean_loss = self.sweep(round_index)
            record = {
                "round": round_index,
                "surrogate_loss": surrogate_loss,
                "protected_loss": protected_loss,
                "clean_loss": clean_loss,
                "seconds": time.perf_counter() - started,
            }
            history.append(record)
            self._save_checkpoint({"round": round_index, "phase": "done", "history": history})
            logger.info("MEM round %d: %s", round_index, record)
            if config.stop_loss is not None and protected_loss < config.stop_loss:
                logger.info("stop: protected loss %.4f < stop_loss %.4f", protected_loss, config.stop_loss)
                break
        self.surrogate.eval()
        return history
