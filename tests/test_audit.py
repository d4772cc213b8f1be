"""The audit before publishing (hf_unlearnable.audit, `hf-unlearnable evaluate`)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from hf_unlearnable import evaluate_protection
from hf_unlearnable.audit import (
    ProtectionReport,
    Verdict,
    chance_scores,
    check_copies_match,
    check_no_overlap,
    judge,
    mean_recall_at_10,
    resolve_defenses,
)
from hf_unlearnable.baselines import random_noise
from hf_unlearnable.cli import main as cli_main
from hf_unlearnable.images import encode_png, prepare_image
from hf_unlearnable.metrics import retrieval_metrics
from hf_unlearnable.testing import synthetic_captions
from hf_unlearnable.victim import VictimResult, retrieval_scores

TRIGGER = "zq"


@pytest.fixture(scope="module")
def train():
    ds = synthetic_captions(32, image_size=32, seed=0)
    return ds.add_column("row_id", list(range(len(ds))))


@pytest.fixture(scope="module")
def test_split():
    return synthetic_captions(24, image_size=32, seed=1)


@pytest.fixture(scope="module")
def protected(train):
    """A stand-in for a protected copy: +-8/255 noise and a one-word trigger before every caption."""
    noisy = random_noise(train, 32, seed=3)
    return noisy.map(lambda row: {"caption": f"{TRIGGER} {row['caption']}"})


class Recorder:
    """A defense that changes nothing and records the captions of every batch it sees."""

    def __init__(self, name: str):
        self.name = name
        self.batches: list[list[str]] = []

    def __call__(self, pixels, captions, generator):
        assert pixels.dtype == torch.float32 and 0 <= float(pixels.min()) and float(pixels.max()) <= 1
        self.batches.append(list(captions))
        return pixels, captions


# --------------------------------------------------------------------------------------- chance and verdicts


@pytest.mark.parametrize("counts", [[1] * 40, [1, 2, 3, 5] * 10])
def test_chance_scores_match_a_random_ranker(counts):
    rng = np.random.default_rng(0)
    image_index = np.repeat(np.arange(len(counts)), counts)
    draws = [retrieval_metrics(rng.random((len(image_index), len(counts))), image_index) for _ in range(400)]
    chance = chance_scores(counts)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert np.mean([d[key] for d in draws]) == pytest.approx(chance[key], abs=1.5), key
    for key in ("i2t_medr", "t2i_medr"):
        assert np.mean([d[key] for d in draws]) == pytest.approx(chance[key], rel=0.12), key


def test_chance_with_one_caption_per_image_is_k_over_n():
    chance = chance_scores([1] * 200)
    assert chance["t2i_r10"] == pytest.approx(5.0) and chance["i2t_r10"] == pytest.approx(5.0)
    assert chance["t2i_medr"] == 100.5 and mean_recall_at_10(chance) == pytest.approx(5.0)


def test_verdict_thresholds_are_three_times_chance_and_half_of_clean():
    chance = 2.0
    assert judge(6.0, 80.0, chance, 2.0)[0] == "protected"  # exactly 3x chance
    assert judge(6.1, 80.0, chance, 2.0)[0] == "weakened"
    assert judge(39.9, 80.0, chance, 2.0)[0] == "weakened"
    assert judge(40.0, 80.0, chance, 2.0)[0] == "broken"  # exactly half of clean
    verdict, reason = judge(70.0, 80.0, chance, 2.0)
    assert verdict == "broken" and "88% of the clean victim's 80.0" in reason
    assert judge(1.0, 6.0, chance, 2.0)[0] == "inconclusive"  # neither victim above 3x chance: nothing learned


def test_the_report_names_the_weakest_defense_of_each_copy():
    keys = [f"{d}_{m}" for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr")]

    def verdict(copy, defense, protected, clean):
        return Verdict(
            copy,
            "from scratch",
            defense,
            judge(protected, clean, 2.0, 2.0)[0],
            protected,
            clean,
            2.0,
            2.0,
            "",
            dict.fromkeys(keys, protected),
            dict.fromkeys(keys, clean),
        )

    report = ProtectionReport(
        [
            verdict("MEM-3", "none", 10.0, 60.0),
            verdict("MEM-3", "strip-3", 50.0, 55.0),
            verdict("MEM-3", "jpeg-75", 12.0, 58.0),
            verdict("layered", "none", 8.0, 60.0),
            verdict("layered", "strip-3", 14.0, 55.0),
            verdict("layered", "jpeg-75", 16.0, 58.0),
        ],
        chance=dict.fromkeys(keys, 2.0),
        histories={},
        settings={},
    )
    summary, markdown = report.summary(), report.to_markdown()
    for text in (summary, markdown):
        # the highest share of the clean victim under the same defense, not the highest R@10
        assert "Weakest defense for MEM-3: strip-3 (from scratch): R@10 50.0, 91% of the clean victim's 55.0." in text
        assert "Weakest defense for layered: jpeg-75 (from scratch): R@10 16.0, 28% of the clean victim's 58.0." in text
    single = ProtectionReport(report.verdicts[3:], report.chance, {}, {})
    assert "Weakest defense: jpeg-75 (from scratch)" in single.summary()


def test_a_defense_that_hurts_clean_data_more_than_the_copy_still_breaks_it():
    # Measured with strip-3 on synthetic captions: stripping removes the trigger from the protected
    # copy, and real words from the clean one, whose victim then learns little.
    verdict, reason = judge(57.8, 13.2, 5.0, 5.5)
    assert verdict == "broken" and "11.6x chance" in reason


def test_a_fine_tuned_victim_is_judged_against_its_pretrained_score():
    # The pretrained model already scores 30 (15x chance): fine-tuning on the copy that stays there learned nothing.
    verdict, reason = judge(29.0, 60.0, 2.0, 30.0)
    assert verdict == "protected" and "the pretrained model's 30.0 before fine-tuning" in reason
    assert (
        judge(31.0, 60.0, 2.0, 30.0)[0] == "broken"
    )  # above it and >= half of clean fine-tuning (the fine-tuning target)
    assert judge(25.0, 28.0, 2.0, 30.0)[0] == "inconclusive"  # clean fine-tuning did not rise above it either


# --------------------------------------------------------------------------------------- bad input


def test_unknown_defense_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown defense 'jpeg-1000'.*none, jpeg-10, .*jpeg-75.*strip-3"):
        resolve_defenses(["none", "jpeg-1000"])


def test_defense_names_resolve_through_the_registry_fresh_per_victim():
    resolved = dict(resolve_defenses(["none", "jpeg-75+strip-3", Recorder("mine")], seed=3))
    assert list(resolved) == ["none", "jpeg-75+strip-3", "mine"]
    assert resolved["none"]() is None  # trained without a defense hook
    first, second = resolved["jpeg-75+strip-3"](), resolved["jpeg-75+strip-3"]()
    assert first is not second and first.name == "jpeg-75+strip-3"  # stateful defenses start fresh per victim
    pixels = torch.rand(2, 3, 8, 8)
    _, captions = first(pixels, ["zq red circle left", "zq blue big square"], torch.Generator().manual_seed(0))
    assert captions == ["left", "square"]


def test_defenses_of_the_wrong_kind_or_duplicated_are_refused():
    with pytest.raises(TypeError, match="defenses holds int"):
        resolve_defenses([3])
    with pytest.raises(ValueError, match="duplicate"):
        resolve_defenses([Recorder("a"), Recorder("a")])
    with pytest.raises(ValueError, match="empty"):
        resolve_defenses([])


def test_a_test_split_that_overlaps_the_training_split_is_refused(train, test_split):
    leaky = datasets.concatenate_datasets([test_split.select(range(10)), train.select([7, 3]).remove_columns("row_id")])
    with pytest.raises(
        ValueError, match=r"test shares 2 of its 12 rows.*test row 10 = train row 7, test row 11 = train row 3"
    ):
        check_no_overlap(train, leaky, image_size=32)
    check_no_overlap(train, test_split, image_size=32)  # disjoint: accepted
    # Same image, other caption: a different row (the digest covers pixels and captions).
    recaptioned = train.select([5]).remove_columns("row_id").map(lambda row: {"caption": row["caption"] + " again"})
    check_no_overlap(train, recaptioned, image_size=32)


def test_evaluate_protection_refuses_an_overlapping_test_split_before_training(clip, train, protected):
    model, processor = clip
    recorder = Recorder("recorder")
    with pytest.raises(ValueError, match="test shares 4 of its 4 rows"):
        evaluate_protection(
            train,
            protected,
            train.select(range(4)),
            defenses=[recorder],
            victim=model.config,
            processor=processor,
            epochs=1,
            progress=False,
        )
    assert recorder.batches == []


def test_a_copy_that_matches_row_for_row_is_accepted(train, protected):
    check_copies_match(train, protected)
    # The trigger may sit anywhere in the caption, as long as the clean words stay in order.
    middle = train.map(lambda row: {"caption": row["caption"].replace(" ", f" {TRIGGER} ", 1)})
    check_copies_match(train, middle)


def test_copies_that_do_not_match_row_for_row_are_refused(train, protected):
    with pytest.raises(ValueError, match="has 31 rows and clean_train 32"):
        check_copies_match(train, protected.select(range(31)))
    shuffled = protected.select([1, 0, *range(2, 32)])
    with pytest.raises(ValueError, match="row 0 does not match clean_train row 0: column 'row_id' is 1, not 0"):
        check_copies_match(train, shuffled)
    with pytest.raises(ValueError, match="row 0 does not match.*does not hold the words"):
        check_copies_match(train, shuffled.remove_columns("row_id").add_column("row_id", list(range(32))))
    with pytest.raises(ValueError, match="has columns"):
        check_copies_match(train, protected.remove_columns("row_id"))
    # Row 31's image replaced by row 0's (captions and columns intact): the image check catches it.
    swapped_image = {"bytes": encode_png(prepare_image(train[0]["image"], 32)), "path": None}
    wrong = protected.map(
        lambda row, i: {"image": swapped_image} if i == 31 else {}, with_indices=True, features=protected.features
    )
    with pytest.raises(ValueError, match=r"row 31 does not match.*image differs from the clean one by \d+/255 levels"):
        check_copies_match(train, wrong)


# --------------------------------------------------------------------------------------- the audit


@pytest.fixture(scope="module")
def audited(clip, train, protected, test_split, tmp_path_factory):
    model, processor = clip
    recorders = [Recorder("first")]
    output = tmp_path_factory.mktemp("audit")
    report = evaluate_protection(
        train,
        protected,
        test_split,
        defenses=["none", *recorders, "strip-1"],
        victim=model.config,
        processor=processor,
        epochs=2,
        batch_size=16,
        progress=False,
        output_dir=output,
    )
    return report, recorders, output


def test_audit_trains_a_clean_and_a_protected_victim_per_defense(audited, train, protected):
    report, recorders, _ = audited
    assert [(v.victim, v.defense) for v in report.verdicts] == [
        ("from scratch", d) for d in ("none", "first", "strip-1")
    ]
    assert sorted(report.histories) == sorted(
        f"from scratch | {d} | {c}" for d in ("none", "first", "strip-1") for c in ("clean", "protected")
    )
    for recorder in recorders:  # 2 epochs x 2 batches for the clean victim, then the same for the protected one
        assert len(recorder.batches) == 8
        clean_seen = {text for batch in recorder.batches[:4] for text in batch}
        protected_seen = {text for batch in recorder.batches[4:] for text in batch}
        assert clean_seen == set(train["caption"]) and protected_seen == set(protected["caption"])
    # A pass-through defense trains exactly the victims of "none": the defense hook is all that differs.
    assert report.histories["from scratch | first | protected"][-1]["t2i_r10"] == pytest.approx(
        report.histories["from scratch | none | protected"][-1]["t2i_r10"]
    )


def test_audit_verdicts_follow_the_rule(audited):
    report, _, _ = audited
    assert report.chance == chance_scores([1] * 24)
    for v in report.verdicts:
        protected = report.histories[f"{v.victim} | {v.defense} | protected"]
        clean = report.histories[f"{v.victim} | {v.defense} | clean"]
        assert v.protected_r10 == mean_recall_at_10(protected[-1]) and v.clean_r10 == mean_recall_at_10(clean[-1])
        assert v.start_r10 == mean_recall_at_10(clean[0])
        assert (v.verdict, v.reason) == judge(
            v.protected_r10, v.clean_r10, mean_recall_at_10(report.chance), v.start_r10
        )
    assert report.broken == [v for v in report.verdicts if v.verdict == "broken"]


def test_audit_writes_markdown_json_and_figure(audited):
    report, _, output = audited
    assert set(report.paths) == {"markdown", "json", "figure"}
    markdown = (output / "report.md").read_text()
    assert (
        "| from scratch | first |" in markdown
        and "Chance R@10: 41.67" in markdown
        and "![R@10 per defense](report.png)" in markdown
    )
    assert "test split is small" in markdown  # 24 test images: the report says the verdict is coarse
    saved = json.loads((output / "report.json").read_text())
    assert [v["defense"] for v in saved["verdicts"]] == ["none", "first", "strip-1"]
    assert saved["histories"]["from scratch | none | clean"][0]["train_loss"] is None  # NaN -> null: valid JSON
    assert saved["settings"]["thresholds"] == {"protected_times_chance": 3.0, "broken_share_of_clean": 0.5}
    assert (output / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (
        output / "report.png"
    ).stat().st_size > 20_000


def scripted_victims(monkeypatch, r10_of):
    """Replace victim training by scripted scores: ``r10_of(train_ds, defense)`` gives the final R@10.
    (A tiny victim that really learns takes minutes; the benchmarks measure real ones.)"""
    import hf_unlearnable.audit.run as audit  # where evaluate_protection looks train_victim up

    def fake_train_victim(train_ds, eval_ds, model, processor, *, defense=None, **kwargs):
        start = {key: 5.0 for key in ("i2t_r10", "t2i_r10")} | {"epoch": 0}
        final = {key: float(r10_of(train_ds, defense)) for key in ("i2t_r10", "t2i_r10")} | {"epoch": 1}
        for entry in (start, final):
            entry.update({k: 1.0 for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")}, i2t_medr=10.0, t2i_medr=10.0)
        return VictimResult(history=[start, final])

    monkeypatch.setattr(audit, "train_victim", fake_train_victim)


def blur(pixels, captions, generator):
    return pixels, captions


def test_a_defense_that_breaks_the_protection_is_named_plainly(clip, train, protected, monkeypatch, tmp_path):
    model, processor = clip
    test = synthetic_captions(100, image_size=32, seed=1)  # chance R@10 = 10, protected at <= 30
    clean_fingerprint = train._fingerprint
    # Clean victims reach 80; the protected copy gives 12 without a defense, 60 under "blur".
    scripted_victims(
        monkeypatch, lambda ds, defense: 80 if ds._fingerprint == clean_fingerprint else (60 if defense is blur else 12)
    )
    report = evaluate_protection(
        train,
        protected,
        test,
        defenses=["none", blur],
        victim=model.config,
        processor=processor,
        progress=False,
        output_dir=tmp_path,
    )
    assert [(v.defense, v.verdict) for v in report.verdicts] == [("none", "protected"), ("blur", "broken")]
    assert report.broken == [report.verdicts[1]]
    assert "BROKEN: these defenses break the protection: blur (from scratch)" in report.summary()
    assert "**BROKEN: these defenses break the protection: blur (from scratch)." in (tmp_path / "report.md").read_text()
    assert (
        "| from scratch | blur | **BROKEN** | 60.0 | 80.0 | 5.0 | 6.0 | 75% |" in (tmp_path / "report.md").read_text()
    )


def test_evaluate_command_exits_1_when_a_defense_breaks_the_protection(folders, monkeypatch, capsys):
    scripted_victims(monkeypatch, lambda ds, defense: 90)  # the protected copy teaches as much as the clean one
    code = cli_main(
        [
            "evaluate",
            "--clean-train",
            str(folders / "clean"),
            "--protected-train",
            str(folders / "protected"),
            "--test",
            str(folders / "test"),
            "--victim",
            str(folders / "victim"),
            "--output",
            str(folders / "broken"),
            "--no-progress",
        ]
    )
    assert code == 1 and "BROKEN" in capsys.readouterr().out


def test_evaluate_command_reuses_the_clean_victims_of_an_earlier_report(folders, monkeypatch):
    scripted_victims(monkeypatch, lambda ds, defense: 20)
    common = [
        "evaluate",
        "--clean-train",
        str(folders / "clean"),
        "--protected-train",
        str(folders / "protected"),
        "--test",
        str(folders / "test"),
        "--victim",
        str(folders / "victim"),
        "--no-progress",
    ]
    assert cli_main([*common, "--output", str(folders / "first")]) == 0
    assert (
        cli_main(
            [
                *common,
                "--defenses",
                "none,strip-1",
                "--reuse",
                str(folders / "first" / "report.json"),
                "--output",
                str(folders / "second"),
            ]
        )
        == 0
    )
    saved = json.loads((folders / "second" / "report.json").read_text())
    assert saved["settings"]["reused_clean"] == ["from scratch | none"]


def test_pretrained_victim_is_fine_tuned_from_its_weights(clip, train, protected, test_split):
    model, processor = clip
    report = evaluate_protection(
        train,
        protected,
        test_split,
        victim=model.config,
        pretrained=model,
        processor=processor,
        epochs=1,
        batch_size=16,
        progress=False,
    )
    assert [v.victim for v in report.verdicts] == ["from scratch", "fine-tuned"]
    start = report.histories["fine-tuned | none | clean"][0]
    expected = retrieval_scores(model, processor, test_split)
    assert {k: start[k] for k in expected} == pytest.approx(expected)
    assert report.settings["fine_tune_learning_rate"] == 1e-5


def test_evaluate_needs_a_victim(train, protected, test_split):
    with pytest.raises(ValueError, match="Pass victim="):
        evaluate_protection(train, protected, test_split, progress=False)


# --------------------------------------------------------------------------------------- reuse of clean victims


def test_reuse_gives_the_verdicts_a_full_retrain_gives(audited, clip, train, protected, test_split):
    """The clean victims of a reusing audit are the earlier ones, its protected victims are retrained,
    and every verdict equals the earlier audit's (victims are deterministic for a seed)."""
    model, processor = clip
    first, _, output = audited
    again = evaluate_protection(
        train,
        protected,
        test_split,
        defenses=["strip-1", "none"],
        victim=model.config,
        processor=processor,
        epochs=2,
        batch_size=16,
        progress=False,
        reuse=output / "report.json",
    )
    assert again.settings["reused_clean"] == ["from scratch | strip-1", "from scratch | none"]
    assert again.settings["identity"] == first.settings["identity"]
    earlier = {v.defense: v for v in first.verdicts}
    for verdict in again.verdicts:
        assert verdict == earlier[verdict.defense]
        key = f"from scratch | {verdict.defense} | clean"
        assert again.histories[key] == first.histories[key]


