"""MEMConfig: every knob of Multi-step Error Minimization in one validated, serialisable place."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

#: The allowed values of ``MEMConfig.trigger_words`` (see ``captions.TriggerVocabulary``).
TRIGGER_WORDS = ("dictionary", "any")
#: The allowed values of ``MEMConfig.method``.
METHODS = ("mem", "layered")
#: Fields MEMConfig no longer has, each with the value that switched it off (what every release
#: computed by default): levers that were measured and did not make the protection hold
#: (docs/benchmarks.md). Passing one is refused; a saved protector that holds one still loads
#: (`MEMConfig.from_saved`).
REMOVED_FIELDS = {"trigger_dropout": 0.0, "surrogate_restarts": 0}
#: An epsilon within this many 8-bit levels of a whole level is that level (0.0313725 is 8/255).
_LEVEL_TOLERANCE = 1e-4
MAX_EPSILON_LEVELS = 127  # the int8 noise store holds -127..127 levels


def refuse_removed_fields(names: Any, error: type[Exception]) -> None:
    """Raise ``error`` naming each of ``names`` that is a removed field (`REMOVED_FIELDS`)."""
    removed = [name for name in REMOVED_FIELDS if name in names]
    if removed:
        lever, it = ("these levers", "them") if len(removed) > 1 else ("this lever", "it")
        raise error(
            f"MEMConfig no longer has {' and '.join(removed)}: measured, {lever} did not make the protection hold "
            f"(docs/benchmarks.md) and left the library. Leave {it} out; a protector saved with {it} still loads "
            f"(ProtectTransform.from_pretrained ignores {it})."
        )


@dataclass
class MEMConfig:
    """Settings of MEM (Algorithm 1 of Liu et al., ACM MM 2024) and of the surrogate training.

    Pixel quantities are in [0, 1] pixel space; the image noise lives on the 1/255 grid, so
    ``epsilon`` and ``pgd_step_size`` are turned into whole 8-bit levels
    (``epsilon_levels = floor(epsilon * 255)``, ``step_levels = round(pgd_step_size * 255)``).

    The methods are named objects in `hf_unlearnable.methods` (`MEM`, `EM`, `TriggerOnly`,
    `Layered`, `RandomNoise`); each builds the MEMConfig it runs (``EM().config()``), so a method
    is picked by name rather than by a combination of the fields below.

    Args:
        method: how noise and trigger are optimised.
            "layered" (default): two independent shortcuts, each optimised for what it must survive.
            The pixel layer: up to ``max_rounds`` rounds of EM, the surrogate trained on each noised
            image with its own caption and no trigger, PGD pulling each image toward its own
            untriggered caption through ``eot_transforms``, so the pixels protect on their own and
            keep part of it through re-encoding. The trigger layer: the surrogate restarts from its
            initial weights and trains for ``trigger_rounds`` rounds on the noised images with
            triggered captions while HotFlip optimises the triggers; the pixels are not touched
            again. With ``trigger_length=0`` only the pixel layer runs (EM). ``shuffle_captions``
            does not apply.
            "mem": Algorithm 1 as published: every round trains the surrogate on triggered captions,
            HotFlip updates the triggers (first ``trigger_rounds`` rounds) and PGD binds the noise
            to the trigger (``shuffle_captions``). Deleting the trigger then leaves noise that
            protects nothing. `MEMConfig.paper` selects it.
        epsilon: l_inf budget of the image noise (default 8/255; at most 127/255, the int8 store's range).
        pgd_steps: S, PGD steps per batch and round (Eq. 5).
        pgd_step_size: alpha, size of one PGD sign step; a whole multiple of 1/255.
        trigger_length: k, trigger tokens inserted after the start token; 0 means EM (no trigger).
        hotflip_candidates: K, candidate tokens scored per trigger position (Eq. 6).
        trigger_words: which tokens a trigger may use. "dictionary" (default): whole-word tokens
            whose word is on the shipped list of neutral everyday words
            (``hf_unlearnable/data/trigger_words.txt``, 9,945 words: things, food, plants,
            animals, places, weather, colours, sizes...), built by inclusion from WordNet 3.0's
            domains, without any word whose main sense touches people, bodies, health, sex,
            religion, ethnicity, nationality, weapons, violence, death, crime, drugs or terrorism,
            nor slurs, first names or the shipped blocklist (``tools/build_trigger_words.py`` says
            how), and not blocked by ``trigger_blocklist``. On CLIP's tokenizer that is 6,235 of its
            32,875 round-trip-safe whole-word tokens. "any": every round-trip-safe whole-word
            token, word pieces such as "ttle" included (the behaviour before this option, and
            `paper`'s), less ``trigger_blocklist``.
        trigger_blocklist: extra words never to use in a trigger (one word per entry, any case;
            stored lower-cased), e.g. words sensitive in your domain that the list keeps. A word
            is blocked with its inflections and in any case: "cat" also blocks "cats", "Cat",
            "catting" (and, as the match undoes suffixes, "cater").
        trigger_rounds: rounds (from the first) in which triggers are updated.
        surrogate_steps: M, surrogate training steps per round.
        max_rounds: upper bound on rounds.
        stop_loss: lambda; stop once the protected loss is below it (None: run all rounds).
        batch_size: samples per batch for surrogate training, HotFlip and PGD.
        learning_rate: AdamW learning rate of the surrogate.
        weight_decay: AdamW weight decay of the surrogate (not applied to norms, biases, logit scale).
        shuffle_captions: PGD sees caption bodies shuffled inside the batch (a fresh permutation
            at every PGD step), triggers kept with their images, so the noise binds to the trigger
            rather than to the caption content. Needs a trigger: with trigger_length=0 (EM) it
            must be False, and each image is paired with its own caption.
        image_noise: optimise the image noise (False: trigger-only baseline).
        max_caption_tokens: token budget per caption including start/end and trigger
            (None: the surrogate's text context length).
        online_rounds: rounds of HotFlip + PGD for rows the transform was not fitted on.
        trigger_position: where the trigger goes in each caption: "start" (right after the start
            token, as in the paper) or "random" (before a word of the caption picked by a hash of
            the caption and the seed, so deleting the first words does not remove it).
        eot_transforms: expectation over transformation in PGD: at every step the noised image goes
            through the identity or one of these, drawn uniformly ("jpeg", "crop-flip",
            "grayscale", "blur"; see `mem.eot`), so the noise survives what a victim's pipeline
            does to images (default: "jpeg", differentiable JPEG at a random quality in [30, 95];
            empty: none, as in the paper).
        mixed_precision: "auto" (bf16 autocast on a GPU that supports it, else none: on a CPU
            bf16 protected line art less, docs/benchmarks.md "Precision"), "no", "bf16"
            or "fp16"; handed to Accelerate.
        seed: seeds every random choice (trigger init, batch order, caption sampling).
    """

    method: str = "layered"
    epsilon: float = 8 / 255
    pgd_steps: int = 8
    pgd_step_size: float = 1 / 255
    trigger_length: int = 3
    hotflip_candidates: int = 16
    trigger_words: str = "dictionary"
    trigger_blocklist: tuple[str, ...] = ()
    trigger_rounds: int = 5
    surrogate_steps: int = 200
    max_rounds: int = 20
    stop_loss: float | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    shuffle_captions: bool = True
    image_noise: bool = True
    max_caption_tokens: int | None = None
    online_rounds: int = 5
    eot_transforms: tuple[str, ...] = ("jpeg",)
    trigger_position: str = "start"
    mixed_precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.eot_transforms, (list, str)):  # from JSON, or a comma list
            names = self.eot_transforms.split(",") if isinstance(self.eot_transforms, str) else self.eot_transforms
            self.eot_transforms = tuple(name.strip() for name in names if name.strip())
        # JSON gives a list back: keep the blocklist a tuple of lower-case words (hashable, one form)
        blocklist = self.trigger_blocklist
        if isinstance(blocklist, (list, tuple)) and all(isinstance(word, str) for word in blocklist):
            self.trigger_blocklist = tuple(word.strip().lower() for word in blocklist)
        self.validate()

    def __new__(cls, *args: Any, **fields: Any) -> MEMConfig:
        refuse_removed_fields(fields, TypeError)  # before the dataclass's "unexpected keyword argument"
        return super().__new__(cls)

    @classmethod
    def paper(cls, **changes: Any) -> MEMConfig:
        """MEM as published (Liu et al., ACM MM 2024, and its reference code): Algorithm 1
        (``method="mem"``), eps 8/255, 8 PGD steps of 1/255, k = 3 trigger tokens right after the
        start token, any whole-word token as a trigger word (``trigger_words="any"``), 16 HotFlip
        candidates, triggers updated in rounds 1-5, M = 200, 20 rounds, caption bodies shuffled in
        PGD, no EOT. For comparing with the paper; ``hf_unlearnable.methods.MEM()`` runs it."""
        values = dict(
            method="mem",
            epsilon=8 / 255,
            pgd_steps=8,
            pgd_step_size=1 / 255,
            trigger_length=3,
            trigger_position="start",
            trigger_words="any",
            hotflip_candidates=16,
            trigger_rounds=5,
            surrogate_steps=200,
            max_rounds=20,
            shuffle_captions=True,
            eot_transforms=(),
        )
        return cls(**{**values, **changes})

    @property
    def method_name(self) -> str:
        """The method these settings run, as the CLI, the recipe, the card and the audit name it:
        "MEM-3", "EM", "trigger only" or "layered"."""
        if not self.image_noise:
            return "trigger only"
        if self.trigger_length == 0:
            return "EM"
        return "layered" if self.method == "layered" else f"MEM-{self.trigger_length}"

    # -- derived integer quantities -------------------------------------------------------
    @property
    def epsilon_levels(self) -> int:
        """The budget in whole 8-bit levels (never above epsilon * 255)."""
        return int(math.floor(self.epsilon * 255 + _LEVEL_TOLERANCE))

    @property
    def step_levels(self) -> int:
        """One PGD step in whole 8-bit levels."""
        return int(round(self.pgd_step_size * 255))

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field outside its allowed range."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"MEMConfig.{name}={getattr(self, name)!r} is invalid: it must be {allowed}.")

        def check_int(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""))
            if value < low or (high is not None and value > high):
                raise bad(name, f"an integer in [{low}, {high if high is not None else 'inf'}]")

        if not isinstance(self.epsilon, (int, float)) or not (0 < self.epsilon <= 1):
            raise bad("epsilon", "in (0, 1] (pixel space; 8/255 is the paper's budget)")
        if self.epsilon_levels < 1:
            raise bad("epsilon", ">= 1/255: a smaller budget cannot change an 8-bit pixel")
        if self.epsilon_levels > MAX_EPSILON_LEVELS:
            # the noise is stored as int8 levels; a larger budget would wrap (153 -> -103)
            raise bad(
                "epsilon",
                f"<= {MAX_EPSILON_LEVELS}/255 = {MAX_EPSILON_LEVELS / 255:.4f} (noise is stored as int8 levels)",
            )
        if not isinstance(self.pgd_step_size, (int, float)) or not (0 < self.pgd_step_size <= 1):
            raise bad("pgd_step_size", "in (0, 1]")
        if self.step_levels < 1 or abs(self.pgd_step_size * 255 - self.step_levels) > 1e-4:
            raise bad(
                "pgd_step_size", "a whole multiple of 1/255 (e.g. 1/255 or 2/255) so noise stays on the 8-bit grid"
            )
        check_int("pgd_steps", 0)
        check_int("trigger_length", 0, 64)
        check_int("hotflip_candidates", 1)
        check_int("trigger_rounds", 0)
        check_int("surrogate_steps", 0)
        check_int("max_rounds", 1)
        check_int("batch_size", 2)
        check_int("online_rounds", 1)
        check_int("seed", 0)
        if self.max_caption_tokens is not None:
            check_int("max_caption_tokens", 3)
        if self.stop_loss is not None and (not isinstance(self.stop_loss, (int, float)) or self.stop_loss < 0):
            raise bad("stop_loss", "None or a number >= 0")
        if not isinstance(self.learning_rate, (int, float)) or not (0 <= self.learning_rate < 1):
            raise bad("learning_rate", "in [0, 1)")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        if self.trigger_words not in TRIGGER_WORDS:
            raise bad(
                "trigger_words",
                'one of "dictionary" (the shipped list of neutral everyday words) or "any" (every whole-word token)',
            )
        blocklist = self.trigger_blocklist
        if (
            not isinstance(blocklist, (list, tuple))
            or not all(isinstance(word, str) for word in blocklist)
            or not all(word.isalpha() for word in blocklist)
        ):
            raise bad(
                "trigger_blocklist",
                'a list or tuple of single words made of letters, e.g. ("lamp", "harbor") (not one string; '
                "a trigger is checked word by word)",
            )
        if not isinstance(self.eot_transforms, tuple) or not all(isinstance(n, str) for n in self.eot_transforms):
            raise bad("eot_transforms", 'a tuple of names, e.g. ("jpeg", "crop-flip")')
        from .mem.eot import check_eot_transforms  # here: mem imports this module

        try:
            check_eot_transforms(self.eot_transforms)
        except ValueError as error:
            raise ValueError(f"MEMConfig.eot_transforms: {error}") from None
        if self.trigger_position not in ("start", "random"):
            raise bad("trigger_position", '"start" (the paper) or "random" (a word boundary picked per caption)')
        if self.method not in METHODS:
            raise bad("method", '"mem" (the paper\'s Algorithm 1) or "layered" (EM pixels, then a trigger on top)')
        if self.method == "layered":
            needs = {
                "image_noise": (
                    self.image_noise,
                    'True (the pixel layer; method="mem" with image_noise=False is the trigger-only baseline)',
                ),
                "trigger_rounds": (
                    self.trigger_rounds >= 1 or self.trigger_length == 0,
                    ">= 1 (rounds of the trigger layer) unless trigger_length=0",
                ),
            }
            for name, (holds, allowed) in needs.items():
                if not holds:
                    raise bad(name, f'{allowed} with method="{self.method}"')
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise bad("mixed_precision", 'one of "auto", "no", "bf16", "fp16"')
        for name in ("shuffle_captions", "image_noise"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if not self.image_noise and self.trigger_length == 0:
            raise ValueError(
                "MEMConfig has image_noise=False and trigger_length=0: nothing would be optimised. "
                "Set trigger_length >= 1 or image_noise=True."
            )
        if self.method == "mem" and self.shuffle_captions and self.trigger_length == 0 and self.image_noise:
            raise ValueError(
                "MEMConfig has shuffle_captions=True and trigger_length=0: with no trigger to bind to, PGD "
                "would pull each image toward another sample's caption instead of minimising its own loss. "
                "For EM (no trigger) set shuffle_captions=False, or use hf_unlearnable.methods.EM()."
            )

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MEMConfig:
        """Build from ``to_dict`` output; unknown keys are an error (a typo must not be ignored), and
        so are removed ones (`REMOVED_FIELDS`; `from_saved` reads a saved protector's config)."""
        refuse_removed_fields(values, ValueError)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MEMConfig.from_dict got unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> MEMConfig:
        """The config of a protector saved by any release (``protect_config.json``), computing what
        it computed where this release still can. The rules, oldest first: no ``trigger_words``
        (algorithm <= 3) is "any", the only vocabulary then; no ``method`` (algorithm <= 6) is
        "mem", the only method then; a field of `REMOVED_FIELDS` is dropped, silently when it holds
        its "off" value (what every release computed by default), else with a warning: the rows the
        protector was fitted on keep their protection, rows it protects from now on get none of it."""
        values = dict(values)
        values.setdefault("trigger_words", "any")
        values.setdefault("method", "mem")
        for name, off in REMOVED_FIELDS.items():
            value = values.pop(name, off)
            if value != off:
                warnings.warn(
                    f"This protector was saved with MEMConfig.{name}={value!r}, a setting this release no longer "
                    "has: it is ignored. The rows it was fitted on keep their protection; rows it protects from "
                    "now on are protected without it.",
                    stacklevel=3,
                )
        return cls.from_dict(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MEMConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> MEMConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
