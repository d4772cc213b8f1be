"""The protection methods as named objects: `MEM`, `EM`, `TriggerOnly`, `Layered` and `RandomNoise`.

A method is picked by name, not by a combination of `MEMConfig` fields. Each class says, in its
docstring, its paper, its arguments, what goes in and what comes out, with an example. The four
that optimise against a CLIP surrogate build the `MEMConfig` they run (``config()``) and go to
`ProtectTransform` as ``method=``:

    transform = ProtectTransform(model, processor, method=EM(max_rounds=10))
    protected = transform.protect(ds)

or in one call, ``EM(max_rounds=10).protect(ds, model, processor)``. `ProtectTransform(model,
processor)` with neither a method nor a config runs `Layered()`, and ``MEM().config()`` is
`MEMConfig.paper()`. `RandomNoise` trains nothing: ``RandomNoise().protect(ds, model)``.

Besides the arguments its docstring lists, every surrogate method takes the settings they all
share (`MEMConfig` says each): ``batch_size``, ``learning_rate``, ``weight_decay``,
``max_caption_tokens``, ``online_rounds``, ``mixed_precision`` and ``seed``. A field the method sets
itself, or one that means nothing to it (a trigger setting for `EM`), is refused with a
`TypeError` naming it.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import datasets
import numpy as np
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .config import MEMConfig
from .images import encode_png, prepare_image, undecoded
from .transform import ProtectTransform

__all__ = ["EM", "MEM", "Layered", "RandomNoise", "SurrogateMethod", "TriggerOnly"]

#: The settings every surrogate method takes besides its own arguments.
SHARED_SETTINGS = (
    "batch_size",
    "learning_rate",
    "weight_decay",
    "max_caption_tokens",
    "online_rounds",
    "mixed_precision",
    "seed",
)


def _call(name: str, settings: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in settings.items())})"


class SurrogateMethod:
    """A method that optimises noise and/or triggers against a CLIP surrogate (`MEMLoop`).

    A subclass names the `MEMConfig` fields it sets (``sets``), those that mean nothing to it
    (``unused``, refused with ``unused_reason``) and its defaults where they differ from
    `MEMConfig`'s (``defaults``). The config is built, and validated, when the object is made.
    """

    #: MEMConfig fields this method sets; passing one is refused.
    sets: ClassVar[dict[str, Any]] = {}
    #: MEMConfig fields that mean nothing to this method; passing one is refused.
    unused: ClassVar[tuple[str, ...]] = ()
    #: Why ``unused`` fields are refused (the end of the error message).
    unused_reason: ClassVar[str] = ""
    #: This method's defaults where they differ from MEMConfig's.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings: Any):
        name = type(self).__name__
        for field in settings:
            if field in self.sets:
                raise TypeError(f"{name} sets {field}={self.sets[field]!r} itself: {name}() takes no {field}.")
            if field in self.unused:
                raise TypeError(f"{name}() takes no {field}: {self.unused_reason}")
        self.settings = dict(settings)
        self._config = self.build({**self.defaults, **settings, **self.sets})

    def build(self, values: dict[str, Any]) -> MEMConfig:
        """The MEMConfig of ``values`` over MEMConfig's defaults (`MEM` starts from `MEMConfig.paper`)."""
        return MEMConfig(**values)

    def config(self) -> MEMConfig:
        """The `MEMConfig` this method runs (a copy: changing it leaves the method as it is)."""
        return self._config.replace()

    @property
    def name(self) -> str:
        """The name the CLI, the card and the audit give it, e.g. "MEM-3" or "EM"."""
        return self._config.method_name

    @classmethod
    def from_config(cls, config: MEMConfig) -> SurrogateMethod:
        """This method with ``config``'s value for every field it takes (those it sets or does not use are left out)."""
        skipped = set(cls.sets) | set(cls.unused)
        return cls(**{field: value for field, value in config.to_dict().items() if field not in skipped})

    def protect(
        self,
        ds: datasets.Dataset,
        model: CLIPModel | CLIPConfig | str | os.PathLike,
        processor: CLIPProcessor | None = None,
        *,
        image_column: str = "image",
        caption_column: str = "caption",
        **options: Any,
    ) -> datasets.Dataset:
        """``ProtectTransform(model, processor, method=self, **options).protect(ds, ...)``: the
        protected copy (``options``: ``work_dir``, ``keep_work_dir``, ``progress``)."""
        transform = ProtectTransform(model, processor, method=self, **options)
        return transform.protect(ds, image_column=image_column, caption_column=caption_column)

    def __repr__(self) -> str:
        return _call(type(self).__name__, self.settings)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._config == self._config  # type: ignore[attr-defined]