def counting_victims(monkeypatch, r10_of):
    """`scripted_victims` that also records which copy and defense every trained victim had."""
    import hf_unlearnable.audit.run as audit

    calls = []
    scripted_victims(monkeypatch, r10_of)
    scripted = audit.train_victim

    def counted(train_ds, eval_ds, model, processor, *, defense=None, **kwargs):
        calls.append((train_ds._fingerprint, defense))
        return scripted(train_ds, eval_ds, model, processor, defense=defense, **kwargs)

    monkeypatch.setattr(audit, "train_victim", counted)
    return calls


def test_reuse_skips_only_the_clean_victims_it_can_vouch_for(clip, train, protected, monkeypatch, tmp_path):
    model, processor = clip
    test = synthetic_captions(100, image_size=32, seed=1)
    clean = train._fingerprint
    calls = counting_victims(monkeypatch, lambda ds, defense: 80 if ds._fingerprint == clean else 12)
    common = dict(victim=model.config, processor=processor, progress=False)
    evaluate_protection(train, protected, test, defenses=["none", "strip-1", blur], output_dir=tmp_path, **common)
    assert len(calls) == 6
    other_copy = protected.map(lambda row: {"caption": "qx " + row["caption"]})
    calls.clear()
    report = evaluate_protection(
        train,
        {"other": other_copy},
        test,
        defenses=["none", blur, "jpeg-75", "strip-1"],
        reuse=tmp_path / "report.json",
        **common,
    )
    # "none" and "strip-1" come from the report; "jpeg-75" was not in it, and a callable may differ
    # from one run to the next under the same name: both are trained clean again.
    assert [(fp == clean, getattr(defense, "name", defense)) for fp, defense in calls] == [
        (False, None),
        (True, blur),
        (False, blur),
        (True, "jpeg-75"),
        (False, "jpeg-75"),
        (False, "strip-1"),
    ]
    assert report.settings["reused_clean"] == ["from scratch | none", "from scratch | strip-1"]
    assert [(v.defense, v.clean_r10, v.verdict) for v in report.verdicts] == [
        ("none", 80.0, "protected"),
        ("blur", 80.0, "protected"),
        ("jpeg-75", 80.0, "protected"),
        ("strip-1", 80.0, "protected"),
    ]


