"""README.md: every ```python block, pasted in order into one session, runs as written.

The blocks run in one namespace, in a temporary working directory, with these stand-ins and
nothing else changed:

- `datasets.load_dataset` returns the same small synthetic data set (32 px, two captions per
  image, like Flickr30K's lists) for any id and split;
- the Hub id "openai/clip-vit-base-patch32" is replaced in the text by a local folder holding a
  tiny CLIP and its processor;
- `hf_unlearnable.MEMConfig` (a name the snippets import) is a function that builds the config a
  snippet asks for with `CHEAP_SCHEDULE` over it (one pixel round, one trigger round, two steps of
  each kind); epsilon, trigger length and the other fields stay as written;
- "epochs=10" is replaced in the text by "epochs=1";
- the Hub uploads of `push_protected` are recorded instead of sent.

A name a block uses but no block defines raises NameError, and the test fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest
from huggingface_hub import CommitInfo, DatasetCard

import hf_unlearnable
from hf_unlearnable import MEMConfig
from hf_unlearnable.testing import synthetic_captions, tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MODEL = '"openai/clip-vit-base-patch32"'
ROWS = 20  # enough for a 90% / 10% cut and two halves of 10 rows
CHEAP_SCHEDULE = dict(
    max_rounds=1,
    trigger_rounds=1,
    surrogate_steps=2,
    pgd_steps=2,
    hotflip_candidates=4,
    batch_size=8,
    online_rounds=1,
)


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of ``markdown``, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def substitute(blocks: list[str], old: str, new: str) -> list[str]:
    """Replace ``old`` by ``new`` in every block; fail if no block holds ``old`` (the stand-in would be stale)."""
    assert any(old in block for block in blocks), (
        f"no README snippet contains {old!r} any more: update tests/test_readme.py"
    )
    return [block.replace(old, new) for block in blocks]


@pytest.fixture
def hub_uploads(monkeypatch):
    """Record what push_protected would send to the Hub (as tests/test_hub.py's hub_recorder does)."""
    calls: dict[str, list] = {"dataset": [], "card": []}

    def fake_dataset_push(self, repo_id, **kwargs):
        calls["dataset"].append(dict(repo_id=repo_id, rows=len(self), **kwargs))
        return CommitInfo(
            f"https://huggingface.co/datasets/{repo_id}/commit/abc123", kwargs.get("commit_message"), "", "abc123"
        )

    def fake_card_push(self, repo_id, **kwargs):
        calls["card"].append(dict(repo_id=repo_id, **kwargs))

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_dataset_push)
    monkeypatch.setattr(DatasetCard, "load", lambda *args, **kwargs: DatasetCard("---\nlicense: other\n---\n"))
    monkeypatch.setattr(DatasetCard, "push_to_hub", fake_card_push)
    return calls


def test_python_blocks_of_the_readme_run_in_order(tmp_path, monkeypatch, hub_uploads):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3, "expected the Quick start and Check, measure, publish snippets"

    model, processor = tiny_clip(image_size=32)
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    stand_in = synthetic_captions(ROWS, image_size=32, captions_per_image=2)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: stand_in)
    monkeypatch.setattr(hf_unlearnable, "MEMConfig", lambda **fields: MEMConfig(**{**fields, **CHEAP_SCHEDULE}))

    blocks = substitute(blocks, HUB_MODEL, repr(str(folder)))
    blocks = substitute(blocks, "epochs=10", "epochs=1")

    monkeypatch.chdir(tmp_path)  # the snippets write folders such as "my-protector"
    namespace: dict = {"__name__": "__main__"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md, python block {number}", "exec"), namespace)

    assert [call["repo_id"] for call in hub_uploads["dataset"]] == ["me/my-data-protected"]
    assert hub_uploads["dataset"][0]["rows"] == ROWS and hub_uploads["dataset"][0]["private"] is True
    assert [call["repo_id"] for call in hub_uploads["card"]] == ["me/my-data-protected"]