class MEM(SurrogateMethod):
    """MEM: Multi-step Error Minimization, as published.

    From 'Multimodal Unlearnable Examples: Protecting Data against Multimodal Contrastive Learning'
    (Liu, Jia, Xun, Liang, Cao; ACM MM 2024) [https://arxiv.org/abs/2407.16307], Algorithm 1: each
    round trains the surrogate on the triggered data, then HotFlip (Eq. 6) updates each caption's
    trigger and PGD (Eq. 5) its image's noise, caption bodies shuffled inside the batch so that the
    noise binds to the trigger. ``MEM().config()`` is `MEMConfig.paper()`. Deleting the trigger
    leaves noise that protects little; `Layered` is the library's answer to that.

    Distance measure: Linf on the 8-bit grid (images); k whole-word tokens (captions).

    Arguments:
        epsilon (float): l_inf budget of the image noise in [0, 1] pixel space. (Default: 8/255)
        pgd_steps (int): S, PGD sign steps per batch and round. (Default: 8)
        pgd_step_size (float): alpha, one PGD step, a whole multiple of 1/255. (Default: 1/255)
        trigger_length (int): k, trigger tokens per caption, >= 1. (Default: 3)
        trigger_position (str): "start" (after the start token) or "random" (a word boundary). (Default: "start")
        trigger_words (str): "any" (every whole-word token, as the paper) or "dictionary" (neutral everyday words). (Default: "any")
        trigger_blocklist (tuple[str, ...]): words never to use in a trigger. (Default: ())
        hotflip_candidates (int): K, candidates scored per trigger position. (Default: 16)
        trigger_rounds (int): rounds, from the first, in which triggers change. (Default: 5)
        surrogate_steps (int): M, surrogate training steps per round. (Default: 200)
        max_rounds (int): upper bound on rounds. (Default: 20)
        stop_loss (float | None): lambda, stop once the protected loss is below it. (Default: None)
        shuffle_captions (bool): PGD sees caption bodies shuffled inside the batch. (Default: True)
        eot_transforms (tuple[str, ...]): PGD through these image operations ("jpeg", ...). (Default: ())
        **settings: the settings every method shares (`hf_unlearnable.methods`).

    Shape:
        - ds: N rows with an image column (any image `datasets` decodes) and a caption column
          (a string, or a list of strings per image).
        - output: N rows, same order and other columns; each image a lossless PNG (H, W, 3) at the
          surrogate's resolution within +-floor(epsilon * 255) levels of its clean base; each
          caption with its image's k trigger words inserted.

    Examples::
        >>> method = MEM(max_rounds=10)
        >>> protected = ProtectTransform(model, processor, method=method).protect(ds)
        >>> MEM().config() == MEMConfig.paper()
        True
    """

    sets: ClassVar[dict[str, Any]] = {"method": "mem", "image_noise": True}

    def build(self, values: dict[str, Any]) -> MEMConfig:
        if values.get("trigger_length") == 0:
            raise ValueError("MEM needs trigger_length >= 1; without a trigger it is EM: use EM().")
        return MEMConfig.paper(**values)


class EM(SurrogateMethod):
    """EM: error-minimizing noise on image-caption pairs, no trigger.

    From 'Unlearnable Examples: Making Personal Data Unexploitable' (Huang, Ma, Erfani, Bailey,
    Wang; ICLR 2021) [https://arxiv.org/abs/2101.04898], on image-text pairs as in the MEM paper's
    baselines: each round trains the surrogate on the noised images with their own captions, then
    PGD pulls each image toward its own caption (Eq. 5 with no trigger and no shuffling). Captions
    are published unchanged.

    Distance measure: Linf on the 8-bit grid.

    Arguments:
        epsilon (float): l_inf budget of the image noise in [0, 1] pixel space. (Default: 8/255)
        pgd_steps (int): S, PGD sign steps per batch and round. (Default: 8)
        pgd_step_size (float): alpha, one PGD step, a whole multiple of 1/255. (Default: 1/255)
        surrogate_steps (int): M, surrogate training steps per round. (Default: 200)
        max_rounds (int): upper bound on rounds. (Default: 20)
        stop_loss (float | None): stop once the protected loss is below it. (Default: None)
        eot_transforms (tuple[str, ...]): PGD through these image operations, e.g. ("jpeg",). (Default: ())
        **settings: the settings every method shares (`hf_unlearnable.methods`).

    Shape:
        - ds: N rows with an image column and a caption column.
        - output: N rows, same order and other columns; each image a lossless PNG (H, W, 3) at the
          surrogate's resolution within +-floor(epsilon * 255) levels of its clean base; captions
          unchanged.

    Examples::
        >>> protected = EM(max_rounds=10).protect(ds, model, processor)
    """

    sets: ClassVar[dict[str, Any]] = {
        "method": "mem",
        "trigger_length": 0,
        "image_noise": True,
        "shuffle_captions": False,
    }
    unused: ClassVar[tuple[str, ...]] = (
        "hotflip_candidates",
        "trigger_rounds",
        "trigger_words",
        "trigger_blocklist",
        "trigger_position",
    )
    unused_reason: ClassVar[str] = "EM puts no trigger in the captions (MEM, TriggerOnly and Layered do)."
    defaults: ClassVar[dict[str, Any]] = {"eot_transforms": ()}


