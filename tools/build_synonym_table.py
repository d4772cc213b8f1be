"""Build ``hf_unlearnable/defenses/data/synonyms.json``: the offline synonym table of EDA synonym
replacement and insertion (``hf_unlearnable.defenses.text``).

Source: Princeton WordNet 3.0 (the database files of Debian's ``wordnet-base`` package,
``/usr/share/wordnet``; licence in ``hf_unlearnable/defenses/data/WORDNET_LICENSE``). For each
word of a fixed vocabulary (the words of the library's synthetic captions and its tokenizer's
basic English word list, minus EDA's stop words) the table lists the single-word lemmas of every
synset the word belongs to, in WordNet's sense order, as EDA's ``get_synonyms`` does with NLTK's
WordNet (Wei & Zou 2019), except that multi-word lemmas are left out. Nothing of it is needed at
run time except the JSON it writes.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wnbase
    python tools/build_synonym_table.py /tmp/wnbase/usr/share/wordnet
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from hf_unlearnable.defenses.text import EDA_STOP_WORDS
from hf_unlearnable.testing import CAPTION_WORDS, EXTRA_WORDS

POS = ("noun", "verb", "adj", "adv")
WORD = re.compile(r"^[a-z]+$")
MAX_SYNONYMS = 24


def synsets(root: Path, pos: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(lemma -> synset offsets in sense order, offset -> lemmas) for one part of speech."""
    index: dict[str, list[str]] = {}
    for line in (root / f"index.{pos}").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):
            continue  # the licence header
        fields = line.split()
        lemma, pointer_count = fields[0], int(fields[3])
        sense_count = int(fields[2])
        offsets = fields[4 + pointer_count + 2 :]
        index[lemma] = offsets[:sense_count]
    data: dict[str, list[str]] = {}
    for line in (root / f"data.{pos}").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        count = int(fields[3], 16)
        data[fields[0]] = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(count)]
    return index, data


def main(root: str) -> None:
    root_path = Path(root)
    tables = [synsets(root_path, pos) for pos in POS]
    vocabulary = sorted({w for w in (*CAPTION_WORDS, *EXTRA_WORDS) if WORD.match(w)} - set(EDA_STOP_WORDS))
    table: dict[str, list[str]] = {}
    for word in vocabulary:
        found: list[str] = []
        for index, data in tables:
            for offset in index.get(word, []):
                for lemma in data[offset]:
                    if lemma != word and WORD.match(lemma) and lemma not in found:
                        found.append(lemma)
        if found:
            table[word] = found[:MAX_SYNONYMS]
    out = Path(__file__).resolve().parents[1] / "hf_unlearnable" / "defenses" / "data" / "synonyms.json"
    lines = ",\n".join(f"{json.dumps(word)}: {json.dumps(table[word])}" for word in sorted(table))
    out.write_text("{\n" + lines + "\n}\n", encoding="utf-8")  # one word per line
    print(f"{len(table)} words, {sum(map(len, table.values()))} synonyms -> {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")
