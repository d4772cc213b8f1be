"""Publish a protected data set on the Hugging Face Hub, with a dataset card that does not undo it.

    protected = transform.protect(ds)
    url = push_protected(protected, "me/my-photos-protected", transform, source_dataset="me/my-photos")

The card itself is `hub.card.dataset_card`: by default it records nothing that helps undo the
protection; ``card_details="full"`` adds the full record for a private or internal copy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..transform import ProtectTransform
from .card import (
    CARD_DETAILS,
    EM_CITATION,
    LIBRARY_CITATION,
    LOADER_KEYS,
    MEM_CITATION,
    dataset_card,
    rows_and_info,
    size_category,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_DETAILS",
    "EM_CITATION",
    "LIBRARY_CITATION",
    "MEM_CITATION",
    "dataset_card",
    "push_protected",
    "size_category",
]


def _check_repo_id(repo_id: Any) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string like 'username/dataset-name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"repo_id={repo_id!r} is not a valid Hub repository id ({error}). Use 'username/dataset-name' "
            "(letters, digits, '-', '_', '.'; no 'datasets/' prefix)."
        ) from None


def _read_remote_card(repo_id: str, token: str | None, api: Any) -> DatasetCard | None:
    """The README that `Dataset.push_to_hub` just wrote (its `configs`/`dataset_info`), or None."""
    try:
        if api is not None:
            path = api.hf_hub_download(repo_id=repo_id, filename="README.md", repo_type="dataset", token=token)
            return DatasetCard(Path(path).read_text(encoding="utf-8"))
        return DatasetCard.load(repo_id, repo_type="dataset", token=token)
    except (OSError, ValueError, EntryNotFoundError) as error:
        logger.warning(
            "Could not read back the README of %s (%s); the card is uploaded without the loader metadata "
            "(configs, dataset_info) that datasets wrote.",
            repo_id,
            type(error).__name__,
        )
        return None


def _refuse_unprotected(ds: datasets.Dataset | datasets.DatasetDict, transform: ProtectTransform) -> None:
    """Before any network call: every row must be ``transform``'s protected output (`unprotected_rows`)."""
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for name, split in splits:
        failed = transform.unprotected_rows(split)
        if failed:
            where = f"split {name!r}" if name is not None else "the data set"
            raise ValueError(
                f"Refusing to publish: {len(failed)} of {len(split)} rows of {where} (first: {failed[:5]}) are not this "
                "transform's protected output: their image is not one it wrote, or a caption lacks that row's trigger "
                "words. Publish the data set that transform.protect(ds) (or ds.map(transform)) returned, unchanged, "
                "with the same transform; a clean copy is never uploaded."
            )


def push_protected(
    ds: datasets.Dataset | datasets.DatasetDict,
    repo_id: str,
    transform: ProtectTransform,
    *,
    private: bool = False,
    token: str | None = None,
    source_dataset: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    commit_message: str | None = None,
    card_details: str = "minimal",
    api: Any = None,
) -> str:
    """Push a protected data set with `ds.push_to_hub`, then its dataset card; returns the repo URL.

    The card keeps the ``configs`` / ``dataset_info`` metadata that `push_to_hub` wrote into
    README.md, so `load_dataset(repo_id)` still finds the splits and features. ``api`` (an
    `HfApi`-like object) reads and uploads the card; by default `DatasetCard.load` / `push_to_hub`
    do. The token is passed through and never logged. ``card_details`` as in `dataset_card`: the
    default card publishes no setting that helps undo the protection.
    """
    _check_repo_id(repo_id)
    _refuse_unprotected(ds, transform)
    card = dataset_card(
        ds,
        transform,
        source_dataset=source_dataset,
        license=license,
        pretty_name=pretty_name,
        card_details=card_details,
    )
    if card_details == "full":
        logger.warning(
            "The dataset card of %s records every protection setting (card_details='full'); they help "
            "anyone who wants to undo the protection.",
            repo_id,
        )
    rows, _ = rows_and_info(ds)
    message = commit_message or "Upload data set protected with hf_unlearnable (MEM)"
    logger.info("Pushing %d protected rows to the Hub data set %s (private=%s)", rows, repo_id, private)
    commit = ds.push_to_hub(repo_id, private=private, token=token, commit_message=message)
    repo_url = getattr(commit, "repo_url", None)
    resolved = getattr(repo_url, "repo_id", None) or repo_id  # push_to_hub adds the user's namespace
    remote = _read_remote_card(resolved, token, api)
    if remote is not None:
        for key in LOADER_KEYS:
            value = remote.data.get(key)
            if value is not None:
                card.data[key] = value  # str(card) re-renders the YAML from card.data
    card_message = f"{message}: dataset card"
    logger.info("Uploading the dataset card to %s", resolved)
    if api is not None:
        api.upload_file(
            path_or_fileobj=str(card).encode("utf-8"),
            path_in_repo="README.md",
            repo_id=resolved,
            repo_type="dataset",
            token=token,
            commit_message=card_message,
        )
    else:
        card.push_to_hub(resolved, repo_type="dataset", token=token, commit_message=card_message)
    return str(getattr(repo_url, "url", None) or repo_url or f"https://huggingface.co/datasets/{resolved}")
