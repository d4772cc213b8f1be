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

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
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

    Args:
        surrogate: the model being trained and attacked.
        store: per-sample state (images, noise, triggers, captions).
        codec: builds token ids with trigger slots.
        vocabulary: allowed trigger tokens (None when trigger_length = 0).
        config: the MEM settings.
        accelerator: devices, processes and autocast.
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
    ):
        self.surrogate = surrogate
        self.store = store
        self.codec = codec
        self.config = config
        self.accelerator = accelerator
        self.progress = progress and accelerator.is_local_main_process
        self.step = MEMStep(surrogate, codec, vocabulary, config)
        self.loss = ContrastiveLoss(gather=accelerator.num_processes > 1)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(surrogate, config.weight_decay), lr=config.learning_rate
        )
        self.model, self.optimizer = accelerator.prepare(surrogate, self.optimizer)

    def _generator(self, round_index: int, phase: int) -> np.random.Generator:
        rank = self.accelerator.process_index
        return np.random.default_rng([self.config.seed, round_index, phase, rank])

    def train_surrogate(self, round_index: int) -> float:
        """M steps of contrastive training on the current protected data; returns the mean loss."""
        config, store = self.config, self.store
        if config.surrogate_steps == 0:
            return float("nan")
        rng = self._generator(round_index, 0)
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
        return float(np.mean(losses))

    def sweep(self, round_index: int) -> tuple[float, float]:
        """HotFlip (early rounds) and PGD over every batch; returns (protected loss, clean loss)."""
        config, store = self.config, self.store
        rng = self._generator(round_index, 1)
        torch_generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batches = split_batches(rng.permutation(len(store)), config.batch_size)
        update_triggers = round_index <= config.trigger_rounds
        protected, clean, weights = [], [], []
        self.surrogate.eval()
        for indices in tqdm(batches, desc=f"round {round_index} sweep", leave=False, disable=not self.progress):
            batch = store.batch(indices, rng)
            with self.accelerator.autocast():
                result = self.step(batch, update_triggers, torch_generator)
            store.write(indices, noise=result.noise if config.image_noise else None, triggers=result.triggers)
            protected.append(result.protected_loss)
            clean.append(result.clean_loss)
            weights.append(len(indices))
        store.flush()
        return float(np.average(protected, weights=weights)), float(np.average(clean, weights=weights))

    def run(self) -> list[dict]:
        """All rounds until the stop rule; returns the history (one dict per round)."""
        config = self.config
        history = []
        for round_index in tqdm(range(1, config.max_rounds + 1), desc="MEM rounds", disable=not self.progress):
            started = time.perf_counter()
            surrogate_loss = self.train_surrogate(round_index)
            protected_loss, clean_loss = self.sweep(round_index)
            record = {
                "round": round_index,
                "surrogate_loss": surrogate_loss,
                "protected_loss": protected_loss,
                "clean_loss": clean_loss,
                "seconds": time.perf_counter() - started,
            }
            history.append(record)
            logger.info("MEM round %d: %s", round_index, record)
            if config.stop_loss is not None and protected_loss < config.stop_loss:
                logger.info("stop: protected loss %.4f < stop_loss %.4f", protected_loss, config.stop_loss)
                break
        self.surrogate.eval()
        return history


def protect_batch(
    step: MEMStep, batch: dict[str, torch.Tensor], rounds: int, generator: torch.Generator
) -> BatchResult:
    """Error-minimise noise and trigger of one batch against a frozen surrogate (rows not fitted on)."""
    result = None
    for _ in range(max(1, rounds)):
        result = step(batch, update_triggers=True, generator=generator)
        batch = {**batch, "noise": result.noise.cpu(), "triggers": result.triggers.cpu()}
    return result