def test_reuse_refuses_a_report_of_other_rows_victims_or_recipe(clip, train, protected, monkeypatch, tmp_path):
    model, processor = clip
    test = synthetic_captions(100, image_size=32, seed=1)
    scripted_victims(monkeypatch, lambda ds, defense: 50)
    common = dict(victim=model.config, processor=processor, progress=False)
    earlier = evaluate_protection(train, protected, test, **common)
    with pytest.raises(ValueError, match="other test rows"):
        evaluate_protection(train, protected, synthetic_captions(100, image_size=32, seed=2), reuse=earlier, **common)
    reordered = train.select(list(reversed(range(len(train)))))
    with pytest.raises(ValueError, match="other clean_train rows \\(or the same in another order\\)"):
        evaluate_protection(
            reordered, protected.select(list(reversed(range(len(train))))), test, reuse=earlier, **common
        )
    with pytest.raises(ValueError, match="with epochs=10, this audit with epochs=3"):
        evaluate_protection(train, protected, test, epochs=3, reuse=earlier, **common)
    with pytest.raises(ValueError, match="none of this audit's victims"):
        evaluate_protection(
            train,
            protected,
            test,
            victim=model.config,
            processor=processor,
            learning_rate=1e-3,
            progress=False,
            reuse=earlier,
        )
    wider = type(model.config).from_dict({**model.config.to_dict(), "projection_dim": model.config.projection_dim * 2})
    with pytest.raises(ValueError, match="none of this audit's victims"):
        evaluate_protection(train, protected, test, victim=wider, processor=processor, progress=False, reuse=earlier)
    undated = json.loads(json.dumps(earlier.to_dict()))
    del undated["settings"]["identity"]
    with pytest.raises(ValueError, match="does not record which rows and victims it audited"):
        evaluate_protection(train, protected, test, reuse=undated, **common)
    with pytest.raises(ValueError, match="cannot read .*no-such-report.json"):
        evaluate_protection(train, protected, test, reuse=tmp_path / "no-such-report.json", **common)


