"""Algorithm 1 of MEM: alternate surrogate training with HotFlip (Eq. 6) and PGD (Eq. 5) sweeps.

    init d = 0, t = random safe tokens
    repeat (round r = 1, 2, ...):
        M steps: train the surrogate on (x + d, t + caption), contrastive loss, AdamW
        for each batch:
            if r <= trigger_rounds: HotFlip update of t
            PGD update of d, caption bodies shuffled inside the batch, triggers kept with images
              (option: EOT through kornia transformations; see MEMConfig)
    until protected loss < stop_loss or r = max_rounds

The layered method (``MEMConfig(method="layered")``) runs the same rounds in two stages, each
round described by a `RoundPlan`:

    pixel layer, rounds 1..P (P = max_rounds, or earlier by stop_loss):
        M steps on (x + d, caption), no trigger; PGD of d toward each image's own caption (EOT)
    trigger layer, rounds P+1..P+trigger_rounds:
        surrogate back to its initial weights; M steps on (x + d, t + caption); HotFlip of t

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
from ..errors import check_finite
from ..losses import ContrastiveLoss
from ..store import SampleStore
from ..surrogate import Surrogate, build_optimizer, clip_training_step, pixels_from_uint8
from .checkpoint import Checkpointer, DiskCheckpointer
from .eot import EOT
from .hotflip import HotFlip
from .pgd import PGD

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """What one round of `MEMLoop` does.

    Attributes:
        stage: "mem" (Algorithm 1), "pixels" or "triggers" (the two layers of the layered method).
        triggered: the surrogate trains on (and the round's protected loss uses) captions with
            their triggers; False: own captions alone.
        update_triggers: HotFlip in this round's sweep.
        update_noise: PGD in this round's sweep.
        restart: the surrogate goes back to its initial weights (and a fresh optimizer state) first.
    """

    stage: str
    triggered: bool
    update_triggers: bool
    update_noise: bool
    restart: bool = False


@dataclass
class BatchResult:
    noise: torch.Tensor  # int8 (B, H, W, 3)
    triggers: torch.Tensor  # long (B, k)
    protected_loss: float  # loss on (x + d, t + own caption) after the update (no t for an untriggered round)
    clean_loss: float  # loss on (x, caption) without protection


class MEMStep:
    """One sweep step on one batch: HotFlip on the triggers, then PGD on the noise.

    What PGD pulls each image toward follows ``config``: for "mem", the image's own trigger with
    shuffled caption bodies (``shuffle_captions``); for "layered" (and EM), its own caption with no
    trigger, so the noise is a shortcut of its own that deleting the trigger cannot remove.
    """

    def __init__(
        self, surrogate: Surrogate, codec: CaptionCodec, vocabulary: TriggerVocabulary | None, config: MEMConfig
    ):
        self.surrogate = surrogate
        self.codec = codec
        self.clean_codec = CaptionCodec(codec.tokenizer, 0, codec.max_tokens)
        self.config = config
        self.hotflip = (
            HotFlip(surrogate, vocabulary.mask, config.hotflip_candidates) if vocabulary is not None else None
        )
        self.pgd = PGD(
            surrogate, config.epsilon_levels, config.step_levels, config.pgd_steps, EOT(config.eot_transforms)
        )
        self.loss = ContrastiveLoss(gather=False)

    def untriggered(self, bodies: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of each caption alone, with no trigger: ``[start] body [end]``."""
        return self.clean_codec.build(bodies.new_zeros((len(bodies), 0)), bodies, lengths)

    def __call__(
        self,
        batch: dict[str, torch.Tensor],
        update_triggers: bool,
        generator: torch.Generator,
        *,
        update_noise: bool = True,
        triggered: bool = True,
    ) -> BatchResult:
        """HotFlip (``update_triggers``) then PGD (``update_noise`` and ``config.image_noise``) on one
        batch; the protected loss is measured with the triggers in the captions when ``triggered``."""
        surrogate, codec, config = self.surrogate, self.codec, self.config
        device = surrogate.image_mean.device
        images, noise = batch["images"].to(device), batch["noise"].to(device)
        triggers, bodies, lengths = (
            batch["triggers"].to(device),
            batch["bodies"].to(device),
            batch["lengths"].to(device),
        )
        positions = batch["positions"].to(device) if "positions" in batch else None  # body tokens before the trigger

        # Features computed once and read again below: the same calls on the same inputs give the same
        # numbers, so the losses are those of a fresh computation, bit for bit.
        image_features = None  # of x + d while d is unchanged (HotFlip's, reused when no PGD follows)
        clean_text = None  # of each caption alone (PGD's, when that is what PGD pulls toward)
        if update_triggers and self.hotflip is not None and codec.trigger_length:
            with torch.no_grad():
                image_features = surrogate.image_features(pixels_from_uint8(images, noise))
            input_ids, mask = codec.build(triggers, bodies, lengths, positions)
            slots = codec.slots(positions, len(bodies), device)
            input_ids = self.hotflip(image_features, input_ids, mask, slots)
            triggers = input_ids.gather(1, slots)

        if update_noise and config.image_noise and config.pgd_steps:
            text_features = self.pgd_text_features(triggers, bodies, lengths, generator, positions)
            if self.pgd_pulls_toward_own_captions:
                clean_text = text_features
            noise = self.pgd(images, noise, text_features, generator)
            image_features = None  # d moved

        with torch.no_grad():
            logit_scale = surrogate.logit_scale()
            if clean_text is None:
                clean_text = surrogate.text_features(*self.untriggered(bodies, lengths))
            # untriggered rounds (the pixel layer, EM) measure the protected loss on the captions alone
            protected_text = (
                surrogate.text_features(*codec.build(triggers, bodies, lengths, positions)) if triggered else clean_text
            )
            if image_features is None:
                image_features = surrogate.image_features(pixels_from_uint8(images, noise))
            protected = self.loss(image_features, protected_text, logit_scale)
            clean = self.loss(surrogate.image_features(pixels_from_uint8(images)), clean_text, logit_scale)
        return BatchResult(noise, triggers, float(protected), float(clean))

    @property
    def pgd_pulls_toward_own_captions(self) -> bool:
        """`pgd_text_features` is each caption alone, exactly as `untriggered` builds it: the layered
        method's pixel layer, and EM (no trigger, no shuffling: the codec builds the same ids)."""
        config = self.config
        return config.method == "layered" or (not config.shuffle_captions and self.codec.trigger_length == 0)

    @torch.no_grad()
    def pgd_text_features(
        self,
        triggers: torch.Tensor,
        bodies: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The text PGD pulls each image toward: for the layered method (B, D), each image's own
        caption without its trigger; with ``shuffle_captions``, (S, B, D) where step s
        pairs image i's own trigger with the caption body of sample ``order_s[i]``, a fresh
        permutation per step drawn from ``generator``; otherwise (B, D), each image's own caption.
        ``positions``: where each body takes a trigger (`CaptionCodec.encode_positions`); a shuffled
        body keeps its own."""
        config = self.config
        batch, steps = len(bodies), config.pgd_steps
        if config.method == "layered":  # the pixel layer never sees a trigger
            return self.surrogate.text_features(*self.untriggered(bodies, lengths))
        if not config.shuffle_captions:
            return self.surrogate.text_features(*self.codec.build(triggers, bodies, lengths, positions))
        orders = (
            torch.stack([torch.randperm(batch, generator=generator) for _ in range(steps)]).flatten().to(bodies.device)
        )
        # One no-grad text-tower pass over the distinct (trigger, body) pairings of the S x B (a
        # feature depends on trigger and body jointly): a pair drawn at several steps is computed
        # once (about a fifth of the pairs at S = 8, B = 16). Every body is in every permutation, so
        # the padded width is that of a pass over all S x B.
        owners = torch.arange(batch, device=bodies.device).repeat(steps)
        pairs, where = torch.unique(owners * batch + orders, return_inverse=True)
        owner, body = pairs // batch, pairs % batch
        input_ids, mask = self.codec.build(
            triggers[owner], bodies[body], lengths[body], None if positions is None else positions[body]
        )
        return self.surrogate.text_features(input_ids, mask)[where].view(steps, batch, -1)


def float_dtype_for_sums(device: torch.device) -> torch.dtype:
    """float64 where the device has it; float32 on Apple's MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


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
            checkpointer = (
                DiskCheckpointer(checkpoint_dir, accelerator) if checkpoint_dir is not None else Checkpointer()
            )
        self.checkpointer = checkpointer
        self.step = MEMStep(surrogate, codec, vocabulary, config)
        self.loss = ContrastiveLoss(gather=self.world > 1)
        self.optimizer = build_optimizer(surrogate, config.learning_rate, config.weight_decay)
        self.model, self.optimizer = accelerator.prepare(surrogate, self.optimizer)
        # the trigger layer of the layered method starts from the surrogate as it was given
        self.initial_weights = (
            {name: value.detach().clone() for name, value in surrogate.model.state_dict().items()}
            if config.method == "layered" and config.trigger_length
            else None
        )

    def run(self) -> list[dict]:
        """Algorithm 1: rounds of surrogate training then a HotFlip + PGD sweep, until the stop rule
        (for the layered method: the pixel layer's rounds, then the trigger layer's; `plan`).

        Returns the history, one dict per round: ``round``, ``stage`` ("mem", "pixels" or "triggers"),
        ``surrogate_loss`` (mean over the M training steps), ``protected_loss`` and ``clean_loss``
        (after the sweep, over all rows), ``seconds`` (wall time of the round) and
        ``surrogate_seconds`` (the part of it spent training the surrogate; the rest is the sweep).
        A saved state (``checkpointer``) is resumed."""
        state = self.checkpointer.load(self.surrogate, self.optimizer)
        history: list[dict] = state["history"] if state else []
        round_index = 1 if state is None else state["round"] + (1 if state["phase"] == "done" else 0)
        bar = tqdm(total=self.planned_rounds(), initial=len(history), desc="MEM rounds", disable=not self.progress)
        while (plan := self.plan(round_index, history)) is not None:
            started = time.perf_counter()
            if state is not None and (state["round"], state["phase"]) == (round_index, "sweep"):
                surrogate_loss, started = state["surrogate_loss"], started - state["seconds"]  # trained before the kill
                surrogate_seconds = state["seconds"]
            else:
                if plan.restart:
                    self.restore_initial_surrogate(round_index)
                surrogate_loss = self.train_surrogate(round_index, plan.triggered)  # M steps on (x + d, [t +] caption)
                surrogate_seconds = time.perf_counter() - started
                self._save(round_index, "sweep", history, surrogate_loss=surrogate_loss, seconds=surrogate_seconds)
            protected_loss, clean_loss = self.sweep(round_index, plan)  # HotFlip and/or PGD on every batch
            history.append(
                {
                    "round": round_index,
                    "stage": plan.stage,
                    "surrogate_loss": surrogate_loss,
                    "protected_loss": protected_loss,
                    "clean_loss": clean_loss,
                    "seconds": time.perf_counter() - started,
                    "surrogate_seconds": surrogate_seconds,  # of "seconds": the M training steps; the rest is the sweep
                }
            )
            self._save(round_index, "done", history)
            logger.info("MEM round %d: %s", round_index, history[-1])
            round_index += 1
            bar.update(1)
        bar.close()
        self.surrogate.eval()
        return history

    def plan(self, round_index: int, history: list[dict]) -> RoundPlan | None:
        """What round ``round_index`` does, given the rounds done (``history``); None: the run is over.

        "mem": rounds 1..max_rounds, HotFlip in the first trigger_rounds, until the protected loss
        is below stop_loss. "layered": pixel rounds until max_rounds or the stop rule, then
        trigger_rounds rounds of the trigger layer, the first starting from the initial surrogate."""
        config = self.config
        if config.method == "mem":
            if round_index > config.max_rounds or (history and self._should_stop(history[-1]["protected_loss"])):
                return None
            return RoundPlan(
                "mem",
                triggered=config.trigger_length > 0,
                update_triggers=round_index <= config.trigger_rounds,
                update_noise=config.image_noise,
            )
        pixel_rounds = [record for record in history if record.get("stage") == "pixels"]
        pixels_done = len(pixel_rounds) == config.max_rounds or (
            pixel_rounds and self._should_stop(pixel_rounds[-1]["protected_loss"])
        )
        if not pixels_done:
            return RoundPlan("pixels", triggered=False, update_triggers=False, update_noise=True)
        trigger_round = round_index - len(pixel_rounds)
        if trigger_round > config.trigger_rounds or config.trigger_length == 0:  # k = 0: the pixel layer alone (EM)
            return None
        return RoundPlan(
            "triggers", triggered=True, update_triggers=True, update_noise=False, restart=trigger_round == 1
        )

    def planned_rounds(self) -> int:
        """Rounds of a run that no stop rule ends early (for the progress bar)."""
        config = self.config
        return config.max_rounds + (
            config.trigger_rounds if config.method == "layered" and config.trigger_length else 0
        )

    def restore_initial_surrogate(self, round_index: int) -> None:
        """The surrogate's weights as the loop received them, and an empty optimizer state."""
        self.surrogate.model.load_state_dict(self.initial_weights)
        self.optimizer.state.clear()
        logger.info("MEM round %d: surrogate back to its initial weights for the trigger layer", round_index)

    def train_surrogate(self, round_index: int, triggered: bool = True) -> float:
        """M steps of contrastive training on the current protected data (captions with their
        triggers when ``triggered``, else alone); returns the mean loss."""
        config, store = self.config, self.store
        if config.surrogate_steps == 0:
            return float("nan")
        rng = self._rng(round_index, 0, self.rank)
        stream, position, losses = rng.permutation(len(store)), 0, []
        self.model.train()
        for step in tqdm(
            range(config.surrogate_steps), desc=f"round {round_index} surrogate", leave=False, disable=not self.progress
        ):
            if position + config.batch_size > len(stream):
                stream, position = rng.permutation(len(store)), 0
            batch = store.batch(stream[position : position + config.batch_size], rng)
            position += config.batch_size
            if not triggered:
                input_ids, mask = self.step.untriggered(batch["bodies"], batch["lengths"])
            else:
                input_ids, mask = self.codec.build(
                    batch["triggers"], batch["bodies"], batch["lengths"], batch["positions"]
                )
            pixels = pixels_from_uint8(batch["images"], batch["noise"])
            loss = clip_training_step(
                self.model, self.surrogate, self.loss, self.optimizer, self.accelerator, pixels, input_ids, mask
            )
            losses.append(
                check_finite(
                    float(loss), f"MEM round {round_index}, surrogate step {step + 1} of {config.surrogate_steps}"
                )
            )
        total, count = self._global_sums(sum(losses), len(losses))
        return total / count

    def sweep(self, round_index: int, plan: RoundPlan) -> tuple[float, float]:
        """HotFlip and PGD, as ``plan`` says, over this process's batches; returns the (protected
        loss, clean loss) over all rows."""
        store, rank = self.store, self.rank
        shard = self.shard(round_index)
        record = self.checkpointer.resume_sweep(store, rank)
        if record is None or record.get("round") != round_index:
            record = {"round": round_index, "done": 0, "protected": 0.0, "clean": 0.0, "rows": 0}
        self.surrogate.eval()
        for position in tqdm(
            range(record["done"], len(shard)), desc=f"round {round_index} sweep", leave=False, disable=not self.progress
        ):
            number, indices = shard[position]
            rng = self._rng(round_index, 2, number)
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            with self.accelerator.autocast():
                result = self.step(
                    store.batch(indices, rng),
                    plan.update_triggers,
                    generator,
                    update_noise=plan.update_noise,
                    triggered=plan.triggered,
                )
            where = f"MEM round {round_index}, sweep batch {position + 1} of {len(shard)} (HotFlip and PGD)"
            check_finite(result.protected_loss, where)  # before the commit: the work dir keeps only sound batches
            check_finite(result.clean_loss, where)
            record = {
                "round": round_index,
                "done": position + 1,
                "protected": record["protected"] + result.protected_loss * len(indices),
                "clean": record["clean"] + result.clean_loss * len(indices),
                "rows": record["rows"] + len(indices),
            }
            noise = result.noise if plan.update_noise else None  # False for "mem" without image noise
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
        self.checkpointer.save(
            {"round": round_index, "phase": phase, **extra, "history": history}, self.surrogate, self.optimizer
        )

    def _rng(self, *keys: int) -> np.random.Generator:
        """A generator that depends only on the seed and the keys, so any batch can be replayed."""
        return np.random.default_rng([self.config.seed, *keys])

    def _global_sums(self, *values: float) -> list[float]:
        """Each value summed over processes (itself with one process)."""
        if self.world == 1:
            return [float(value) for value in values]
        device = self.accelerator.device
        tensor = torch.tensor(values, dtype=float_dtype_for_sums(device), device=device)
        return [float(value) for value in self.accelerator.reduce(tensor, reduction="sum").cpu().tolist()]
