"""Algorithm 1 of MEM: alternate surrogate training with HotFlip (Eq. 6) and PGD (Eq. 5) sweeps.

    init d = 0, t = random safe tokens
    repeat (round r = 1, 2, ...):
        M steps: train the surrogate on (x + d, t + caption), contrastive loss, AdamW
        for each batch:
            if r <= trigger_rounds: HotFlip update of t
            PGD update of d, caption bodies shuffled inside the batch, triggers kept with images
              (options: trigger dropout, EOT through kornia transformations; see MEMConfig)
    until protected loss < stop_loss or r = max_rounds

This module works on tensors and a `SampleStore`; it knows nothing of `datasets`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..captions import CaptionCodec, TriggerVocabulary
from ..config import MEMConfig
from ..store import SampleStore
from ..surrogate import ContrastiveLoss, Surrogate, build_optimizer, clip_training_step, pixels_from_uint8
from .checkpoint import Checkpointer, DiskCheckpointer
from .eot import EOT
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
        self.pgd = PGD(surrogate, config.epsilon_levels, config.step_levels, config.pgd_steps, EOT(config.eot_transforms))
        self.loss = ContrastiveLoss(gather=False)

    def __call__(self, batch: dict[str, torch.Tensor], update_triggers: bool, generator: torch.Generator) -> BatchResult:
        surrogate, codec, config = self.surrogate, self.codec, self.config
        device = surrogate.image_mean.device
        images, noise = batch["images"].to(device), batch["noise"].to(device)
        triggers, bodies, lengths = batch["triggers"].to(device), batch["bodies"].to(device), batch["lengths"].to(device)
        positions = batch["positions"].to(device) if "positions" in batch else None  # body tokens before the trigger

        if update_triggers and self.hotflip is not None and codec.trigger_length:
            with torch.no_grad():
                image_features = surrogate.image_features(pixels_from_uint8(images, noise))
            input_ids, mask = codec.build(triggers, bodies, lengths, positions)
            slots = codec.slots(positions, len(bodies), device)
            input_ids = self.hotflip(image_features, input_ids, mask, slots)
            triggers = input_ids.gather(1, slots)

        if config.image_noise and config.pgd_steps:
            text_features = self.pgd_text_features(triggers, bodies, lengths, generator, positions)
            noise = self.pgd(images, noise, text_features, generator)

        with torch.no_grad():
            logit_scale = surrogate.logit_scale()
            input_ids, mask = codec.build(triggers, bodies, lengths, positions)
            protected = self.loss(
                surrogate.image_features(pixels_from_uint8(images, noise)), surrogate.text_features(input_ids, mask), logit_scale
            )
            clean_ids, clean_mask = self.clean_codec.build(triggers[:, :0], bodies, lengths)
            clean = self.loss(
                surrogate.image_features(pixels_from_uint8(images)), surrogate.text_features(clean_ids, clean_mask), logit_scale
            )
        return BatchResult(noise, triggers, float(protected), float(clean))

    @torch.no_grad()
    def pgd_text_features(
        self,
        triggers: torch.Tensor,
        bodies: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The text PGD pulls each image toward: with ``shuffle_captions``, (S, B, D) where step s
        pairs image i's own trigger with the caption body of sample ``order_s[i]``, a fresh
        permutation per step drawn from ``generator``; otherwise (B, D), each image's own caption.
        With ``trigger_dropout`` p, each (step, image) is instead, with probability p, the image's
        own caption without any trigger (always (S, B, D) then). ``positions``: where each body
        takes a trigger (`CaptionCodec.encode_positions`); a shuffled body keeps its own."""
        config = self.config
        batch, steps = len(bodies), config.pgd_steps
        if not config.shuffle_captions:
            features = self.surrogate.text_features(*self.codec.build(triggers, bodies, lengths, positions))
        else:
            orders = torch.stack([torch.randperm(batch, generator=generator) for _ in range(steps)]).flatten().to(bodies.device)
            # one no-grad text-tower pass over the S x B pairings (a feature depends on trigger and body jointly)
            shuffled_positions = None if positions is None else positions[orders]
            input_ids, mask = self.codec.build(triggers.repeat(steps, 1), bodies[orders], lengths[orders], shuffled_positions)
            features = self.surrogate.text_features(input_ids, mask).view(steps, batch, -1)
        if not config.trigger_dropout:
            return features
        dropped = (torch.rand(steps, batch, generator=generator) < config.trigger_dropout).to(bodies.device)
        own = self.surrogate.text_features(*self.clean_codec.build(triggers[:, :0], bodies, lengths))
        return torch.where(dropped.unsqueeze(-1), own.unsqueeze(0), features.expand(steps, *own.shape))


