"""Persistence of Algorithm 1 behind one small interface, so `MEMLoop` reads as the algorithm.

`Checkpointer` keeps nothing (a run starts over); `DiskCheckpointer` saves the surrogate and the
optimizer after each round's training phase and commits every sweep batch through the store's
journal, so a rerun resumes exactly where a killed one stopped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_model, save_model

from ..store import SampleStore
from ..surrogate import Surrogate

logger = logging.getLogger(__name__)


class Checkpointer:
    """No persistence: nothing to resume from, sweep updates written straight to the store."""

    def load(self, surrogate: Surrogate, optimizer: torch.optim.Optimizer | None) -> dict | None:
        """The saved loop state (round, phase, history), with weights and optimizer restored; None if none."""
        return None

    def save(self, state: dict, surrogate: Surrogate, optimizer: torch.optim.Optimizer) -> None:
        """Record the loop state; in phase "sweep" also the surrogate and optimizer just trained."""

    def resume_sweep(self, store: SampleStore, rank: int) -> dict | None:
        """This process's progress record of an interrupted sweep (after finishing a half-done commit)."""
        return None

    def commit(
        self,
        store: SampleStore,
        rank: int,
        indices: np.ndarray,
        noise: torch.Tensor | None,
        triggers: torch.Tensor,
        record: dict,
    ) -> None:
        """Store one sweep batch's new noise and triggers together with the progress ``record``."""
        store.write(indices, noise, triggers)


class DiskCheckpointer(Checkpointer):
    """Round checkpoints in ``directory`` (``state.json`` + round-named safetensors and optimizer
    files, replaced atomically) and a journal per sweep batch in the store's folder."""

    def __init__(self, directory: str | os.PathLike, accelerator: Accelerator):
        self.directory = Path(directory)
        self.accelerator = accelerator

    def load(self, surrogate: Surrogate, optimizer: torch.optim.Optimizer | None) -> dict | None:
        path = self.directory / "state.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        device = self.accelerator.device
        if device.type == "cpu":  # a process group's CPU device is "cpu:0", which safetensors and torch.load refuse
            device = torch.device("cpu")
        load_model(surrogate.model, str(self.directory / state["weights"]), device=str(device))
        if optimizer is not None:
            saved = torch.load(self.directory / state["optimizer"], map_location=device, weights_only=True)
            optimizer.load_state_dict(saved)
        logger.info("resuming MEM from %s at round %d (%s)", self.directory, state["round"], state["phase"])
        return state

    def save(self, state: dict, surrogate: Surrogate, optimizer: torch.optim.Optimizer) -> None:
        if self.accelerator.is_main_process:
            directory = self.directory
            directory.mkdir(parents=True, exist_ok=True)
            weights, optimizer_file = (
                f"surrogate-round{state['round']}.safetensors",
                f"optimizer-round{state['round']}.pt",
            )
            if state["phase"] == "sweep":  # the surrogate changes only in the training phase
                save_model(surrogate.model, str(directory / "surrogate.tmp"))
                torch.save(optimizer.state_dict(), directory / "optimizer.tmp")
                os.replace(directory / "surrogate.tmp", directory / weights)
                os.replace(directory / "optimizer.tmp", directory / optimizer_file)
            state = {**state, "weights": weights, "optimizer": optimizer_file}
            (directory / "state.json.tmp").write_text(json.dumps(state))
            os.replace(directory / "state.json.tmp", directory / "state.json")
            for old in [*directory.glob("surrogate-round*.safetensors"), *directory.glob("optimizer-round*.pt")]:
                if old.name not in (weights, optimizer_file):
                    old.unlink()
        self.accelerator.wait_for_everyone()

    def resume_sweep(self, store: SampleStore, rank: int) -> dict | None:
        return store.recover(rank)

    def commit(
        self,
        store: SampleStore,
        rank: int,
        indices: np.ndarray,
        noise: torch.Tensor | None,
        triggers: torch.Tensor,
        record: dict,
    ) -> None:
        store.commit(rank, indices, noise, triggers, record)