class TriggerOnly(SurrogateMethod):
    """Trigger only: text triggers optimised by HotFlip, no image noise.

    The text baseline of 'Multimodal Unlearnable Examples' (Liu et al., ACM MM 2024)
    [https://arxiv.org/abs/2407.16307]: MEM's rounds with the PGD step left out, so each caption
    gets k trigger tokens found by HotFlip ('HotFlip: White-Box Adversarial Examples for Text
    Classification', Ebrahimi et al., ACL 2018 [https://arxiv.org/abs/1712.06751]) against a
    surrogate trained on the triggered data. Images are resized to the surrogate's resolution and
    carry no noise.

    Distance measure: k whole-word tokens per caption.

    Arguments:
        trigger_length (int): k, trigger tokens per caption, >= 1. (Default: 3)
        trigger_position (str): "start" (after the start token) or "random" (a word boundary). (Default: "start")
        trigger_words (str): "dictionary" (neutral everyday words) or "any" (every whole-word token). (Default: "dictionary")
        trigger_blocklist (tuple[str, ...]): words never to use in a trigger. (Default: ())
        hotflip_candidates (int): K, candidates scored per trigger position. (Default: 16)
        trigger_rounds (int): rounds, from the first, in which triggers change. (Default: 5)
        surrogate_steps (int): M, surrogate training steps per round. (Default: 200)
        max_rounds (int): upper bound on rounds. (Default: 20)
        stop_loss (float | None): stop once the protected loss is below it. (Default: None)
        **settings: the settings every method shares (`hf_unlearnable.methods`).

    Shape:
        - ds: N rows with an image column and a caption column.
        - output: N rows, same order and other columns; each image a lossless PNG of its clean base
          (resized and centre-cropped, no noise); each caption with its image's k trigger words inserted.

    Examples::
        >>> protected = TriggerOnly(trigger_length=3).protect(ds, model, processor)
    """

    sets: ClassVar[dict[str, Any]] = {"method": "mem", "image_noise": False}
    unused: ClassVar[tuple[str, ...]] = ("epsilon", "pgd_steps", "pgd_step_size", "shuffle_captions", "eot_transforms")
    unused_reason: ClassVar[str] = "trigger-only adds no image noise (EM, MEM and Layered do)."
    defaults: ClassVar[dict[str, Any]] = {"eot_transforms": ()}


class Layered(SurrogateMethod):
    """Layered: EM pixels that protect on their own, then a trigger found on top of them (the default).

    This library's method, built from EM ('Unlearnable Examples', Huang et al., ICLR 2021
    [https://arxiv.org/abs/2101.04898]) and MEM ('Multimodal Unlearnable Examples', Liu et al., ACM
    MM 2024 [https://arxiv.org/abs/2407.16307]). The pixel layer: up to ``max_rounds`` rounds of EM,
    PGD pulling each image toward its own caption with no trigger anywhere, through
    ``eot_transforms`` so the noise survives re-encoding. The trigger layer: the surrogate goes
    back to its initial weights and trains ``trigger_rounds`` rounds on the noised images with
    triggered captions while HotFlip sets the triggers; the pixels are not touched again. Deleting
    the trigger leaves the pixels; re-encoding the images leaves the trigger.
    ``ProtectTransform(model, processor)`` runs ``Layered()``.

    Distance measure: Linf on the 8-bit grid (images); k whole-word tokens (captions).

    Arguments:
        epsilon (float): l_inf budget of the image noise in [0, 1] pixel space. (Default: 8/255)
        pgd_steps (int): S, PGD sign steps per batch and round of the pixel layer. (Default: 8)
        pgd_step_size (float): alpha, one PGD step, a whole multiple of 1/255. (Default: 1/255)
        eot_transforms (tuple[str, ...]): PGD through these image operations. (Default: ("jpeg",))
        trigger_length (int): k, trigger tokens per caption, >= 1. (Default: 3)
        trigger_position (str): "start" (after the start token) or "random" (a word boundary). (Default: "start")
        trigger_words (str): "dictionary" (neutral everyday words) or "any" (every whole-word token). (Default: "dictionary")
        trigger_blocklist (tuple[str, ...]): words never to use in a trigger. (Default: ())
        hotflip_candidates (int): K, candidates scored per trigger position. (Default: 16)
        trigger_rounds (int): rounds of the trigger layer, >= 1. (Default: 5)
        surrogate_steps (int): M, surrogate training steps per round. (Default: 200)
        max_rounds (int): upper bound on the pixel layer's rounds. (Default: 20)
        stop_loss (float | None): end the pixel layer once its protected loss is below it. (Default: None)
        **settings: the settings every method shares (`hf_unlearnable.methods`).

    Shape:
        - ds: N rows with an image column and a caption column.
        - output: N rows, same order and other columns; each image a lossless PNG (H, W, 3) at the
          surrogate's resolution within +-floor(epsilon * 255) levels of its clean base; each
          caption with its image's k trigger words inserted.

    Examples::
        >>> protected = ProtectTransform(model, processor, method=Layered(max_rounds=10)).protect(ds)
        >>> Layered().config() == MEMConfig()
        True
    """

    sets: ClassVar[dict[str, Any]] = {"method": "layered", "image_noise": True}
    unused: ClassVar[tuple[str, ...]] = ("shuffle_captions",)
    unused_reason: ClassVar[str] = (
        "the layered method makes each image's noise on its own caption, never a shuffled one."
    )

    def build(self, values: dict[str, Any]) -> MEMConfig:
        if values.get("trigger_length") == 0:
            raise ValueError(
                "Layered needs trigger_length >= 1; without a trigger it is its pixel layer, EM: "
                'use EM(eot_transforms=("jpeg",)).'
            )
        return MEMConfig(**values)