def split_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split into ceil(n / batch_size) near-equal batches, so no batch is left with a single sample."""
    count = max(1, -(-len(order) // batch_size))
    return [part for part in np.array_split(order, count) if len(part)]


class MEMLoop:
    """Runs Algorithm 1 over a `SampleStore`, writing noise and triggers back into it.

    With several processes (``accelerate launch``), the surrogate trains with DDP and global
    negatives, and each sweep's batches are sharded by batch number: process p takes batches
    p, p + P, p + 2P, ... Sweeps need no collective per batch, so uneven shards cannot hang.

    Persistence is the ``checkpointer``'s (`mem.checkpoint`): with a `DiskCheckpointer` a rerun
    resumes where a killed run stopped, and the output is identical to an uninterrupted run.

    Args:
        surrogate: the model being trained and attacked.
        store: per-sample state (images, noise, triggers, captions).
        codec: builds token ids with trigger slots.
        vocabulary: allowed trigger tokens (None when trigger_length = 0).
        config: the MEM settings.
        accelerator: devices, processes and autocast.
        progress: show tqdm bars (local main process only).
        checkpoint_dir: shorthand for ``checkpointer=DiskCheckpointer(checkpoint_dir, accelerator)``.
        checkpointer: where round checkpoints and sweep commits go (default: nowhere, no resume).
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
        checkpointer: Checkpointer | None = None,
    ):
        self.surrogate = surrogate
        self.store = store
        self.codec = codec
        self.config = config
        self.accelerator = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.progress = progress and accelerator.is_local_main_process
        if checkpointer is None:
            checkpointer = DiskCheckpointer(checkpoint_dir, accelerator) if checkpoint_dir is not None else Checkpointer()
        self.checkpointer = checkpointer
        self.step = MEMStep(surrogate, codec, vocabulary, config)
        self.loss = ContrastiveLoss(gather=self.world > 1)
        self.optimizer = build_optimizer(surrogate, config.learning_rate, config.weight_decay)
        self.model, self.optimizer = accelerator.prepare(surrogate, self.optimizer)

    def run(self) -> list[dict]:
        """Algorithm 1: rounds of surrogate training then a HotFlip + PGD sweep, until the stop rule.

        Returns the history (one dict per round). A saved state (``checkpointer``) is resumed."""
        config = self.config
        state = self.checkpointer.load(self.surrogate, self.optimizer)
        history: list[dict] = state["history"] if state else []
        if history and self._should_stop(history[-1]["protected_loss"]):
            return history
        first = 1 if state is None else state["round"] + (1 if state["phase"] == "done" else 0)
        for round_index in tqdm(range(first, config.max_rounds + 1), desc="MEM rounds", disable=not self.progress):
            started = time.perf_counter()
            if state is not None and (state["round"], state["phase"]) == (round_index, "sweep"):
                surrogate_loss, started = state["surrogate_loss"], started - state["seconds"]  # trained before the kill
            else:
                if round_index in self.restart_rounds():
                    self.restart_surrogate(round_index)
                surrogate_loss = self.train_surrogate(round_index)  # M steps on (x + d, t + caption)
                self._save(round_index, "sweep", history, surrogate_loss=surrogate_loss, seconds=time.perf_counter() - started)
            protected_loss, clean_loss = self.sweep(round_index)  # HotFlip (early rounds) + PGD on every batch
            history.append(
                {"round": round_index, "surrogate_loss": surrogate_loss, "protected_loss": protected_loss,
                 "clean_loss": clean_loss, "seconds": time.perf_counter() - started}
            )
            self._save(round_index, "done", history)
            logger.info("MEM round %d: %s", round_index, history[-1])
            if self._should_stop(protected_loss):
                logger.info("stop: protected loss %.4f < stop_loss %.4f", protected_loss, config.stop_loss)
                break
        self.surrogate.eval()
        return history

    def restart_rounds(self) -> set[int]:
        """Rounds whose surrogate training starts from fresh weights (``surrogate_restarts``, evenly spaced)."""
        restarts, rounds = self.config.surrogate_restarts, self.config.max_rounds
        return {1 + (index * rounds) // (restarts + 1) for index in range(1, restarts + 1)}

    def restart_surrogate(self, round_index: int) -> None:
        """Fresh random weights from a seed of (seed, round), and an empty optimizer state, on every process."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self._rng(round_index, 3).integers(2**62)))
            fresh = type(self.surrogate.model)(self.surrogate.model.config)
        self.surrogate.model.load_state_dict(fresh.state_dict())
        self.optimizer.state.clear()
        logger.info("MEM round %d: surrogate re-initialised", round_index)

    def train_surrogate(self, round_index: int) -> float:
        """M steps of contrastive training on the current protected data; returns the mean loss."""
        config, store = self.config, self.store
        if config.surrogate_steps == 0:
            return float("nan")
        rng = self._rng(round_index, 0, self.rank)
        stream, position, losses = rng.permutation(len(store)), 0, []
        self.model.train()
        for _ in tqdm(range(config.surrogate_steps), desc=f"round {round_index} surrogate", leave=False, disable=not self.progress):
            if position + config.batch_size > len(stream):
                stream, position = rng.permutation(len(store)), 0
            batch = store.batch(stream[position : position + config.batch_size], rng)
            position += config.batch_size
            if config.trigger_dropout:  # some samples train on their caption alone, as after stripping
                keep = torch.from_numpy(rng.random(len(batch["bodies"])) >= config.trigger_dropout)
                input_ids, mask = self.codec.build_dropped(batch["triggers"], batch["bodies"], batch["lengths"], keep, batch["positions"])
            else:
                input_ids, mask = self.codec.build(batch["triggers"], batch["bodies"], batch["lengths"], batch["positions"])
            pixels = pixels_from_uint8(batch["images"], batch["noise"])
            loss = clip_training_step(self.model, self.surrogate, self.loss, self.optimizer, self.accelerator, pixels, input_ids, mask)
            losses.append(float(loss))
        total, count = self._global_sums(sum(losses), len(losses))
        return total / count

    def sweep(self, round_index: int) -> tuple[float, float]:
        """HotFlip (rounds <= trigger_rounds) and PGD over this process's batches; returns the
        (protected loss, clean loss) over all rows."""
        store, rank = self.store, self.rank
        update_triggers = round_index <= self.config.trigger_rounds
        shard = self.shard(round_index)
        record = self.checkpointer.resume_sweep(store, rank)
        if record is None or record.get("round") != round_index:
            record = {"round": round_index, "done": 0, "protected": 0.0, "clean": 0.0, "rows": 0}
        self.surrogate.eval()
        for position in tqdm(range(record["done"], len(shard)), desc=f"round {round_index} sweep", leave=False, disable=not self.progress):
            number, indices = shard[position]
            rng = self._rng(round_index, 2, number)
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            with self.accelerator.autocast():
                result = self.step(store.batch(indices, rng), update_triggers, generator)
            record = {
                "round": round_index,
                "done": position + 1,
                "protected": record["protected"] + result.protected_loss * len(indices),
                "clean": record["clean"] + result.clean_loss * len(indices),
                "rows": record["rows"] + len(indices),
            }
            noise = result.noise if self.config.image_noise else None
            self.checkpointer.commit(store, rank, indices, noise, result.triggers, record)
        store.sync()
        self.accelerator.wait_for_everyone()
        protected, clean, rows = self._global_sums(record["protected"], record["clean"], record["rows"])
        return protected / rows, clean / rows

    def shard(self, round_index: int) -> list[tuple[int, np.ndarray]]:
        """(batch number, row indices) of this process's share of the round's sweep."""
        batches = split_batches(self._rng(round_index, 1).permutation(len(self.store)), self.config.batch_size)
        return [(number, indices) for number, indices in enumerate(batches) if number % self.world == self.rank]

    # ------------------------------------------------------------------ helpers
    def _should_stop(self, protected_loss: float) -> bool:
        return self.config.stop_loss is not None and protected_loss < self.config.stop_loss

    def _save(self, round_index: int, phase: str, history: list[dict], **extra: float) -> None:
        self.checkpointer.save({"round": round_index, "phase": phase, **extra, "history": history}, self.surrogate, self.optimizer)

    def _rng(self, *keys: int) -> np.random.Generator:
        """A generator that depends only on the seed and the keys, so any batch can be replayed."""
        return np.random.default_rng([self.config.seed, *keys])

    def _global_sums(self, *values: float) -> list[float]:
        """Each value summed over processes (itself with one process)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        if self.world > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor.tolist()
