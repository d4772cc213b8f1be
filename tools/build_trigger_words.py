"""Build ``hf_unlearnable/data/trigger_words.txt``: the words a ``trigger_words="dictionary"``
trigger may use (``hf_unlearnable.captions.dictionary_words``).

The list is built by inclusion: a word gets in because WordNet files one of its senses under a
neutral, concrete domain, and it stays out if one of its main senses touches a sensitive one.
Nothing of this script is needed at run time: the library reads only the text file it writes.

Sources (none is downloaded at run time; each is fetched once, by hand, to run this script):

- Princeton WordNet 3.0: the database files of Debian's ``wordnet-base`` package
  (``apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wnbase``); licence in
  ``hf_unlearnable/data/WORDNET_LICENSE`` (permissive: use, copy, modify and distribute with the
  copyright notice).
- The candidate word forms: ``wordfreq``'s 50,000 most frequent English words, kept if they are
  in ``pyspellchecker``'s English dictionary too (``pip install wordfreq pyspellchecker``): an
  adult reader's vocabulary without abbreviations and hyphenation debris ("tal", "ing"). The list
  written keeps no frequencies, only the words.
- First names: the 1990 US census lists of male and female first names (public domain), as shipped
  in the ``names`` package (``pip download --no-deps names==0.3.0``, then unpack the sdist).
- Profanity: ``better-profanity``'s word list (``pip install better-profanity``), on top of the
  library's own ``hf_unlearnable/data/trigger_blocklist.txt``.

    python tools/build_trigger_words.py /tmp/wnbase/usr/share/wordnet /tmp/names-0.3.0/names

The rules, for a candidate word form (lower-case letters only, 3+ letters). Its *lemmas* are the
form itself and the base forms WordNet's morphology gives (exception lists and suffix rules, e.g.
"wolves" -> "wolf", "painted" -> "paint"); a lemma's *main senses* are its first noun sense and its
senses (in any part of speech) with at least `MAIN_SHARE` of its occurrences in WordNet's
sense-tagged corpus, or its first sense in each part of speech if it was never tagged, so rare
senses do not count ("horse" as slang for heroin, "chair" as the electric chair).

1. Inclusion: some lemma has a noun sense in a neutral lexicographer file (`SAFE_NOUN_FILES`:
   artifacts, food, plants, animals, natural objects, shapes, substances, places, natural
   phenomena, times, top-level things, possessions, quantities), or an adjective sense whose
   cluster describes a physical property (`SAFE_ATTRIBUTES`: colour, size, shape, temperature,
   weight, speed, age, texture, ...).
2. Exclusion, if a lemma
   a. has a sense WordNet labels as an ethnic slur, an obscenity or a disparagement (any sense),
      or as slang, a euphemism or a street name (a main sense);
   b. has a main sense under a sensitive WordNet synset (`SENSITIVE_ROOTS`: weapons, war,
      violence, crime, death and burial, drugs, alcohol, tobacco, gambling, religion, peoples,
      sex, underwear, pregnancy, disease, medicine, poison, body waste, prisons, monsters), or an
      adjective main sense describing a sensitive attribute (`SENSITIVE_ATTRIBUTES`: sex, health,
      beauty, body weight, morality, ancestry, ...);
   c. mostly names a kind of person, a body part or a bodily state (lexicographer files
      noun.person, noun.body, noun.state: over half of its tagged occurrences, or of its senses);
   d. has a capitalised adjective sense ("Jewish", "German"), or a capitalised main sense naming a
      people ("Turk", "Jew") or a place or group ("China", "Turkey"); or WordNet knows the form
      only capitalised ("Africa", "Thames", "June");
   e. is a common first name (`FIRST_NAMES`: "rose", "jack", "bill");
3. and the form is left out if it is not in the spelling dictionary, or if it is blocked by the
   blocklist (the library's ``trigger_blocklist.txt`` and better-profanity's list), matched as the
   library matches it at run time (`hf_unlearnable.captions.blocked`: the form and its base forms).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from hf_unlearnable.captions import MIN_WORD_LETTERS, blocked, shipped_blocklist

OUT = Path(__file__).resolve().parents[1] / "hf_unlearnable" / "data" / "trigger_words.txt"
#: Candidate word forms: wordfreq's N most frequent English words (an adult reader's vocabulary).
CANDIDATES = 50_000
#: First names left out: the N most common male and the N most common female names of the census
#: lists (in their order of frequency), about 85% of the people counted. Rarer names that are
#: ordinary words ("sun", "star", "bell") stay.
FIRST_NAMES = 1000
WORD = re.compile(r"^[a-z]+$")

LEXICOGRAPHER_FILES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
PARTS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}

SAFE_NOUN_FILES = frozenset(
    "noun.artifact noun.food noun.plant noun.animal noun.object noun.shape noun.substance "
    "noun.location noun.phenomenon noun.time noun.Tops noun.possession noun.quantity".split()
)
#: Adjective clusters (by the attribute noun WordNet links their head to) that describe what can
#: be seen, touched, heard or measured.
SAFE_ATTRIBUTES = frozenset(
    "color hue value light luminosity size magnitude shape height length width depth thickness "
    "weight volume temperature texture wetness hardness sharpness solidity state_of_matter speed "
    "age freshness staleness fullness cleanness distance direction orientation position taste "
    "taste_property olfactory_property opacity pitch curliness evenness regularity motion "
    "tameness wildness modernity measure numerousness clarity clearness".split()
)
#: Adjective clusters about people's bodies, health, sex, worth or origin.
SENSITIVE_ATTRIBUTES = frozenset(
    "sex sexual_activity virginity animation health beauty attractiveness body_weight morality "
    "evil good virtue purity holiness piety orthodoxy offensiveness nastiness intelligence mind "
    "political_orientation ancestry foreignness complexion maleficence malignity legality "
    "lawfulness normality stature humanness sanity fertility".split()
)
#: Synsets (NLTK-style names: lemma.pos.sense) whose hyponyms, at any depth, are sensitive.
SENSITIVE_ROOTS = (
    # weapons, war, violence, crime
    "weapon.n.01 weaponry.n.01 armament.n.01 ammunition.n.01 explosive.n.01 explosive_device.n.01 "
    "military_vehicle.n.01 warship.n.01 military_action.n.01 war.n.01 attack.n.01 violence.n.01 "
    "crime.n.01 terrorism.n.01 torture.n.02 instrument_of_punishment.n.01 shackle.n.01 noose.n.01 "
    "military.n.01 "
    "kill.v.01 attack.v.01 assail.v.01 injure.v.01 shoot.v.01 shoot.v.02 bomb.v.01 torture.v.02 "
    "execute.v.01 stab.v.01 strangle.v.01 rape.v.01 abuse.v.01 "
    # death and burial
    "death.n.01 death.n.02 death.n.03 killing.n.02 suicide.n.01 instrument_of_execution.n.01 "
    "coffin.n.01 tomb.n.01 cemetery.n.01 funeral.n.01 burial.n.01 corpse.n.01 die.v.01 "
    # drugs, alcohol, tobacco, gambling
    "drug.n.01 drug_of_abuse.n.01 narcotic.n.01 alcohol.n.01 alcohol.n.02 tobacco.n.01 "
    "tobacco.n.02 cigarette.n.01 cigar.n.01 gambling.n.01 "
    # religion
    "religion.n.01 religion.n.02 place_of_worship.n.01 religious_ceremony.n.01 vestment.n.01 "
    "sacred_text.n.01 spiritual_being.n.01 religious_holiday.n.01 "
    # peoples
    "ethnic_group.n.01 race.n.03 tribe.n.01 "
    # sex and underwear
    "sexual_activity.n.01 sex.n.02 sex_organ.n.01 contraceptive.n.01 undergarment.n.01 "
    "copulate.v.01 pornography.n.01 sexual_desire.n.01 pregnancy.n.01 "
    # disease, poison, body waste
    "disease.n.01 illness.n.01 pathogen.n.01 microorganism.n.01 poison.n.01 body_waste.n.01 "
    "waste.n.01 injury.n.01 wound.n.01 medicine.n.02 vaccine.n.01 steroid.n.01 hormone.n.01 "
    "medical_care.n.01 medical_procedure.n.01 medical_building.n.01 wheelchair.n.01 "
    "coca.n.01 cannabis.n.01 opium_poppy.n.01 "
    # prisons, monsters
    "correctional_institution.n.01 monster.n.01 mythical_being.n.01"
).split()
#: WordNet usage labels (the synset's usage domain) that mark a sense as offensive or slang.
SENSITIVE_USAGES = frozenset("ethnic_slur obscenity disparagement".split())
#: Labels of colloquial senses: they count where the sense is an everyday one.
COLLOQUIAL_USAGES = frozenset("slang euphemism street_name".split())
#: A sense with at least this share of its lemma's occurrences in WordNet's sense-tagged corpus
#: is one of the lemma's main senses (besides the first).
MAIN_SHARE = 0.3
#: Lexicographer files of persons, body parts and bodily states (rule 2c).
PERSON_FILES = frozenset({"noun.person", "noun.body", "noun.state"})
#: WordNet's morphological suffix rules (``morphy``): ending -> base ending, per part of speech.
MORPHY_RULES = {
    "n": (
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


class WordNet:
    """The parts of WordNet 3.0's database files this script needs."""

    def __init__(self, root: Path):
        self.synsets: dict[tuple[str, str], dict] = {}
        self.senses: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (lemma, pos) -> synsets in sense order
        self.tagged: dict[tuple[str, str], int] = {}  # (lemma, pos) -> senses attested in the tagged corpus
        self.exceptions: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name, pos in PARTS.items():
            for line in (root / f"data.{name}").read_text(encoding="utf-8").splitlines():
                if line.startswith(" "):
                    continue  # the licence header
                fields = line.split(" | ", 1)[0].split()
                count = int(fields[3], 16)
                words = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]) for i in range(count)]
                at = 4 + 2 * count
                pointers, labels = [], []
                for _ in range(int(fields[at])):
                    symbol, offset, target_pos, source_target = fields[at + 1 : at + 5]
                    pointers.append((symbol, ("a" if target_pos == "s" else target_pos, offset)))
                    if symbol == ";u":  # a usage label, of the whole synset (0) or of one of its words
                        labels.append((int(source_target[:2], 16), (target_pos, offset)))
                    at += 4
                self.synsets[(pos, fields[0])] = {
                    "file": LEXICOGRAPHER_FILES[int(fields[1])],
                    "satellite": fields[2] == "s",
                    "words": words,
                    "pointers": pointers,
                    "labels": labels,
                }
            for line in (root / f"index.{name}").read_text(encoding="utf-8").splitlines():
                if line.startswith(" "):
                    continue
                fields = line.split()
                pointer_count = int(fields[3])
                self.tagged[(fields[0], pos)] = int(fields[5 + pointer_count])
                self.senses[(fields[0], pos)] = [(pos, offset) for offset in fields[6 + pointer_count :]]
            for line in (root / f"{name}.exc").read_text(encoding="utf-8").splitlines():
                inflected, *bases = line.split()
                self.exceptions[(inflected, pos)].extend(bases)
        # how often each sense is tagged in WordNet's sense-tagged corpus (SemCor)
        self.counts: dict[tuple[str, str, int], int] = {}
        for line in (root / "cntlist.rev").read_text(encoding="utf-8").splitlines():
            key, number, count = line.split()
            lemma, rest = key.split("%", 1)
            pos = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}[rest[0]]
            self.counts[(lemma, pos, int(number))] = int(count)

    def sense_counts(self, lemma: str, pos: str) -> list[int]:
        """How often each sense of the lemma is tagged in WordNet's sense-tagged corpus (SemCor)."""
        return [self.counts.get((lemma, pos, rank), 0) for rank in range(1, len(self.senses[(lemma, pos)]) + 1)]

    def synset(self, name: str) -> tuple[str, str]:
        lemma, pos, number = name.rsplit(".", 2)
        return self.senses[(lemma, pos)][int(number) - 1]

    def lemmas(self, form: str) -> set[tuple[str, str]]:
        """(lemma, pos) pairs WordNet's morphology finds for `form` (morphy: itself, exceptions, rules)."""
        found = set()
        for pos, rules in MORPHY_RULES.items():
            bases = {form, *self.exceptions.get((form, pos), [])}
            # rule-made bases of 3+ letters: "gas" is not the plural of "ga"
            bases |= {
                form[: -len(end)] + base
                for end, base in rules
                if form.endswith(end) and len(form) - len(end) + len(base) >= 3
            }
            found |= {(base, pos) for base in bases if (base, pos) in self.senses}
        return found

    def closure(self, key: tuple[str, str]) -> set[tuple[str, str]]:
        """The synset and all its hypernyms (class and instance), transitively."""
        seen, stack = {key}, [key]
        while stack:
            for symbol, target in self.synsets[stack.pop()]["pointers"]:
                if symbol in ("@", "@i") and target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen

    def attributes(self, key: tuple[str, str]) -> set[str]:
        """The attribute nouns of an adjective synset's cluster (a satellite's head's)."""
        synset = self.synsets[key]
        heads = [target for symbol, target in synset["pointers"] if symbol == "&"] if synset["satellite"] else [key]
        return {
            self.synsets[target]["words"][0]
            for head in heads
            for symbol, target in self.synsets[head]["pointers"]
            if symbol == "="
        }