class RandomNoise:
    """Random noise: uniform noise on the 8-bit levels within +-epsilon; captions unchanged.

    The control of 'Unlearnable Examples' (Huang et al., ICLR 2021) [https://arxiv.org/abs/2101.04898]
    and of the MEM paper's tables: it shows that a method's effect is not that of any noise of the
    same budget. One draw per row, seeded by (seed, row index); no surrogate is trained.

    Distance measure: Linf on the 8-bit grid.

    Arguments:
        epsilon (float): l_inf budget of the noise in [0, 1] pixel space. (Default: 8/255)
        seed (int): seeds every row's draw. (Default: 0)

    Shape:
        - ds: N rows with an image column and a caption column.
        - output: N rows, same order and other columns; each image a lossless PNG (H, W, 3) at the
          given resolution, its clean base plus noise within +-floor(epsilon * 255) levels; captions unchanged.

    Examples::
        >>> protected = RandomNoise(epsilon=8 / 255).protect(ds, 224)  # or a CLIPModel / CLIPConfig: its resolution
    """

    def __init__(self, epsilon: float = 8 / 255, seed: int = 0):
        self.epsilon, self.seed = epsilon, seed
        self.levels = MEMConfig(epsilon=epsilon, seed=seed).epsilon_levels  # validates both
        self.name = "random noise"

    def protect(
        self,
        ds: datasets.Dataset,
        model: int | CLIPModel | CLIPConfig | str | os.PathLike,
        processor: CLIPProcessor | None = None,
        *,
        image_column: str = "image",
        caption_column: str = "caption",
    ) -> datasets.Dataset:
        """The copy with noise, at ``model``'s resolution: an int (pixels per side), or a CLIP model,
        config or saved folder whose vision tower says it (``processor`` is not used)."""
        image_size = image_size_of(model)
        for column in (image_column, caption_column):
            if column not in ds.column_names:
                raise ValueError(f"Column {column!r} is not in the data set; its columns are {ds.column_names}.")
        levels, seed = self.levels, self.seed

        def perturb(batch, indices):
            images = []
            for value, row in zip(batch[image_column], indices):
                clean = prepare_image(value, image_size, row).astype(np.int16)
                noise = np.random.default_rng([seed, row]).integers(-levels, levels + 1, size=clean.shape)
                images.append({"bytes": encode_png((clean + noise).clip(0, 255).astype(np.uint8)), "path": None})
            return {image_column: images}

        features = ds.features.copy()
        features[image_column] = datasets.Image()
        return undecoded(ds, image_column).map(
            perturb, batched=True, with_indices=True, features=features, desc="Random noise"
        )

    def __repr__(self) -> str:
        return _call("RandomNoise", {"epsilon": self.epsilon, "seed": self.seed})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RandomNoise) and (other.epsilon, other.seed) == (self.epsilon, self.seed)


def image_size_of(model: int | CLIPModel | CLIPConfig | str | os.PathLike) -> int:
    """Pixels per side: ``model`` itself when an int, else its CLIP vision tower's ``image_size``."""
    if isinstance(model, int) and not isinstance(model, bool):
        return model
    if isinstance(model, CLIPModel):
        model = model.config
    if isinstance(model, (str, os.PathLike)):
        model = CLIPConfig.from_pretrained(str(model))
    if isinstance(model, CLIPConfig):
        return int(model.vision_config.image_size)
    raise TypeError(f"expected the image size (an int) or a CLIP model, config or folder, got {type(model).__name__}")