def test_a_pretrained_victim_is_reused_only_with_the_same_weights(clip, train, protected, monkeypatch):
    model, processor = clip
    test = synthetic_captions(100, image_size=32, seed=1)
    scripted_victims(monkeypatch, lambda ds, defense: 50)
    earlier = evaluate_protection(train, protected, test, pretrained=model, processor=processor, progress=False)
    assert evaluate_protection(
        train, protected, test, pretrained=model, processor=processor, progress=False, reuse=earlier
    ).settings["reused_clean"] == ["fine-tuned | none"]
    nudged = type(model)(model.config)
    nudged.load_state_dict(model.state_dict())
    with torch.no_grad():
        nudged.logit_scale += 1e-3
    with pytest.raises(ValueError, match="none of this audit's victims"):
        evaluate_protection(
            train, protected, test, pretrained=nudged, processor=processor, progress=False, reuse=earlier
        )


# --------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def folders(clip, train, protected, tmp_path_factory):
    model, processor = clip
    root = tmp_path_factory.mktemp("cli")
    test = synthetic_captions(100, image_size=32, seed=1)  # chance R@10 = 10
    for name, ds in (("clean", train), ("protected", protected), ("test", test)):
        ds.save_to_disk(str(root / name))
    model.save_pretrained(root / "victim")
    processor.save_pretrained(root / "victim")
    return root