def first_names(folder: Path) -> set[str]:
    """The `FIRST_NAMES` most common male and female first names of the 1990 US census, lower-cased."""
    names = set()
    for name in ("dist.male.first", "dist.female.first"):
        lines = (folder / name).read_text().splitlines()
        names |= {line.split()[0].lower() for line in lines[:FIRST_NAMES] if line.strip()}
    return names


def build(
    wordnet: WordNet, names: set[str], blocklist: frozenset[str], spelling: set[str], candidates: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """The trigger words among `candidates`, and the others by the rule that dropped them."""
    roots = {wordnet.synset(name) for name in SENSITIVE_ROOTS}
    usages = {
        key for key, synset in wordnet.synsets.items() if key[0] == "n" and synset["words"][0] in SENSITIVE_USAGES
    }
    colloquial = {
        key for key, synset in wordnet.synsets.items() if key[0] == "n" and synset["words"][0] in COLLOQUIAL_USAGES
    }
    capitalised: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, synset in wordnet.synsets.items():
        for word in synset["words"]:
            if word != word.lower():
                capitalised[word.lower()].append(key)

    def main_senses(lemma: str, pos: str) -> list[tuple[str, str]]:
        """The senses a reader may take the lemma in: its first noun sense, and, among its senses in
        every part of speech, the most frequent one in WordNet's sense-tagged corpus and those with
        at least `MAIN_SHARE` of its tagged occurrences (the first sense of each part of speech if
        it was never tagged). So "stone" is not vetoed for its verb sense "kill by throwing stones"
        (a noun first), nor "chair" for the electric chair (its fourth noun sense)."""
        senses = wordnet.senses[(lemma, pos)]
        counts = {
            (other, rank): count
            for other in PARTS.values()
            if (lemma, other) in wordnet.senses
            for rank, count in enumerate(wordnet.sense_counts(lemma, other))
        }
        total, top = sum(counts.values()), max(counts.values())
        return [
            key
            for rank, key in enumerate(senses)
            if (rank == 0 and (pos == "n" or not total))
            or (total and (counts[(pos, rank)] == top or counts[(pos, rank)] >= MAIN_SHARE * total))
        ]

    def safe(key: tuple[str, str]) -> bool:
        if key[0] == "n":
            return wordnet.synsets[key]["file"] in SAFE_NOUN_FILES
        return key[0] == "a" and bool(wordnet.attributes(key) & SAFE_ATTRIBUTES)

    def labelled(key: tuple[str, str], lemma: str, labels: set[tuple[str, str]]) -> bool:
        """Whether WordNet gives the sense one of `labels`, for the whole synset or for `lemma`
        ("Black" is not an ethnic slur; "blackamoor", in the same synset, is)."""
        words = [word.lower() for word in wordnet.synsets[key]["words"]]
        return any(
            label in labels and (source == 0 or words[source - 1] == lemma)
            for source, label in wordnet.synsets[key]["labels"]
        )

    def why_sensitive(lemma: str, pos: str) -> str | None:
        senses = wordnet.senses[(lemma, pos)]
        if any(labelled(key, lemma, usages) for key in senses):
            return "usage label"  # any sense: WordNet marks slurs and obscenities explicitly
        for key in main_senses(lemma, pos):
            if labelled(key, lemma, colloquial):
                return "usage label"
            if wordnet.closure(key) & roots:
                return "sensitive domain"
            if key[0] == "a" and wordnet.attributes(key) & SENSITIVE_ATTRIBUTES:
                return "sensitive attribute"
        return None

    def mostly_a_person(lemma: str) -> bool:
        """Whether the lemma mostly names a kind of person, a body part or a bodily state: over
        half of its tagged occurrences, in every part of speech, or of its senses if never tagged
        ("great" is an adjective first, though its only noun sense is a person)."""
        senses = [
            key for pos in PARTS.values() if (lemma, pos) in wordnet.senses for key in wordnet.senses[(lemma, pos)]
        ]
        counts = [
            count
            for pos in PARTS.values()
            if (lemma, pos) in wordnet.senses
            for count in wordnet.sense_counts(lemma, pos)
        ]
        person = [
            wordnet.synsets[key]["file"] in PERSON_FILES
            and not any(symbol == "@i" for symbol, _ in wordnet.synsets[key]["pointers"])
            for key in senses
        ]
        weights = counts if any(counts) else [1] * len(senses)
        return sum(w for w, p in zip(weights, person) if p) > sum(weights) / 2

    def why_proper(word: str) -> str | None:
        everyday = {key for pos in PARTS.values() if (word, pos) in wordnet.senses for key in main_senses(word, pos)}
        for key in capitalised.get(word, []):
            synset = wordnet.synsets[key]
            if synset["file"] == "adj.pert":
                return "proper name"  # "Jewish", "German", "Christian"
            if key not in everyday:
                continue  # "Orange" the river, "Pisces" the person born under the sign of the fish
            instance = any(symbol == "@i" for symbol, _ in synset["pointers"])
            if synset["file"] == "noun.person" and not instance:
                return "proper name"  # a people: "Jew", "Turk", "Bolshevik"
            if synset["file"] in ("noun.location", "noun.group"):
                return "proper name"  # a country, city, nation, church: "China", "Turkey"
        return None

    kept, dropped = [], defaultdict(list)
    for form in candidates:
        lemmas = wordnet.lemmas(form)
        if not any(safe(key) for lemma, pos in lemmas for key in wordnet.senses[(lemma, pos)]):
            continue  # rule 1: no sense in a neutral domain
        bases = {lemma for lemma, _ in lemmas} | {form}
        reason = next((why for lemma, pos in sorted(lemmas) if (why := why_sensitive(lemma, pos))), None)
        reason = reason or next((why for base in sorted(bases) if (why := why_proper(base))), None)
        lower = [
            key
            for lemma, pos in lemmas
            for key in wordnet.senses[(lemma, pos)]
            if lemma in wordnet.synsets[key]["words"]
        ]
        if reason is None and not lower:
            reason = "proper name"  # WordNet knows it only capitalised ("Africa", "Thames", "Alps")
        if reason is None and any(mostly_a_person(lemma) for lemma in sorted({lemma for lemma, _ in lemmas})):
            reason = "person, body or bodily state"
        if reason is None and bases & names:
            reason = "first name"
        if reason is None and form not in spelling:
            reason = "not in the spelling dictionary"
        if reason is None and blocked(form, blocklist):
            reason = "blocklist"
        if reason is None:
            kept.append(form)
        else:
            dropped[reason].append(form)
    return sorted(kept), dropped


def main(wordnet_dir: str, names_dir: str) -> None:
    import better_profanity
    import wordfreq
    from spellchecker import SpellChecker

    wordnet = WordNet(Path(wordnet_dir))
    profane_file = Path(better_profanity.__file__).parent / "profanity_wordlist.txt"
    profane = {line.strip().lower() for line in profane_file.read_text(encoding="utf-8").splitlines()}
    blocklist = shipped_blocklist() | {word for word in profane if WORD.match(word)}
    candidates = [
        word for word in wordfreq.top_n_list("en", CANDIDATES) if len(word) >= MIN_WORD_LETTERS and WORD.match(word)
    ]
    spelling = set(SpellChecker(language="en", distance=1).word_frequency.dictionary)
    kept, dropped = build(wordnet, first_names(Path(names_dir)), blocklist, spelling, list(dict.fromkeys(candidates)))
    header = (
        '# Trigger words of MEMConfig.trigger_words="dictionary": one lower-case word per line.\n'
        "# Built by tools/build_trigger_words.py (its docstring has the rules) from Princeton WordNet 3.0\n"
        "# (licence: WORDNET_LICENSE beside this file), wordfreq's frequent English words, pyspellchecker's\n"
        "# English dictionary, the 1990 US census first names, better-profanity's word list and\n"
        "# trigger_blocklist.txt. Regenerate it with that script; do not edit it by hand.\n"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(header + "".join(f"{word}\n" for word in kept), encoding="utf-8")
    print(f"{len(kept)} words -> {OUT}")
    for reason, words in sorted(dropped.items()):
        print(f"dropped ({reason}): {len(words)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
