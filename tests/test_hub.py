"""hub.py: the dataset card and push_protected, fully offline (uploads are recorded, never sent)."""

from __future__ import annotations

import copy
import logging

import datasets
import pytest
from huggingface_hub import CommitInfo, DatasetCard
from huggingface_hub.errors import EntryNotFoundError

import hf_unlearnable
from hf_unlearnable import MEMConfig, ProtectTransform
from hf_unlearnable.hub import dataset_card, push_protected, size_category

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


def test_card_body_says_how_it_was_made(fitted):
    transform, protected = fitted
    text = DatasetCard(str(dataset_card(protected, transform, pretty_name="My photos"))).text
    summary = transform.summary()
    for expected in (
        "# My photos",
        "Multi-step Error Minimization (MEM)",
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
        '"hotflip_candidates": 8',  # the full MEMConfig as JSON
        "Liu, Xinwei and Jia, Xiaojun and Xun, Yuan and Liang, Siyuan and Cao, Xiaochun",
        "2407.16307",
        "ACM MM",
        "JPEG",
        "Keep the originals private",
        "not encryption",
        "CLIP-style contrastive",
        "Captions start with trigger words",
        "No licence was given",
    ):
        assert expected in text, expected


def test_license_is_inherited_or_left_out(fitted):
    transform, protected = fitted
    assert DatasetCard(str(dataset_card(with_license(protected, "mit"), transform))).data.license == "mit"
    assert dataset_card(with_license(protected, "mit"), transform, license="cc0-1.0").data.license == "cc0-1.0"
    unknown = DatasetCard(str(dataset_card(with_license(protected, None), transform))).data.to_dict()
    assert "license" not in unknown and "source_datasets" not in unknown


def test_em_card_for_an_unfitted_transform_with_a_named_surrogate(clip, fitted, monkeypatch):
    model, processor = clip
    _, protected = fitted
    transform = ProtectTransform(model, processor, MEMConfig(trigger_length=0), progress=False)
    monkeypatch.setattr(transform.surrogate.model.config, "_name_or_path", "openai/clip-vit-base-patch32")
    card = dataset_card(protected, transform)
    assert "em" in card.data.tags
    assert "Error-minimizing noise (EM" in card.text and "Unlearnable Examples: Making Personal Data Unexploitable" in card.text
    assert "Captions start with trigger words" not in card.text and "captions are unchanged" in card.text
    assert "| Rounds run | 0 (the transform was not fitted here" in card.text
    assert "`openai/clip-vit-base-patch32`, further trained" in card.text


def test_a_local_surrogate_path_is_not_published(fitted, monkeypatch, tmp_path):
    transform, protected = fitted
    monkeypatch.setattr(transform.surrogate.model.config, "_name_or_path", str(tmp_path / "private" / "my-clip"))
    text = dataset_card(protected, transform).text
    assert "a local checkpoint (my-clip)" in text and str(tmp_path) not in text


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"
    ]


# ------------------------------------------------------------------------------------ push_protected
@pytest.fixture
def hub_recorder(monkeypatch):
    """Replace every Hub call push_protected makes by default with a recorder."""
    calls: dict[str, list] = {"dataset": [], "load": [], "card": []}

    def fake_dataset_push(self, repo_id, **kwargs):
        calls["dataset"].append(dict(repo_id=repo_id, rows=len(self), **kwargs))
        resolved = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub adds the user's namespace
        return CommitInfo(f"https://huggingface.co/datasets/{resolved}/commit/abc123", kwargs.get("commit_message"), "", "abc123")

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
    url = push_protected(protected, "me/photos-protected", transform, private=True, token=TOKEN,
                         source_dataset="me/photos", license="cc-by-4.0", commit_message="protect v1")
    assert url == "https://huggingface.co/datasets/me/photos-protected"
    [pushed] = hub_recorder["dataset"]
    assert (pushed["repo_id"], pushed["rows"], pushed["private"], pushed["token"]) == ("me/photos-protected", 48, True, TOKEN)
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
    assert "## How it was protected" in uploaded.text
    captured = capsys.readouterr()
    assert "me/photos-protected" in caplog.text  # something was logged, and it holds no secret
    for text in (caplog.text, captured.out, captured.err, card["text"]):
        assert TOKEN not in text


@pytest.mark.parametrize("repo_id", ["", "datasets/me/photos", "me/photos/extra", "me/bad name", "me/a--b", "me/x.git", None, 42])
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
    assert hub_recorder["dataset"][0]["repo_id"] == "photos-protected" and hub_recorder["dataset"][0]["private"] is False
    assert hub_recorder["card"] == [] and hub_recorder["load"] == []
    [upload] = api.uploads
    assert (upload["repo_id"], upload["repo_type"], upload["path_in_repo"], upload["token"]) == (
        "me/photos-protected", "dataset", "README.md", TOKEN
    )
    assert "configs" in DatasetCard(upload["path_or_fileobj"].decode()).data.to_dict()
    # no README to merge: the card still goes up, with a warning that names the repo, not the token
    caplog.set_level(logging.WARNING)
    missing = FakeApi(tmp_path, None)
    push_protected(protected, "me/photos-protected", transform, token=TOKEN, api=missing)
    assert "configs" not in DatasetCard(missing.uploads[0]["path_or_fileobj"].decode()).data.to_dict()
    assert "Could not read back the README of me/photos-protected" in caplog.text and TOKEN not in caplog.text
