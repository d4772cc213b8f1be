"""Bad input the audit refuses before training anything: a protected copy that does not match the
clean copy row for row, and a test split that shares rows with the training split."""

from __future__ import annotations

import math
from typing import Any

import datasets
import numpy as np

from ..checks import check_dataset
from ..images import load_image, prepare_image, to_rgb, undecoded
from ..rows import row_digest

_READ_BATCH = 256


def caption_list(value: Any) -> list[str]:
    """A row's captions as a list of strings (one caption, or the list a row holds)."""
    return [str(text) for text in value] if isinstance(value, (list, tuple)) else [str(value)]


def _inserts_only(clean: str, protected: str) -> bool:
    """True when ``protected`` holds the words of ``clean`` in order (the protection only inserts words)."""
    words = iter(protected.split())
    return all(word in words for word in clean.split())


def check_copies_match(
    clean: datasets.Dataset,
    protected: datasets.Dataset,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    epsilon: float = 8 / 255,
    image_rows: int = 64,
    name: str = "protected_train",
) -> None:
    """Refuse a protected copy that is not the clean copy row for row (ValueError naming the row).

    Checks every row's other columns and captions, and a sample of images: same row count and
    column names; every column but the image and caption columns equal; each protected caption
    holds its clean caption's words in order (a trigger may be inserted anywhere, nothing removed);
    ``image_rows`` evenly spaced images within ``epsilon`` of their clean image at the protected
    resolution. A shuffled, filtered or different copy fails on nearly every row, so a sample of
    images suffices; a full per-pixel budget check is ``hf-unlearnable verify``.
    """
    check_dataset(clean, image_column, caption_column, name="clean_train")
    check_dataset(protected, image_column, caption_column, name=name)
    fix = "Pass the clean data set the protected copy was made from, in the same row order."
    if len(clean) != len(protected):
        raise ValueError(
            f"{name} has {len(protected)} rows and clean_train {len(clean)}; a protected copy keeps every row. {fix}"
        )
    if set(clean.column_names) != set(protected.column_names):
        raise ValueError(f"{name} has columns {protected.column_names}, clean_train {clean.column_names}. {fix}")
    from ..report.verify import nan_equal  # NaN-aware equality, shared with `verify_protected`

    others = [c for c in clean.column_names if c not in (image_column, caption_column)]
    plain_clean = clean.select_columns([*others, caption_column]).with_format(None)
    plain_protected = protected.select_columns([*others, caption_column]).with_format(None)
    for start in range(0, len(clean), _READ_BATCH):
        before, after = plain_clean[start : start + _READ_BATCH], plain_protected[start : start + _READ_BATCH]
        for offset in range(len(before[caption_column])):
            row = start + offset
            for column in others:
                if not nan_equal(before[column][offset], after[column][offset]):
                    raise ValueError(
                        f"{name} row {row} does not match clean_train row {row}: column {column!r} is "
                        f"{after[column][offset]!r}, not {before[column][offset]!r}. {fix}"
                    )
            clean_texts, protected_texts = (
                caption_list(before[caption_column][offset]),
                caption_list(after[caption_column][offset]),
            )
            if len(clean_texts) != len(protected_texts) or not all(map(_inserts_only, clean_texts, protected_texts)):
                raise ValueError(
                    f"{name} row {row} does not match clean_train row {row}: its caption {after[caption_column][offset]!r} "
                    f"does not hold the words of {before[caption_column][offset]!r} in order. {fix}"
                )
    levels = math.floor(epsilon * 255 + 1e-6)
    rows = np.unique(np.linspace(0, len(clean) - 1, min(image_rows, len(clean))).round().astype(int)).tolist()
    clean_images = undecoded(clean.select_columns([image_column]), image_column).select(rows)[image_column]
    protected_images = undecoded(protected.select_columns([image_column]), image_column).select(rows)[image_column]
    for row, clean_value, protected_value in zip(rows, clean_images, protected_images):
        image = to_rgb(load_image(protected_value, row))
        size = min(image.size)
        mine = (
            np.asarray(image, dtype=np.int16)
            if image.size[0] == image.size[1]
            else prepare_image(protected_value, size, row).astype(np.int16)
        )
        difference = int(np.abs(mine - prepare_image(clean_value, size, row).astype(np.int16)).max())
        if difference > levels:
            raise ValueError(
                f"{name} row {row} does not match clean_train row {row}: its image differs from the clean one by "
                f"{difference}/255 levels, more than epsilon = {levels}/255. {fix} (If the copy was protected "
                "with a larger budget, pass epsilon=.)"
            )


def row_digests(ds: datasets.Dataset, image_size: int, image_column: str, caption_column: str) -> list[int]:
    """Each row's digest (image at ``image_size`` and captions), in row order, as `check_no_overlap` compares them."""
    source = undecoded(ds.select_columns([image_column, caption_column]).with_format(None), image_column)
    digests = []
    for start in range(0, len(source), _READ_BATCH):
        chunk = source[start : start + _READ_BATCH]
        for offset, (image, caption) in enumerate(zip(chunk[image_column], chunk[caption_column])):
            digests.append(row_digest(prepare_image(image, image_size, start + offset), caption_list(caption)))
    return digests


def check_no_overlap(
    train: datasets.Dataset,
    test: datasets.Dataset,
    *,
    image_size: int,
    image_column: str = "image",
    caption_column: str = "caption",
) -> None:
    """Refuse a test split that shares rows with the training split (same image at ``image_size``
    and same captions: the row digest `ProtectTransform` keys its state on). A victim scored on
    rows it trained on measures memorisation, not what it learned."""
    digests = [row_digests(ds, image_size, image_column, caption_column) for ds in (train, test)]
    refuse_shared_rows(*digests)


def refuse_shared_rows(train_digests: list[int], test_digests: list[int]) -> None:
    """Raise a ValueError naming the test rows whose digest is also a training row's."""
    seen = {digest: row for row, digest in enumerate(train_digests)}
    shared = [(row, seen[d]) for row, d in enumerate(test_digests) if d in seen]
    if shared:
        pairs = ", ".join(f"test row {t} = train row {r}" for t, r in shared[:5])
        raise ValueError(
            f"test shares {len(shared)} of its {len(test_digests)} rows with the training split ({pairs}"
            f"{', ...' if len(shared) > 5 else ''}). Scores on training rows measure memorisation; remove them "
            "from test (e.g. test.filter) or split the data so no row is in both."
        )
