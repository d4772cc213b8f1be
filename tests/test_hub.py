"""hub: the dataset card and push_protected, fully offline (uploads are recorded, never sent)."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import datasets
import pytest
from huggingface_hub import CommitInfo, DatasetCard
from huggingface_hub.errors import EntryNotFoundError

import hf_unlearnable
from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.hub import EM_CITATION, LIBRARY_CITATION, MEM_CITATION, dataset_card, push_protected, size_category
from hf_unlearnable.testing import synthetic_captions

from .conftest import FAST_CONFIG

TOKEN = "hf_SECRETtoken1234567890abcdef"
REQUIRED_TAGS = {"unlearnable-examples", "multimodal", "data-protection"}
# What Dataset.push_to_hub writes into README.md for load_dataset.
LOADER_README = """---
dataset_info:
  features:
  - name: image
    dtype: image
  splits:
  - name: train
    num_examples: 48
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
"""


def with_license(ds: datasets.Dataset, license: str | None) -> datasets.Dataset:
    info = copy.deepcopy(ds.info)
    info.license = license
    return datasets.Dataset(ds.data, info=info)


# ------------------------------------------------------------------------------------ the card
def test_card_metadata_parses_back(fitted):
    transform, protected = fitted
    card = dataset_card(protected, transform, source_dataset="me/photos", license="cc-by-4.0")
    data = DatasetCard(str(card)).data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert {"image-to-text", "text-to-image"} <= set(data["task_categories"])
    assert REQUIRED_TAGS <= set(data["tags"]) and "mem" in data["tags"]
    assert data["source_datasets"] == ["me/photos"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "me/photos (MEM-protected)"


def test_default_card_says_it_is_protected_how_to_use_it_and_what_to_cite(fitted):
    transform, protected = fitted
    text = DatasetCard(str(dataset_card(protected, transform, pretty_name="My photos"))).text
    for expected in (
        "# My photos",
        "**protected copy**",
        "Multi-step Error Minimization (MEM",
        "imperceptible perturbation",
        "every caption carries added words",
        "`image`: the protected image, a lossless PNG at 32x32 px",
        "`caption`: one caption per image: the source text with added words",
        "number of rows (48)",
        "no re-encoding (JPEG",
        "Captions are not plain descriptions",
        "Keep the originals private",
        "not encryption",
        "CLIP-style contrastive",
        "The settings are not published",
        "No licence was given",
        "Liu, Xinwei and Jia, Xiaojun and Xun, Yuan and Liang, Siyuan and Cao, Xiaochun",
        "2407.16307",
        "ACM MM",
        LIBRARY_CITATION,
        "far worse than a model trained on the original",
    ):
        assert expected in text, expected
    # The measured protection stops at 4-8x chance (README, "Limitations"): the card must not promise chance.
    assert "chance" not in text


def test_library_citation_follows_citation_cff():
    cff = (Path(__file__).resolve().parent.parent / "CITATION.cff").read_text(encoding="utf-8")
    title = re.search(r'^title: "(.*)"$', cff, re.MULTILINE).group(1)
    author = re.search(r'^  - name: "(.*)"$', cff, re.MULTILINE).group(1)
    assert f"{{{title}}}" in LIBRARY_CITATION and f"{{{{{author}}}}}" in LIBRARY_CITATION
    assert "Multimodal Unlearnable Examples" in cff and "Multimodal Unlearnable Examples" in MEM_CITATION


# An adversary reading the default card must learn nothing that helps undo the protection.
POSITION_WORDS = re.compile(
    r"\b(first|prefix\w*|start\w*|begin\w*|lead\w*|front|last|end|ends|suffix\w*|position\w*|prepend\w*|"
    r"append\w*|after|before|token\w*|trigger\w*)\b"
)
COUNTED_WORDS = re.compile(
    r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|a few|few|several|some)\s+(\w+\s+)?words?\b"
)
SETTING_WORDS = (
    "hotflip",
    "pgd",
    "epsilon",
    "/255",
    "l-inf",
    "l_inf",
    "adamw",
    "surrogate",
    "seed",
    "hidden size",
    "from scratch",
    "budget",
    "learning rate",
    "openai",
    "clip-vit",
    hf_unlearnable.__version__,
)
ODD_CONFIG = MEMConfig(
    method="mem",
    epsilon=7 / 255,
    trigger_length=5,
    hotflip_candidates=13,
    trigger_rounds=3,
    surrogate_steps=17,
    pgd_steps=11,
    batch_size=19,
    max_rounds=23,
    learning_rate=0.000777,
    online_rounds=9,
    seed=4242,
)


def _trigger_phrases(protected, clean) -> set[str]:
    return {text[: -len(original)].strip() for text, original in zip(protected["caption"][:], clean["caption"][:])}


def test_default_card_publishes_nothing_that_helps_undo_the_protection(fitted, dataset, clip, monkeypatch):
    transform, protected = fitted
    card = str(dataset_card(protected, transform, source_dataset="me/photos"))
    lower = card.lower()
    assert not POSITION_WORDS.search(lower), POSITION_WORDS.search(lower)
    assert not COUNTED_WORDS.search(lower), COUNTED_WORDS.search(lower)
    for config in (transform.config, ODD_CONFIG):
        for name, value in config.to_dict().items():
            if name == "method":  # named on purpose ("cite ... the method"); its value is checked in the layered test
                continue
            assert name not in lower and name.replace("_", " ") not in lower, name
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 10:
                assert not re.search(rf"\b{re.escape(str(value))}\b", card), (name, value)
    assert not re.search(r"\bround", lower)
    for word in SETTING_WORDS:
        assert word not in lower, word
    triggers = _trigger_phrases(protected, dataset)
    assert len(triggers) > 1 and all(triggers)
    for phrase in triggers:
        assert phrase not in card, phrase
    # Single trigger words cannot be checked one by one: they are ordinary words ("with", "an",
    # "hall"). The robust check: the default card does not depend on the triggers, the settings or
    # the surrogate at all. The clean data with an unfitted transform (no trigger exists anywhere),
    # other settings and a named Hub surrogate gets the identical card.
    model, processor = clip
    other = ProtectTransform(model, processor, ODD_CONFIG, progress=False)
    monkeypatch.setattr(other.surrogate.model.config, "_name_or_path", "openai/clip-vit-base-patch32")
    assert str(dataset_card(protected, other, source_dataset="me/photos")) == card
    assert str(dataset_card(dataset, other, source_dataset="me/photos")) == card


def test_full_card_records_how_it_was_made(fitted):
    transform, protected = fitted
    text = DatasetCard(str(dataset_card(protected, transform, pretty_name="My photos", card_details="full"))).text
    summary = transform.summary()
    for expected in (
        "# My photos",
        "Multi-step Error Minimization (MEM)",
        "records every setting of the protection",
        "8/255 per pixel",
        f"{FAST_CONFIG.trigger_length} words at the start of each caption",
        f"{FAST_CONFIG.pgd_steps} steps of 1/255",
        f"| Rounds run | {len(transform.history)} (at most {FAST_CONFIG.max_rounds})",
        f"training {summary['surrogate_loss']:.4f}, on the protected data {summary['protected_loss']:.4f}, "
        f"on the clean data {summary['clean_loss']:.4f}",
        "trained from scratch",
        "hidden size 64",
        f"hf_unlearnable {hf_unlearnable.__version__}",
        f"| Seed | {FAST_CONFIG.seed} |",
        "`image`: the protected image, a lossless PNG at 32x32 px",
        "`caption`: one caption per image",
        "Captions start with trigger words",
        "JPEG",
        "2407.16307",
    ):
        assert expected in text, expected
    recorded = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    assert recorded.keys() == FAST_CONFIG.to_dict().keys()  # the whole MEMConfig (JSON has lists for tuples)
    assert MEMConfig.from_dict(recorded) == FAST_CONFIG


def test_card_details_must_be_minimal_or_full(fitted):
    transform, protected = fitted
    with pytest.raises(ValueError, match="card_details='verbose'"):
        dataset_card(protected, transform, card_details="verbose")


def test_license_is_inherited_or_left_out(fitted):
    transform, protected = fitted
    assert DatasetCard(str(dataset_card(with_license(protected, "mit"), transform))).data.license == "mit"
    assert dataset_card(with_license(protected, "mit"), transform, license="cc0-1.0").data.license == "cc0-1.0"
    unknown = DatasetCard(str(dataset_card(with_license(protected, None), transform))).data.to_dict()
    assert "license" not in unknown and "source_datasets" not in unknown


def test_em_card_for_an_unfitted_transform_with_a_named_surrogate(clip, fitted, monkeypatch):
    model, processor = clip
    _, protected = fitted
    transform = ProtectTransform(model, processor, MEMConfig(trigger_length=0, shuffle_captions=False), progress=False)
    monkeypatch.setattr(transform.surrogate.model.config, "_name_or_path", "openai/clip-vit-base-patch32")
    card = dataset_card(protected, transform)
    assert "em" in card.data.tags
    assert (
        "error-minimizing noise (EM" in card.text
        and "Unlearnable Examples: Making Personal Data Unexploitable" in card.text
    )
    assert "unchanged (EM adds no words)" in card.text and "Captions are not plain descriptions" not in card.text
    assert "clip-vit" not in card.text and "Rounds run" not in card.text
    full = dataset_card(protected, transform, card_details="full")
    assert "Captions start with trigger words" not in full.text and "| Text trigger | none (EM) |" in full.text
    assert "| Rounds run | 0 (the transform was not fitted here" in full.text
    assert "`openai/clip-vit-base-patch32`, further trained" in full.text


def test_layered_card_names_the_method_and_nothing_that_undoes_either_layer(clip, fitted):
    model, processor = clip
    _, protected = fitted
    layered = ProtectTransform(
        model, processor, FAST_CONFIG.replace(method="layered", eot_transforms=("jpeg",)), progress=False
    )
    card = dataset_card(protected, layered, source_dataset="me/photos")
    assert "layered" in card.data.tags and "mem" not in card.data.tags
    assert "layered protection" in card.text and "Unlearnable Examples: Making Personal Data Unexploitable" in card.text
    # what the layered card adds to the MEM card is the method's name and its papers: nothing on what
    # each layer is made to survive (JPEG, EOT), nor where the words are
    mem_card = dataset_card(
        protected, ProtectTransform(model, processor, FAST_CONFIG, progress=False), source_dataset="me/photos"
    )
    added = set(re.findall(r"[a-z]+", card.text.lower())) - set(re.findall(r"[a-z]+", mem_card.text.lower()))
    em_citation = set(re.findall(r"[a-z]+", EM_CITATION.lower()))
    assert added - em_citation <= {"layered", "s", "built", "error", "minimizing", "noise", "em", "iclr"}, (
        added - em_citation
    )
    assert card.text.lower().count("jpeg") == mem_card.text.lower().count("jpeg")
    # the minimal card depends on the method alone: other layered settings give the identical card
    other = ProtectTransform(
        model, processor, ODD_CONFIG.replace(method="layered", eot_transforms=("blur",)), progress=False
    )
    assert str(dataset_card(protected, other, source_dataset="me/photos")) == str(card)
    full = dataset_card(protected, layered, card_details="full")
    assert "| Method | Layered (layered): error-minimizing noise" in full.text and "EOT: jpeg" in full.text
    assert "rounds of the trigger layer" in full.text


def test_a_local_surrogate_path_is_not_published(fitted, monkeypatch, tmp_path):
    transform, protected = fitted
    monkeypatch.setattr(transform.surrogate.model.config, "_name_or_path", str(tmp_path / "private" / "my-clip"))
    text = dataset_card(protected, transform, card_details="full").text
    assert "a local checkpoint (my-clip)" in text and str(tmp_path) not in text
    assert "my-clip" not in dataset_card(protected, transform).text


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


# ------------------------------------------------------------------------------------ push_protected
@pytest.fixture
def hub_recorder(monkeypatch):
    """Replace every Hub call push_protected makes by default with a recorder."""
    calls: dict[str, list] = {"dataset": [], "load": [], "card": []}

    def fake_dataset_push(self, repo_id, **kwargs):
        calls["dataset"].append(dict(repo_id=repo_id, rows=len(self), **kwargs))
        resolved = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub adds the user's namespace
        return CommitInfo(
            f"https://huggingface.co/datasets/{resolved}/commit/abc123", kwargs.get("commit_message"), "", "abc123"
        )

    def fake_load(repo_id_or_path, repo_type=None, token=None, ignore_metadata_errors=False):
        calls["load"].append(dict(repo_id=repo_id_or_path, repo_type=repo_type, token=token))
        return DatasetCard(LOADER_README)

    def fake_card_push(self, repo_id, **kwargs):
        calls["card"].append(dict(repo_id=repo_id, text=str(self), **kwargs))

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_dataset_push)
    monkeypatch.setattr(DatasetCard, "load", fake_load)
    monkeypatch.setattr(DatasetCard, "push_to_hub", fake_card_push)
    return calls


def test_push_protected_pushes_data_then_card_and_never_shows_the_token(fitted, hub_recorder, caplog, capsys):
    transform, protected = fitted
    caplog.set_level(logging.DEBUG)
    url = push_protected(
        protected,
        "me/photos-protected",
        transform,
        private=True,
        token=TOKEN,
        source_dataset="me/photos",
        license="cc-by-4.0",
        commit_message="protect v1",
    )
    assert url == "https://huggingface.co/datasets/me/photos-protected"
    [pushed] = hub_recorder["dataset"]
    assert (pushed["repo_id"], pushed["rows"], pushed["private"], pushed["token"]) == (
        "me/photos-protected",
        48,
        True,
        TOKEN,
    )
    assert pushed["commit_message"] == "protect v1"
    assert hub_recorder["load"] == [dict(repo_id="me/photos-protected", repo_type="dataset", token=TOKEN)]
    [card] = hub_recorder["card"]
    assert (card["repo_id"], card["repo_type"], card["token"]) == ("me/photos-protected", "dataset", TOKEN)
    assert card["commit_message"].startswith("protect v1")
    uploaded = DatasetCard(card["text"])
    data = uploaded.data.to_dict()
    assert data["configs"][0]["data_files"][0]["path"] == "data/train-*"  # load_dataset metadata kept
    assert data["dataset_info"]["splits"][0]["num_examples"] == 48
    assert data["license"] == "cc-by-4.0" and REQUIRED_TAGS <= set(data["tags"])
    assert "**protected copy**" in uploaded.text and "## How it was protected" not in uploaded.text  # the default card
    assert "records every protection setting" not in caplog.text
    captured = capsys.readouterr()
    assert "me/photos-protected" in caplog.text  # something was logged, and it holds no secret
    for text in (caplog.text, captured.out, captured.err, card["text"]):
        assert TOKEN not in text


def test_push_protected_full_card_is_opt_in_and_warned(fitted, hub_recorder, caplog):
    transform, protected = fitted
    caplog.set_level(logging.WARNING)
    push_protected(protected, "me/photos-protected", transform, token=TOKEN, card_details="full")
    [card] = hub_recorder["card"]
    assert "## How it was protected" in card["text"] and '"trigger_length": 3' in card["text"]
    assert "records every protection setting (card_details='full')" in caplog.text


def test_bad_card_details_fail_before_any_upload(fitted, hub_recorder):
    transform, protected = fitted
    with pytest.raises(ValueError, match="card_details"):
        push_protected(protected, "me/photos-protected", transform, card_details="everything")
    assert hub_recorder == {"dataset": [], "load": [], "card": []}


@pytest.mark.parametrize(
    "repo_id", ["", "datasets/me/photos", "me/photos/extra", "me/bad name", "me/a--b", "me/x.git", None, 42]
)
def test_bad_repo_ids_fail_before_any_upload(fitted, hub_recorder, repo_id):
    transform, protected = fitted
    with pytest.raises(ValueError, match="repo_id"):
        push_protected(protected, repo_id, transform, token=TOKEN)
    assert hub_recorder == {"dataset": [], "load": [], "card": []}


class FakeApi:
    """An HfApi stand-in: serves the README datasets wrote, records uploads."""

    def __init__(self, folder, readme: str | None):
        self.folder, self.readme, self.uploads = folder, readme, []

    def hf_hub_download(self, repo_id, filename, repo_type=None, token=None):
        if self.readme is None:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        path = self.folder / filename
        path.write_text(self.readme, encoding="utf-8")
        return str(path)

    def upload_file(self, **kwargs):
        self.uploads.append(kwargs)


def test_an_injected_api_reads_and_uploads_the_card(fitted, hub_recorder, tmp_path, caplog):
    transform, protected = fitted
    api = FakeApi(tmp_path, LOADER_README)
    url = push_protected(protected, "photos-protected", transform, token=TOKEN, api=api)
    assert url == "https://huggingface.co/datasets/me/photos-protected"  # the namespace the Hub resolved
    assert (
        hub_recorder["dataset"][0]["repo_id"] == "photos-protected" and hub_recorder["dataset"][0]["private"] is False
    )
    assert hub_recorder["card"] == [] and hub_recorder["load"] == []
    [upload] = api.uploads
    assert (upload["repo_id"], upload["repo_type"], upload["path_in_repo"], upload["token"]) == (
        "me/photos-protected",
        "dataset",
        "README.md",
        TOKEN,
    )
    assert "configs" in DatasetCard(upload["path_or_fileobj"].decode()).data.to_dict()
    # no README to merge: the card still goes up, with a warning that names the repo, not the token
    caplog.set_level(logging.WARNING)
    missing = FakeApi(tmp_path, None)
    push_protected(protected, "me/photos-protected", transform, token=TOKEN, api=missing)
    assert "configs" not in DatasetCard(missing.uploads[0]["path_or_fileobj"].decode()).data.to_dict()
    assert "Could not read back the README of me/photos-protected" in caplog.text and TOKEN not in caplog.text


def test_push_protected_refuses_the_clean_data_set_before_any_network_call(fitted, dataset, hub_recorder):
    transform, _ = fitted
    with pytest.raises(
        ValueError,
        match=r"Refusing to publish: 48 of 48 rows of the data set .* are not this "
        r"transform's protected output.*a clean copy is never uploaded",
    ):
        push_protected(dataset, "me/photos-protected", transform, token=TOKEN)
    assert hub_recorder == {"dataset": [], "load": [], "card": []}


def test_push_protected_refuses_a_copy_with_some_rows_undone(fitted, hub_recorder):
    transform, protected = fitted
    rows = protected.to_list()
    rows[3]["caption"] = rows[3]["caption"].split(" ", 3)[3]  # its trigger deleted
    rows[7]["image"] = rows[8]["image"]  # another row's picture
    rows[7]["caption"] = rows[8]["caption"]
    raw = datasets.Dataset.from_list(rows[:7] + rows[9:], features=protected.features)  # row 7 is fine: row 8's pair
    assert transform.unprotected_rows(raw) == [3]
    edited = datasets.DatasetDict(train=raw, test=protected.select(range(4)))
    with pytest.raises(ValueError, match=r"1 of 46 rows of split 'train' \(first: \[3\]\)"):
        push_protected(edited, "me/photos-protected", transform, token=TOKEN)
    assert hub_recorder["dataset"] == []


def test_push_protected_accepts_rows_protected_online_and_by_a_reloaded_protector(fitted, hub_recorder, tmp_path):
    transform, protected = fitted
    online = transform.apply(synthetic_captions(6, image_size=32, seed=321))  # rows it was not fitted on
    assert transform.unprotected_rows(online) == []
    push_protected(online, "me/new-photos-protected", transform, token=TOKEN)
    assert hub_recorder["dataset"][0]["rows"] == 6
    transform.save_pretrained(tmp_path / "saved")
    loaded = ProtectTransform.from_pretrained(tmp_path / "saved", progress=False)
    assert loaded.unprotected_rows(protected) == []  # the published digests travel with it, not the noise
    assert loaded.unprotected_rows(online) == list(range(6))  # rows another process protected online are unknown
