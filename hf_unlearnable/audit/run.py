"""`evaluate_protection`: victims trained on the clean and the protected copies under each defense."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, PreTrainedConfig, PreTrainedModel, SiglipConfig, SiglipModel

from ..checks import check_dataset
from ..devices import process_state
from ..families import FAMILIES, family_of, load_image_text_model
from ..victim import Defense, train_victim
from .checks import caption_list, check_copies_match, refuse_shared_rows, row_digests
from .report import write_report
from .verdicts import (
    BROKEN_SHARE,
    PROTECTED_FACTOR,
    VERDICT_METRICS,
    ProtectionReport,
    Verdict,
    chance_scores,
    json_safe,
    judge,
    mean_recall_at_10,
)

logger = logging.getLogger(__name__)

FROM_SCRATCH, FINE_TUNED = "from scratch", "fine-tuned"


# ---------------------------------------------------------------------------------------- defenses and victims


def _defense_label(defense: Any) -> str:
    for attribute in ("name", "__name__"):
        value = getattr(defense, attribute, None)
        if isinstance(value, str) and value and value != "<lambda>":
            return value
    return type(defense).__name__


def _as_list(defenses: Iterable[str | Defense] | str | Defense) -> list[str | Defense]:
    return [defenses] if isinstance(defenses, str) or callable(defenses) else list(defenses)


def resolve_defenses(
    defenses: Iterable[str | Defense], seed: int = 0
) -> list[tuple[str, Callable[[], Defense | None]]]:
    """(label, factory) per defense: names go to the `hf_unlearnable.defenses` registry (a fresh
    defense per victim, seeded; "none" trains without one), callables are used as given."""
    from ..defenses import get_defense  # kornia loads only when an audit runs

    defenses = _as_list(defenses)
    resolved: list[tuple[str, Callable[[], Defense | None]]] = []
    for item in defenses:
        if isinstance(item, str):
            name = item.strip()
            if name == "none":
                resolved.append(("none", lambda: None))
                continue
            get_defense(
                name, seed=seed
            )  # an unknown name raises ValueError listing the valid ones, before any training
            resolved.append((name, lambda name=name: get_defense(name, seed=seed)))
        elif callable(item):
            resolved.append((_defense_label(item), lambda item=item: item))
        else:
            raise TypeError(
                f"defenses holds {type(item).__name__}; pass defense names (str) or callables (pixels, captions, generator) -> (pixels, captions)."
            )
    labels = [label for label, _ in resolved]
    if not resolved:
        raise ValueError("defenses is empty; pass at least one, e.g. ('none',).")
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"defenses has duplicate names {sorted({label for label in labels if labels.count(label) > 1})}; give each callable its own name (a .name attribute)."
        )
    return resolved


@dataclass
class _Victim:
    label: str
    model: PreTrainedModel | PreTrainedConfig
    processor: Any
    learning_rate: float
    source: str


def _source(spec: Any) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    return type(spec).__name__


def _architecture(victim: Any, processor: Any) -> tuple[PreTrainedConfig, Any]:
    """(config, processor) of a ``victim=``: a config of any family, a model's config (weights
    unused) or one read from a Hub id / folder / config.json file (its processor from the same place)."""
    if isinstance(victim, (str, os.PathLike)):
        path, family = str(victim), family_of(victim)
        config = (
            family.config_class.from_json_file(path)
            if path.endswith(".json")
            else family.config_class.from_pretrained(path)
        )
        return config, processor or family.processor_class.from_pretrained(
            os.path.dirname(path) if path.endswith(".json") else path
        )
    for family in FAMILIES:
        if isinstance(victim, family.model_class):
            return victim.config, processor
        if isinstance(victim, family.config_class):
            return victim, processor
    accepted = " or ".join(f"a {f.config_class.__name__}, a {f.model_class.__name__}" for f in FAMILIES)
    raise TypeError(f"victim must be {accepted} (its architecture) or a Hub id / path, got {type(victim).__name__}.")


def _resolve_victims(
    victim: Any, pretrained: Any, processor: Any, learning_rate: float, fine_tune_learning_rate: float, seed: int
) -> list[_Victim]:
    if victim is None and pretrained is None:
        raise ValueError(
            "Pass victim= (an architecture trained from scratch: CLIPConfig or SiglipConfig, Hub id or path) and/or "
            "pretrained= (a model fine-tuned on each copy: Hub id, path, CLIPModel or SiglipModel)."
        )
    victims = []
    if victim is not None:
        config, victim_processor = _architecture(victim, processor)
        if victim_processor is None:
            raise ValueError(
                f"processor is required with a {type(config).__name__} or its model as victim: "
                f"pass processor={family_of(config).processor_class.__name__}(...)."
            )
        victims.append(_Victim(FROM_SCRATCH, config, victim_processor, learning_rate, _source(victim)))
    if pretrained is not None:
        if isinstance(pretrained, PreTrainedConfig):
            raise TypeError(
                f"pretrained must hold weights (a model, Hub id or path); a {type(pretrained).__name__} belongs in victim=."
            )
        model, pretrained_processor = load_image_text_model(pretrained, processor, seed)
        victims.append(_Victim(FINE_TUNED, model, pretrained_processor, fine_tune_learning_rate, _source(pretrained)))
    return victims


def _config(model: PreTrainedModel | PreTrainedConfig) -> PreTrainedConfig:
    return model.config if isinstance(model, PreTrainedModel) else model


# ---------------------------------------------------------------------------------------- identity and reuse

# Settings that shape every victim; a clean victim is reused only when all of them agree.
_RECIPE_KEYS = ("epochs", "batch_size", "seed", "mixed_precision")


def _rows_identity(digests: list[int]) -> str:
    """The rows, in order (order decides the seeded batches): a digest of their row digests."""
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def _victim_identity(spec: _Victim) -> str:
    """What a victim starts from: its architecture, its weights when pretrained, its processor."""
    digest = hashlib.sha256()
    fields = _config(spec.model).to_dict()
    for bookkeeping in ("transformers_version", "architectures"):  # save_pretrained writes them; training ignores them
        fields.pop(bookkeeping, None)
    fields["dtype"] = fields.get("dtype") or "float32"  # unset means the float32 default a model is built in
    digest.update(json.dumps(json_safe(fields), sort_keys=True, default=str).encode())
    if isinstance(spec.model, PreTrainedModel):
        for name, tensor in sorted(spec.model.state_dict().items()):
            digest.update(f"{name} {tensor.dtype}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    tokenizer = spec.processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the padding/truncation state the last call left behind
        fields = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        digest.update(json.dumps(fields, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(spec.processor.image_processor.to_json_string().encode())
    digest.update(str(spec.learning_rate).encode())
    return digest.hexdigest()


def load_report(source: ProtectionReport | str | os.PathLike | Mapping[str, Any]) -> ProtectionReport:
    """A `ProtectionReport` from itself, from the ``report.json`` an audit wrote, or from its dict."""
    if isinstance(source, ProtectionReport):
        return source
    expected = (
        "a ProtectionReport, the report.json an audit wrote, or its dict (keys 'settings', 'verdicts', 'histories')"
    )
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as handle:
                source = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(
                f"reuse: cannot read {os.fspath(source)!r} ({type(error).__name__}: {error}); pass {expected}."
            ) from None
    if not isinstance(source, Mapping) or "verdicts" not in source or "settings" not in source:
        raise ValueError(f"reuse: expected {expected}.")
    try:
        verdicts = [Verdict(**v) for v in source["verdicts"]]
    except TypeError as error:
        raise ValueError(f"reuse: a verdict of that report has unexpected fields ({error}); pass {expected}.") from None
    histories = {  # report.json writes NaN (the loss before training) as null
        key: [{k: math.nan if v is None else v for k, v in entry.items()} for entry in history]
        for key, history in source.get("histories", {}).items()
    }
    return ProtectionReport(verdicts, dict(source.get("chance", {})), histories, dict(source["settings"]))


def _reusable_clean(
    reuse: Any, settings: dict[str, Any], reusable_defenses: set[str]
) -> dict[tuple[str, str], list[dict[str, float]]]:
    """(victim, defense) -> clean victim history, from an earlier audit of the same clean rows, test
    rows, victims and recipe. Victims are deterministic for a seed on one machine, so retraining
    them would reproduce these numbers; anything that could change them refuses the reuse."""
    earlier = load_report(reuse)
    before, now = earlier.settings.get("identity"), settings["identity"]
    if not before:
        raise ValueError(
            "reuse: that report does not record which rows and victims it audited (it predates hf_unlearnable's "
            "audit identities), so its clean victims cannot be checked; run without reuse."
        )
    for key in ("clean_train", "test"):
        if before.get(key) != now[key]:
            raise ValueError(
                f"reuse: that report audited other {key} rows (or the same in another order); its clean victims "
                f"are not this audit's. Pass the report of an audit of the same {key}, or run without reuse."
            )
    for key in _RECIPE_KEYS:
        if earlier.settings.get(key) != settings[key]:
            raise ValueError(
                f"reuse: that report trained its victims with {key}={earlier.settings.get(key)!r}, this audit "
                f"with {key}={settings[key]!r}; pass the same {key}, or run without reuse."
            )
    victims = {label for label, identity in now["victims"].items() if before.get("victims", {}).get(label) == identity}
    if not victims:
        raise ValueError(
            f"reuse: none of this audit's victims ({', '.join(now['victims'])}) is one that report trained "
            "(same architecture, weights, processor and learning rate); run without reuse."
        )
    found = {}
    for key, history in earlier.histories.items():
        victim, defense, copy = key.split(" | ")
        if copy == "clean" and victim in victims and defense in reusable_defenses and history:
            found[(victim, defense)] = history
    return found


# ---------------------------------------------------------------------------------------- the audit


def evaluate_protection(
    clean_train: datasets.Dataset,
    protected_train: datasets.Dataset | Mapping[str, datasets.Dataset],
    test: datasets.Dataset,
    *,
    defenses: Iterable[str | Defense] = ("none",),
    victim: CLIPConfig | CLIPModel | SiglipConfig | SiglipModel | str | os.PathLike | None = None,
    processor: Any = None,
    pretrained: CLIPModel | SiglipModel | str | os.PathLike | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    fine_tune_learning_rate: float = 1e-5,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = 8 / 255,
    mixed_precision: str = "auto",
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    reuse: ProtectionReport | str | os.PathLike | None = None,
) -> ProtectionReport:
    """Train victims on the clean and the protected copy under each defense; a verdict per defense.

    For each victim (``victim``: trained from scratch; ``pretrained``: fine-tuned; both when both
    are given) and each defense, `train_victim` trains one model on ``clean_train`` and one on each
    protected copy, with the same recipe, seed and defense, and evaluates them on the clean
    ``test`` split after every epoch. The verdict (module docstring: protected / weakened / broken /
    inconclusive) compares the protected victim's mean R@10 with chance and with the clean victim
    under the same defense. Runs on the GPU when there is one (Accelerate); under ``accelerate
    launch`` every process trains its share and the main process writes the report.

    Args:
        clean_train: the clean training data.
        protected_train: its protected copy (same rows, same order), or a mapping from a label to
            several copies (e.g. ``{"MEM-3": ..., "EM": ...}``) audited against one clean victim.
        test: clean evaluation rows, none of them in ``clean_train``.
        defenses: names from `hf_unlearnable.defenses.available_defenses()` ("none" = no defense)
            and/or callables ``defense(pixels, captions, generator) -> (pixels, captions)`` (see
            `train_victim`), labelled by their ``name`` or ``__name__``.
        victim: the architecture trained from scratch, as in the MEM paper: a `CLIPConfig`, a
            `CLIPModel` (its config; weights unused) or a Hub id / path / config.json file; or the
            same of SigLIP (`SiglipConfig`, `SiglipModel`), trained with SigLIP's sigmoid loss.
        processor: the model's processor (`CLIPProcessor`, `SiglipProcessor`); loaded from the path
            when ``victim``/``pretrained`` is one.
        pretrained: a pretrained CLIP or SigLIP (Hub id, path, `CLIPModel` or `SiglipModel`)
            fine-tuned on each copy at ``fine_tune_learning_rate``, as a trainer who starts from
            public weights would.
        epochs, batch_size, learning_rate, seed, mixed_precision: the victim recipe (`train_victim`);
            ``learning_rate`` for victims from scratch.
        fine_tune_learning_rate: peak learning rate when fine-tuning ``pretrained`` (1e-5 class).
        image_column, caption_column: column names (the same in all three data sets).
        epsilon: image budget of the protection, for the row-for-row check of the copies.
        output_dir: where to write ``report.md``, ``report.json`` and ``report.png`` (None: nothing written).
        progress: a bar over victims and one per victim over its epochs.
        reuse: an earlier audit's report (a `ProtectionReport` or its ``report.json``) of the same
            clean rows, test rows, victims and recipe: its clean victims under the named defenses
            both audits share are taken from it instead of retrained, which halves the cost of
            auditing one new copy. Victims are deterministic for a seed, so the numbers are those a
            retrain gives on the machine that wrote the report. The report records what it
            audited (``settings["identity"]``: digests of the rows in order and of each victim's
            config, weights, processor and learning rate); anything that differs is refused.
            ``settings["reused_clean"]`` lists what was reused; ``settings["models"]`` the model
            class each victim trains (``SiglipModel``: a SigLIP victim).

    Returns:
        `ProtectionReport`: ``verdicts`` (one per copy, victim and defense), ``broken``, ``summary()``.

    Raises:
        ValueError: an unknown defense name (listing the valid ones), a test split sharing rows with
            the training split, a protected copy that does not match the clean copy row for row, a
            missing column, neither ``victim`` nor ``pretrained``, a ``reuse`` report of other rows,
            victims or recipe.
        TypeError: data sets or models of the wrong type.
    """
    copies = _labelled_copies(protected_train)
    check_dataset(clean_train, image_column, caption_column, name="clean_train")
    check_dataset(test, image_column, caption_column, name="test")
    defenses = _as_list(defenses)  # iterated twice: resolved, then which are registry names
    resolved = resolve_defenses(defenses, seed)
    victims = _resolve_victims(victim, pretrained, processor, learning_rate, fine_tune_learning_rate, seed)
    for label, copy in copies.items():
        name = "protected_train" if label == "protected" else f"protected_train[{label!r}]"
        check_copies_match(
            clean_train, copy, image_column=image_column, caption_column=caption_column, epsilon=epsilon, name=name
        )
    image_size = int(_config(victims[0].model).vision_config.image_size)
    train_digests = row_digests(clean_train, image_size, image_column, caption_column)
    test_digests = row_digests(test, image_size, image_column, caption_column)
    refuse_shared_rows(train_digests, test_digests)  # as check_no_overlap

    captions = test.select_columns([caption_column]).with_format(None)[caption_column]
    chance = chance_scores([len(caption_list(value)) for value in captions])
    recipe = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "mixed_precision": mixed_precision}
    settings = {
        "defenses": [label for label, _ in resolved],
        "victims": {v.label: v.source for v in victims},
        "models": {v.label: family_of(v.model).model_class.__name__ for v in victims},
        "copies": list(copies),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "rows": {"train": len(clean_train), "test": len(test)},
        "epsilon": epsilon,
        "thresholds": {"protected_times_chance": PROTECTED_FACTOR, "broken_share_of_clean": BROKEN_SHARE},
        "identity": {
            "clean_train": _rows_identity(train_digests),
            "test": _rows_identity(test_digests),
            "victims": {v.label: _victim_identity(v) for v in victims},
        },
    }
    named = {label for (label, _), item in zip(resolved, defenses) if isinstance(item, str)}
    reused = {} if reuse is None else _reusable_clean(reuse, settings, named)
    settings["reused_clean"] = [
        f"{v.label} | {label}" for v in victims for label, _ in resolved if (v.label, label) in reused
    ]
    histories = _train_victims(
        victims,
        resolved,
        {"clean": clean_train, **copies},
        test,
        reused,
        recipe,
        progress,
        image_column=image_column,
        caption_column=caption_column,
    )
    verdicts = _verdicts(victims, resolved, list(copies), histories, mean_recall_at_10(chance))
    report = ProtectionReport(verdicts, chance, histories, settings)
    if output_dir is not None and _is_main_process():
        write_report(report, output_dir)
    return report


def _labelled_copies(protected_train: datasets.Dataset | Mapping[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    """The protected copies by label ("protected" for a single one)."""
    copies = dict(protected_train) if isinstance(protected_train, Mapping) else {"protected": protected_train}
    if not copies:
        raise ValueError("protected_train is an empty mapping; pass at least one protected copy.")
    if "clean" in copies:
        raise ValueError('"clean" names the clean victim; label the protected copies otherwise.')
    return copies


def _train_victims(
    victims: list[_Victim],
    resolved: list[tuple[str, Callable[[], Defense | None]]],
    data: dict[str, datasets.Dataset],
    test: datasets.Dataset,
    reused: dict[tuple[str, str], list[dict[str, float]]],
    recipe: dict[str, Any],
    progress: bool,
    **columns: str,
) -> dict[str, list[dict[str, float]]]:
    """ "victim | defense | copy" -> history, for every victim, defense and copy of ``data`` (the
    clean one first): `train_victim` with the same recipe, seed and a fresh defense, or the history
    ``reused`` holds for a clean victim."""
    histories: dict[str, list[dict[str, float]]] = {}
    bar = tqdm(
        total=len(victims) * len(resolved) * len(data) - len(reused),
        desc="audit",
        unit="victim",
        disable=not progress,
        position=0,
    )
    for spec in victims:
        for defense_label, make_defense in resolved:
            for copy_label, rows in data.items():
                key = f"{spec.label} | {defense_label} | {copy_label}"
                if copy_label == "clean" and (spec.label, defense_label) in reused:
                    histories[key] = reused[(spec.label, defense_label)]
                    continue
                bar.set_postfix_str(key)
                result = train_victim(
                    rows,
                    test,
                    spec.model,
                    spec.processor,
                    learning_rate=spec.learning_rate,
                    defense=make_defense(),
                    progress=progress,
                    **recipe,
                    **columns,
                )
                histories[key] = result.history
                result.model = None  # free it before the next victim
                bar.update(1)
    bar.close()
    return histories


def _verdicts(
    victims: list[_Victim],
    resolved: list[tuple[str, Callable[[], Defense | None]]],
    copies: list[str],
    histories: dict[str, list[dict[str, float]]],
    chance10: float,
) -> list[Verdict]:
    """One verdict per victim, defense and protected copy: its final mean R@10 against chance and
    against the clean victim under the same defense (`judge`); a broken one is logged."""
    verdicts = []
    for spec in victims:
        for defense_label, _ in resolved:
            clean_history = histories[f"{spec.label} | {defense_label} | clean"]
            clean10, start10 = mean_recall_at_10(clean_history[-1]), mean_recall_at_10(clean_history[0])
            for copy_label in copies:
                history = histories[f"{spec.label} | {defense_label} | {copy_label}"]
                protected10 = mean_recall_at_10(history[-1])
                verdict, reason = judge(protected10, clean10, chance10, start10)
                verdicts.append(
                    Verdict(
                        copy_label,
                        spec.label,
                        defense_label,
                        verdict,
                        protected10,
                        clean10,
                        chance10,
                        start10,
                        reason,
                        {k: history[-1][k] for k in VERDICT_METRICS},
                        {k: clean_history[-1][k] for k in VERDICT_METRICS},
                    )
                )
                if verdict == "broken":
                    logger.warning(
                        "defense %s breaks the protection of %s (%s victim): %s",
                        defense_label,
                        copy_label,
                        spec.label,
                        reason,
                    )
    return verdicts


def _is_main_process() -> bool:
    return process_state().is_main_process
