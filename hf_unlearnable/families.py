"""The image-text model families the victim trains, and which one a model, config or path is.

`FAMILIES`: CLIP (`hf_unlearnable.surrogate`) and SigLIP (`hf_unlearnable.siglip`). A new family
is an `ImageTextModel` subclass, its loss in `hf_unlearnable.losses` and one entry here.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn
from transformers import AutoConfig

from .imagetext import ImageTextModel, ModelFamily, load_model
from .siglip import SIGLIP
from .surrogate import CLIP

__all__ = ["FAMILIES", "family_of", "family_of_model_type", "image_text_model", "load_image_text_model"]

FAMILIES: tuple[ModelFamily, ...] = (CLIP, SIGLIP)


def _model_type(path: str | os.PathLike) -> str | None:
    """The ``model_type`` of a config.json file, a folder's or a Hub id's config (None: unreadable)."""
    path = os.fspath(path)
    file = path if path.endswith(".json") else os.path.join(path, "config.json")
    try:
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as handle:
                return json.load(handle).get("model_type")
        return AutoConfig.from_pretrained(path).model_type  # a Hub id: its cached or downloaded config
    except (OSError, ValueError, AttributeError):
        return None


def family_of(model: Any) -> ModelFamily:
    """The family of a transformers model or config (by class) or of a Hub id / path / config.json
    file (by its config's ``model_type``; CLIP when it cannot be read, whose loader then says why).

    Raises:
        TypeError: anything else, naming the classes each family takes.
    """
    for family in FAMILIES:
        if isinstance(model, (family.model_class, family.config_class)):
            return family
    if isinstance(model, (str, os.PathLike)):
        return family_of_model_type(_model_type(model))
    accepted = ", ".join(f"{f.model_class.__name__}, {f.config_class.__name__}" for f in FAMILIES)
    raise TypeError(f"model must be a transformers {accepted}, or a Hub id / local path; got {type(model).__name__}.")


def family_of_model_type(model_type: str | None) -> ModelFamily:
    """The family whose config has this ``model_type`` (a config.json's field); CLIP for None or an
    unknown one, whose loader then says why."""
    for family in FAMILIES:
        if family.config_class.model_type == model_type:
            return family
    return CLIP


def load_image_text_model(model: Any, processor: Any, seed: int) -> tuple[nn.Module, Any]:
    """`hf_unlearnable.imagetext.load_model` for the family of ``model`` (`family_of`)."""
    return load_model(family_of(model), model, processor, seed)


def image_text_model(model: nn.Module, processor: Any) -> ImageTextModel:
    """A transformers model of any family in its `ImageTextModel` wrapper."""
    return family_of(model).wrap(model, processor)
