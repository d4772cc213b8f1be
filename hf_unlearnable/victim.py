"""The victim: train a CLIP (or a SigLIP) on a (possibly protected) data set, measure retrieval on a clean split.

This is how the MEM paper measures protection: an unauthorised trainer fits a CLIP to the
published copy; if the copy is unlearnable, that model retrieves no better than chance on clean
test data, while the same model trained on the clean copy does well. Any family of
`hf_unlearnable.families` is a victim, trained with its own loss (`ImageTextModel.training_loss`).

    result = train_victim(protected["train"], clean["test"], tiny_clip_config(), processor, epochs=10)
    result.final["t2i_r1"], result.history  # one entry per evaluation (epoch 0 = before training)

`retrieval_scores` is the evaluation alone (Recall@1/5/10, MedR, MeanR in both directions).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, get_cosine_schedule_with_warmup

from .checks import check_dataset
from .devices import build_accelerator
from .errors import check_finite
from .families import image_text_model, load_image_text_model
from .imagetext import ImageTextModel
from .metrics import retrieval_metrics
from .retrieval import RetrievalSet, embed_and_rank, pad_token_id, pad_token_ids, retrieval_scores, tokenize
from .surrogate import build_optimizer, clip_training_step, frozen, pixels_from_uint8

__all__ = ["Defense", "VictimResult", "retrieval_scores", "train_victim"]

logger = logging.getLogger(__name__)

#: ``defense(pixels, captions, generator) -> (pixels, captions)``; see `train_victim`.
Defense = Callable[[torch.Tensor, list[str], torch.Generator], tuple[torch.Tensor, list[str]]]

# CLIP's AdamW settings (Radford et al. 2021; open_clip's defaults for ViTs).
_ADAM_BETAS = (0.9, 0.98)
_ADAM_EPS = 1e-6


@dataclass
class VictimResult:
    """What `train_victim` returns.

    Attributes:
        history: one dict per evaluation (epoch 0 = before training, then after every epoch) with
            ``epoch``, ``train_loss`` (mean over the epoch's steps; NaN for epoch 0), ``seconds``
            (training wall time of that epoch; 0 for epoch 0), ``eval_seconds`` and every key
            of `hf_unlearnable.metrics.retrieval_metrics`.
        model: the trained transformers model (`CLIPModel`, `SiglipModel`; unwrapped, in eval mode,
            on the training device).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation (after the last epoch)."""
        return self.history[-1]


# ---------------------------------------------------------------------------------------- training


def _epoch_batches(order: np.ndarray, batch_size: int, num_processes: int) -> list[np.ndarray]:
    """Consecutive global batches of `order`; each trimmed to a multiple of the process count,
    and dropped only when fewer than 2 samples remain (a contrastive batch needs a negative)."""
    batches = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        batch = batch[: len(batch) - len(batch) % num_processes]
        if len(batch) >= 2:
            batches.append(batch)
    return batches


def _apply_defense(
    defense: Defense,
    pixels: torch.Tensor,
    captions: list[str],
    generator: torch.Generator,
    loss: Callable | None = None,
) -> tuple[torch.Tensor, list[str]]:
    shape = tuple(pixels.shape)
    result = defense(pixels, captions, generator) if loss is None else defense(pixels, captions, generator, loss=loss)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"defense must return a (pixels, captions) tuple, got {type(result).__name__}.")
    new_pixels, new_captions = result
    if not isinstance(new_pixels, torch.Tensor) or tuple(new_pixels.shape) != shape:
        got = tuple(new_pixels.shape) if isinstance(new_pixels, torch.Tensor) else type(new_pixels).__name__
        raise ValueError(f"defense must return pixels of the shape it was given, {shape}; got {got}.")
    new_captions = list(new_captions)
    if len(new_captions) != shape[0] or not all(isinstance(text, str) for text in new_captions):
        raise ValueError(f"defense must return a list of {shape[0]} caption strings, one per image.")
    return new_pixels.float(), new_captions


def _check_arguments(**values: Any) -> None:
    def integer(name: str, low: int) -> None:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")

    integer("epochs", 0)
    integer("batch_size", 2)
    integer("eval_batch_size", 1)
    integer("seed", 0)
    if not (isinstance(values["learning_rate"], (int, float)) and values["learning_rate"] > 0):
        raise ValueError(f"learning_rate must be a positive number, got {values['learning_rate']!r}.")
    if not (isinstance(values["weight_decay"], (int, float)) and values["weight_decay"] >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {values['weight_decay']!r}.")
    if not (isinstance(values["warmup_ratio"], (int, float)) and 0 <= values["warmup_ratio"] <= 1):
        raise ValueError(f"warmup_ratio must be in [0, 1], got {values['warmup_ratio']!r}.")
    if values["mixed_precision"] not in ("auto", "no", "fp16", "bf16", "fp8"):
        raise ValueError(
            f"mixed_precision must be 'auto', 'no', 'bf16', 'fp16' or 'fp8', got {values['mixed_precision']!r}."
        )
    if values["defense"] is not None and not callable(values["defense"]):
        raise TypeError(
            f"defense must be a callable (pixels, captions, generator) -> (pixels, captions) or None, got {type(values['defense']).__name__}."
        )


# ---------------------------------------------------------------------------------------- data


@dataclass
class TrainingSet:
    """The training split decoded and tokenised once (``split``: uint8 images at the model's
    resolution, every caption's text and unpadded ids, flat) and the captions each image owns
    (``offsets[i] : offsets[i] + counts[i]``)."""

    split: RetrievalSet
    counts: np.ndarray  # int64 (num_images,)
    offsets: np.ndarray  # int64 (num_images,)

    @classmethod
    def read(
        cls,
        ds: datasets.Dataset,
        tokenizer: Any,
        image_size: int,
        context_length: int,
        image_column: str,
        caption_column: str,
    ) -> TrainingSet:
        split = RetrievalSet.read(ds, tokenizer, image_size, context_length, image_column, caption_column)
        counts = np.bincount(split.image_index, minlength=len(split.images)).astype(np.int64)
        return cls(split, counts, np.concatenate([[0], np.cumsum(counts)[:-1]]))

    def pick_captions(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One caption of each image of ``batch``, drawn from ``rng``: their flat indices."""
        return self.offsets[batch] + rng.integers(0, self.counts[batch])


# ---------------------------------------------------------------------------------------- one victim's training


@dataclass
class VictimTraining:
    """A victim being trained: the `accelerator.prepare`-d wrapper ``model`` (``towers`` unwrapped),
    its optimizer and schedule, and the loss it trains with (`ImageTextModel.training_loss`)."""

    accelerator: Any
    model: nn.Module
    towers: ImageTextModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss: nn.Module
    pad_id: int

    @classmethod
    def prepare(
        cls,
        towers: ImageTextModel,
        accelerator: Any,
        learning_rate: float,
        weight_decay: float,
        warmup_ratio: float,
        total_steps: int,
    ) -> VictimTraining:
        """CLIP's AdamW (betas 0.9/0.98, eps 1e-6), linear warm-up then cosine decay per step."""
        optimizer = build_optimizer(towers, learning_rate, weight_decay, betas=_ADAM_BETAS, eps=_ADAM_EPS)
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(warmup_ratio * total_steps), total_steps)
        loss = towers.training_loss(gather=accelerator.num_processes > 1)
        model, optimizer, scheduler = accelerator.prepare(towers, optimizer, scheduler)
        return cls(
            accelerator,
            model,
            accelerator.unwrap_model(model),
            optimizer,
            scheduler,
            loss,
            pad_token_id(towers.tokenizer),
        )

    def defense_loss(self) -> Callable[[torch.Tensor, Sequence[str]], torch.Tensor]:
        """``loss(pixels, captions)``: the victim's own loss on one local batch (one process's
        negatives), for defenses that attack the model (``needs_model``)."""
        local_loss = self.towers.training_loss(gather=False)
        device, context_length = self.accelerator.device, self.towers.context_length

        def victim_loss(adv_pixels: torch.Tensor, adv_captions: Sequence[str]) -> torch.Tensor:
            ids, mask = pad_token_ids(tokenize(self.towers.tokenizer, list(adv_captions), context_length), self.pad_id)
            with self.accelerator.autocast():
                features = self.towers(adv_pixels.to(device), ids.to(device), mask.to(device))
            return local_loss(*features, self.towers.logit_scale(), self.towers.logit_bias())

        return victim_loss

    def batch_inputs(
        self,
        data: TrainingSet,
        local: np.ndarray,
        chosen: np.ndarray,
        defense: Defense | None,
        generator: torch.Generator,
        defense_loss: Callable | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels, input_ids, attention_mask) of this process's images ``local`` with captions ``chosen``,
        through ``defense`` when there is one (its captions re-tokenised)."""
        pixels = pixels_from_uint8(torch.from_numpy(data.split.images[local]))
        if defense is None:
            input_ids, attention_mask = pad_token_ids([data.split.token_ids[c] for c in chosen], self.pad_id)
            return pixels, input_ids, attention_mask
        batch_texts = [data.split.texts[c] for c in chosen]
        if defense_loss is not None:
            with frozen(self.towers):
                pixels, batch_texts = _apply_defense(defense, pixels, batch_texts, generator, defense_loss)
        else:
            pixels, batch_texts = _apply_defense(defense, pixels, batch_texts, generator)
        input_ids, attention_mask = pad_token_ids(
            tokenize(self.towers.tokenizer, batch_texts, self.towers.context_length), self.pad_id
        )
        return pixels, input_ids, attention_mask

    def train_epoch(
        self,
        data: TrainingSet,
        rng: np.random.Generator,
        batch_size: int,
        defense: Defense | None,
        generator: torch.Generator,
        defense_loss: Callable | None,
    ) -> float:
        """One pass in a random order from ``rng`` (the same on every process, each training its
        share of every global batch); returns the mean training loss over processes and steps."""
        num_processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        self.model.train()
        loss_sum = torch.zeros((), device=self.accelerator.device)
        batches = _epoch_batches(rng.permutation(len(data.split.images)), batch_size, num_processes)
        for batch in batches:
            chosen = data.pick_captions(batch, rng)  # one caption per image
            share = len(batch) // num_processes
            local, chosen = batch[rank * share : (rank + 1) * share], chosen[rank * share : (rank + 1) * share]
            pixels, input_ids, attention_mask = self.batch_inputs(data, local, chosen, defense, generator, defense_loss)
            loss_sum += clip_training_step(
                self.model,
                self.towers,
                self.loss,
                self.optimizer,
                self.accelerator,
                pixels,
                input_ids,
                attention_mask,
                self.scheduler,
            )
        return float(self.accelerator.reduce(loss_sum, reduction="mean")) / len(batches)

    def evaluate(
        self, eval_data: RetrievalSet, batch_size: int, epoch: int, train_loss: float, seconds: float
    ) -> dict[str, float]:
        """One history entry: the epoch, its loss and time, and retrieval on the clean ``eval_data``."""
        start = time.perf_counter()
        with self.accelerator.autocast():
            metrics = embed_and_rank(
                self.towers, eval_data, self.pad_id, batch_size, self.accelerator.device, retrieval_metrics
            )
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": seconds,
            "eval_seconds": time.perf_counter() - start,
        }
        entry.update(metrics)
        logger.info(
            "victim epoch %d: train loss %.4f, i2t R@1 %.2f, t2i R@1 %.2f, t2i MedR %.1f (%.1f s)",
            epoch,
            train_loss,
            metrics["i2t_r1"],
            metrics["t2i_r1"],
            metrics["t2i_medr"],
            seconds,
        )
        return entry


# ---------------------------------------------------------------------------------------- train_victim


def train_victim(
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    model: CLIPModel | CLIPConfig | SiglipModel | SiglipConfig | str | os.PathLike,
    processor: Any = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    weight_decay: float = 0.2,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    defense: Defense | None = None,
    mixed_precision: str = "no",
    progress: bool = True,
    eval_batch_size: int = 256,
) -> VictimResult:
    """Train a CLIP (or a SigLIP) contrastively on `train_ds`; evaluate retrieval on the clean `eval_ds` per epoch.

    The victim of the MEM paper: trained on the protected copy, it should stay near chance on
    clean data. Training is CLIP's: symmetric InfoNCE over the batch (negatives gathered from all
    processes under ``accelerate launch``), AdamW (betas 0.9/0.98, eps 1e-6; no weight decay for
    norms, biases and the logit scale), linear warm-up then cosine decay per step, logit scale
    clamped at 100. A SigLIP victim trains the same way with SigLIP's sigmoid loss instead
    (`hf_unlearnable.losses.SigLipLoss`, in one process; from scratch its logit scale and bias
    start at the paper's log 10 and -10) and reads every caption padded to its full context.
    Train images are decoded once to uint8 at the model's resolution; each epoch
    visits them in a seeded random order (a last batch of a single sample is dropped). When the
    caption column holds lists, each step uses one randomly chosen caption per image (seeded);
    evaluation uses all of them.

    Args:
        train_ds: the (possibly protected) training set.
        eval_ds: the clean evaluation split; evaluated before training (epoch 0) and after
            every epoch with `retrieval_scores`.
        model: a `CLIPModel` or `SiglipModel` (fine-tuned; a deep copy, the caller's model is
            untouched), a `CLIPConfig` or `SiglipConfig` (trained from scratch as in the paper,
            weights initialised from `seed`) or a Hub id / local path (`from_pretrained`,
            safetensors only; the family from its config).
        processor: the model's processor (`CLIPProcessor`, `SiglipProcessor`: tokenizer and image
            normalisation); required for a model or config, loaded from the path otherwise.
        image_column, caption_column: column names (the same in both data sets).
        epochs: passes over `train_ds` (0: evaluate only).
        batch_size: the global contrastive batch (split over processes); at least 2.
        learning_rate, weight_decay, warmup_ratio: AdamW peak rate, decoupled weight decay and the
            fraction of all steps spent in linear warm-up.
        seed: model init (CLIPConfig), epoch order, caption choice, the defense's generator and
            torch's global RNG during training (restored afterwards).
        defense: what an unauthorised trainer might do to each training batch before the forward
            pass, called as ``defense(pixels, captions, generator) -> (pixels, captions)`` with
            ``pixels`` a float CPU tensor (B, 3, H, W) in [0, 1] (this process's share of the
            batch, the model's resolution), ``captions`` the B caption strings of those images
            and ``generator`` a seeded CPU `torch.Generator` for any randomness. It returns pixels
            of the same shape (values are used as given; keep them in [0, 1]) and B captions;
            the captions are re-tokenised, so text defenses may edit the strings. It may modify
            its inputs in place. None: no defense. Two optional hooks
            (`hf_unlearnable.defenses` uses both): a ``fit(captions)`` method is called once
            before training with every training caption (corpus statistics); a defense with
            ``needs_model = True`` is called with a keyword ``loss=``, a closure
            ``loss(pixels, captions) -> scalar`` giving the victim's current contrastive loss on
            this process's batch (parameters frozen, gradients to the pixels only; adversarial
            training).
        mixed_precision: Accelerate's setting ("no", "bf16", "fp16"; "auto" = bf16 on a GPU that
            supports it, else "no", as in `MEMConfig`). One value per process: Accelerate refuses
            a second, different value in the same process (e.g. after protecting with another).
        progress: show a tqdm bar over epochs (main process only).
        eval_batch_size: batch size of the evaluations.

    Returns:
        `VictimResult` with the per-epoch ``history`` and the trained ``model``. For the same seed,
        data, process count and machine, the history (all but the ``*seconds`` keys) is identical.

    Raises:
        ValueError: a missing column, an empty training or evaluation set (or a training set of
            one row), a bad caption or image (naming its row), ``batch_size < 2``, ``epochs < 0``
            or another argument out of range.
        TypeError: data sets that are not a `datasets.Dataset`, a model of the wrong type, a
            defense that is not callable or returns the wrong thing.

    Example:
        >>> model, processor = tiny_clip()
        >>> result = train_victim(synthetic_captions(2000), synthetic_captions(1000, seed=1),
        ...                       model.config, processor, epochs=5)
        >>> [entry["t2i_r1"] for entry in result.history]
    """
    _check_arguments(
        epochs=epochs,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        mixed_precision=mixed_precision,
        defense=defense,
    )
    check_dataset(train_ds, image_column, caption_column, name="train_ds", min_rows=2)
    check_dataset(eval_ds, image_column, caption_column, name="eval_ds")
    model, processor = load_image_text_model(model, processor, seed)
    towers = image_text_model(model, processor)
    data = TrainingSet.read(
        train_ds, towers.tokenizer, towers.image_size, towers.context_length, image_column, caption_column
    )
    eval_data = RetrievalSet.read(
        eval_ds, towers.tokenizer, towers.image_size, towers.context_length, image_column, caption_column
    )

    accelerator = build_accelerator(mixed_precision, step_scheduler_with_optimizer=False)
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    if batch_size % num_processes:
        logger.warning(
            "batch_size=%d is not a multiple of the %d processes; batches are trimmed to %d.",
            batch_size,
            num_processes,
            batch_size - batch_size % num_processes,
        )
    steps_per_epoch = len(_epoch_batches(np.arange(len(data.split.images)), batch_size, num_processes))
    if epochs and steps_per_epoch == 0:
        raise ValueError(
            f"train_ds has {len(data.split.images)} rows, too few for one batch of at least 2 on each of {num_processes} processes."
        )
    training = VictimTraining.prepare(
        towers, accelerator, learning_rate, weight_decay, warmup_ratio, epochs * steps_per_epoch
    )
    defense_loss = None
    if defense is not None and bool(getattr(defense, "needs_model", False)):
        defense_loss = training.defense_loss()
    if defense is not None and callable(getattr(defense, "fit", None)):
        defense.fit(list(data.split.texts))  # corpus statistics (e.g. rare-word filtering), once

    rng = np.random.default_rng([seed, 0x71C7])  # epoch order and caption choice: identical on every process
    generator = torch.Generator().manual_seed(seed + 1_000_003 * rank)  # the defense's randomness
    device = accelerator.device
    history = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout, if the config has any
        history.append(training.evaluate(eval_data, eval_batch_size, 0, math.nan, 0.0))
        bar = tqdm(
            range(1, epochs + 1), desc="victim", unit="epoch", disable=not progress or not accelerator.is_main_process
        )
        for epoch in bar:
            start = time.perf_counter()
            train_loss = training.train_epoch(data, rng, batch_size, defense, generator, defense_loss)
            check_finite(train_loss, f"victim epoch {epoch} of {epochs} (mean training loss)")
            history.append(
                training.evaluate(eval_data, eval_batch_size, epoch, train_loss, time.perf_counter() - start)
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", t2i_r1=f"{history[-1]['t2i_r1']:.1f}")
        bar.close()
    trained = training.towers.model.eval()
    accelerator.free_memory()
    return VictimResult(history=history, model=trained)