def test_evaluate_command_prints_verdicts_and_writes_the_report(folders, capsys):
    code = cli_main(
        [
            "evaluate",
            "--clean-train",
            str(folders / "clean"),
            "--protected-train",
            str(folders / "protected"),
            "--test",
            str(folders / "test"),
            "--victim",
            str(folders / "victim"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--output",
            str(folders / "report"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    saved = json.loads((folders / "report" / "report.json").read_text())
    (verdict,) = saved["verdicts"]
    assert code == (1 if verdict["verdict"] == "broken" else 0)
    assert f"protected | from scratch | none: {verdict['verdict'].upper()}" in out
    assert (folders / "report" / "report.md").exists() and (folders / "report" / "report.png").exists()


def test_evaluate_command_refuses_bad_input_with_exit_2(folders, capsys):
    common = [
        "--test",
        str(folders / "test"),
        "--victim",
        str(folders / "victim"),
        "--epochs",
        "1",
        "--no-progress",
        "--output",
        str(folders / "unused"),
    ]
    assert (
        cli_main(
            ["evaluate", "--clean-train", str(folders / "clean"), "--protected-train", str(folders / "test"), *common]
        )
        == 2
    )
    assert "has 100 rows and clean_train 32" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "evaluate",
                "--clean-train",
                str(folders / "clean"),
                "--protected-train",
                str(folders / "protected"),
                "--defenses",
                "none,no-such-defense",
                *common,
            ]
        )
        == 2
    )
    assert "Unknown defense 'no-such-defense'. Valid names: none, jpeg-10" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "evaluate",
                "--clean-train",
                str(folders / "clean"),
                "--protected-train",
                str(folders / "protected"),
                "--reuse",
                str(folders / "no-such" / "report.json"),
                *common,
            ]
        )
        == 2
    )
    assert "reuse: cannot read" in capsys.readouterr().err
    assert not (folders / "unused").exists()
