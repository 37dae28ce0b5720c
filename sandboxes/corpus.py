"""A seeded, procedurally generated knowledge corpus about a fictional world.

People, organisations, cities and countries with invented names and relations between
them, rendered as about 20,000 short documents. Because every name is invented, a
pretrained model cannot know the answers; because the facts are kept as structured data,
question generators know every answer exactly. The corpus is a pure function of
(``seed``, ``sizes``, :data:`CORPUS_VERSION`); it is generated on first use and cached as
JSON under :func:`cache_dir` so later processes load it instead of rebuilding it.

Each document is a sequence of fact sentences rendered from :data:`SENTENCES`; the same
templates give :func:`parse_fact`, so a reader of the documents (the scripted agents)
extracts facts with patterns that cannot drift from how they were written.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CORPUS_VERSION = 2
DEFAULT_SEED = 0


@dataclass(frozen=True)
class CorpusSizes:
    """How many entities of each type; one document per entity."""

    countries: int = 60
    cities: int = 1_500
    orgs: int = 3_500
    people: int = 14_940

    @property
    def total(self) -> int:
        return self.countries + self.cities + self.orgs + self.people


# Entity types, and for each attribute the entity type it points to (None: a literal value).
SCHEMA: dict[str, dict[str, str | None]] = {
    "person": {"occupation": None, "birth_year": None, "birthplace": "city", "employer": "org", "mentor": "person"},
    "org": {"industry": None, "founded_year": None, "founder": "person", "headquarters": "city"},
    "city": {"country": "country", "population": None, "mayor": "person"},
    "country": {"capital": "city", "currency": None},
}

# How the questions name each attribute ("the <phrase> of X").
PHRASES: dict[str, str] = {
    "occupation": "occupation", "birth_year": "birth year", "birthplace": "birthplace", "employer": "employer",
    "mentor": "mentor", "industry": "industry", "founded_year": "founding year", "founder": "founder",
    "headquarters": "headquarters city", "country": "country", "population": "population", "mayor": "mayor",
    "capital": "capital", "currency": "currency",
}

# Sentences of each entity type's document, in order; every attribute appears in exactly one.
SENTENCES: dict[str, tuple[str, ...]] = {
    "person": ("{name} is a {occupation} who was born in {birthplace} in {birth_year}.",
               "{name} works for {employer}.",
               "The mentor of {name} is {mentor}."),
    "org": ("{name} is a {industry} organisation founded in {founded_year} by {founder}.",
            "The headquarters of {name} are in {headquarters}."),
    "city": ("{name} is a city in {country} with a population of {population}.",
             "The mayor of {name} is {mayor}."),
    "country": ("{name} is a country whose capital is {capital}.",
                "The currency of {name} is the {currency}."),
}

OCCUPATIONS = ("architect", "botanist", "cartographer", "chemist", "composer", "diplomat", "economist",
               "engineer", "geologist", "historian", "journalist", "judge", "librarian", "mathematician",
               "novelist", "painter", "pharmacist", "physician", "pilot", "sculptor", "surveyor", "teacher",
               "translator", "veterinarian")
INDUSTRIES = ("aerospace", "agriculture", "banking", "biotechnology", "construction", "education", "energy",
              "fishing", "insurance", "logistics", "media", "mining", "publishing", "robotics", "shipbuilding",
              "software", "textile", "tourism")
ORG_SUFFIXES = ("Dynamics", "Holdings", "Works", "Laboratories", "Collective", "Guild", "Foundry", "Partners",
                "Systems", "Institute", "Cooperative", "Trust")
_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "qu", "r", "s",
           "sh", "st", "t", "th", "tr", "v", "vr", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ai", "ei", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "nd", "rk", "x", "m")


@dataclass
class Corpus:
    """The generated world: entities as structured records plus one document per entity."""

    seed: int
    entities: dict[str, dict[str, dict[str, Any]]]  # type -> name -> {attribute: value}
    docs: list[dict[str, str]]  # {"id", "title", "text", "type"}; docs[i]["id"] == f"d{i}"
    _doc_index: dict[str, int] = field(default_factory=dict, repr=False)
    _names: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._doc_index = {d["title"]: i for i, d in enumerate(self.docs)}
        self._names = {t: tuple(by_name) for t, by_name in self.entities.items()}

    @property
    def fingerprint(self) -> str:
        """Names this corpus exactly (a search service and a task generator must agree on it)."""
        return f"v{CORPUS_VERSION}-s{self.seed}-n{len(self.docs)}"

    def names(self, entity_type: str) -> tuple[str, ...]:
        """Names of every entity of ``entity_type``, in generation order."""
        return self._names[entity_type]

    def fact(self, entity_type: str, name: str, attribute: str) -> Any:
        """The value of ``attribute`` for entity ``name`` (an entity name or a literal)."""
        return self.entities[entity_type][name][attribute]

    def doc_of(self, name: str) -> dict[str, str]:
        """The document whose title is ``name``."""
        return self.docs[self._doc_index[name]]

    def contents(self) -> list[str]:
        """Search-R1 ``contents`` of every document: the quoted title, a newline, the text."""
        return [f'"{d["title"]}"\n{d["text"]}' for d in self.docs]


def cache_dir() -> Path:
    """Where generated artefacts live: ``$APPO_CACHE_DIR`` or ``~/.cache/appo-lab``."""
    root = os.environ.get("APPO_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "appo-lab"


def _word(rng: np.random.Generator, syllables: int) -> str:
    onsets = rng.integers(len(_ONSETS), size=syllables)
    vowels = rng.integers(len(_VOWELS), size=syllables)
    coda = _CODAS[int(rng.integers(len(_CODAS)))]
    return ("".join(_ONSETS[o] + _VOWELS[v] for o, v in zip(onsets, vowels)) + coda).capitalize()


def make_words(rng: np.random.Generator, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    """``n`` new invented words (distinct from each other and from ``taken``, which is updated)."""
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, int(rng.integers(syllables[0], syllables[1] + 1)))
        if w.lower() not in taken and len(w) >= 4:
            taken.add(w.lower())
            out.append(w)
    return out


def make_person_names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct "First Last" names whose words are not in ``taken`` (which is updated)."""
    firsts = make_words(rng, max(min(n, 40), n // 12), (2, 2), taken)
    lasts = make_words(rng, max(min(n, 60), n // 4), (2, 3), taken)
    names: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        name = f"{firsts[int(rng.integers(len(firsts)))]} {lasts[int(rng.integers(len(lasts)))]}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def generate_corpus(seed: int = DEFAULT_SEED, sizes: CorpusSizes = CorpusSizes()) -> Corpus:
    """Build the world and its documents from ``seed`` (no caching; see :func:`load_corpus`)."""
    rng = np.random.default_rng(np.random.SeedSequence([CORPUS_VERSION, seed]))
    taken: set[str] = {w.lower() for w in ORG_SUFFIXES}
    countries = make_words(rng, sizes.countries, (2, 3), taken)
    cities = make_words(rng, sizes.cities, (2, 3), taken)
    orgs = [f"{w} {ORG_SUFFIXES[int(rng.integers(len(ORG_SUFFIXES)))]}"
            for w in make_words(rng, sizes.orgs, (2, 3), taken)]
    people = make_person_names(rng, sizes.people, taken)
    currencies = [w.lower() for w in make_words(rng, sizes.countries, (2, 2), taken)]

    def pick(names: list[str]) -> str:
        return names[int(rng.integers(len(names)))]

    city_country = {c: pick(countries) for c in cities}
    for i, country in enumerate(countries):  # every country has at least one city, hence a capital
        city_country[cities[i]] = country
    cities_of: dict[str, list[str]] = {c: [] for c in countries}
    for city, country in city_country.items():
        cities_of[country].append(city)

    entities: dict[str, dict[str, dict[str, Any]]] = {"country": {}, "city": {}, "org": {}, "person": {}}
    for i, country in enumerate(countries):
        entities["country"][country] = {"capital": pick(cities_of[country]), "currency": f"{currencies[i]} crown"}
    for city in cities:
        entities["city"][city] = {"country": city_country[city], "population": int(rng.integers(2_000, 3_000_000)),
                                  "mayor": pick(people)}
    for org in orgs:
        entities["org"][org] = {"industry": pick(list(INDUSTRIES)), "founded_year": int(rng.integers(1820, 2021)),
                                "founder": pick(people), "headquarters": pick(cities)}
    for i, person in enumerate(people):
        mentor = people[(i + 1 + int(rng.integers(len(people) - 1))) % len(people)]  # never oneself
        entities["person"][person] = {"occupation": pick(list(OCCUPATIONS)), "birth_year": int(rng.integers(1930, 2001)),
                                      "birthplace": pick(cities), "employer": pick(orgs), "mentor": mentor}

    docs = []
    for etype in ("country", "city", "org", "person"):
        for name, facts in entities[etype].items():
            text = " ".join(t.format(name=name, **facts) for t in SENTENCES[etype])
            docs.append({"id": f"d{len(docs)}", "title": name, "text": text, "type": etype})
    return Corpus(seed=seed, entities=entities, docs=docs)


def _cache_path(seed: int, sizes: CorpusSizes) -> Path:
    return cache_dir() / f"corpus-v{CORPUS_VERSION}-s{seed}-n{sizes.total}.json"


@lru_cache(maxsize=4)
def load_corpus(seed: int = DEFAULT_SEED, sizes: CorpusSizes = CorpusSizes()) -> Corpus:
    """The corpus for ``seed``: from the cache if present, else generated and cached (atomically)."""
    path = _cache_path(seed, sizes)
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return Corpus(seed=data["seed"], entities=data["entities"], docs=data["docs"])
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"the cached corpus {path} is unreadable ({e}); delete it and it will be rebuilt") from e
    corpus = generate_corpus(seed, sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"seed": corpus.seed, "entities": corpus.entities, "docs": corpus.docs}))
    tmp.replace(path)
    return corpus


@lru_cache(maxsize=None)
def _sentence_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+?)" for i, p in enumerate(parts))
    return re.compile(r"(?:^|(?<=\. ))" + regex)  # a sentence starts the text or follows ". "


def parse_fact(text: str, entity_type: str, attribute: str, name: str | None = None) -> str | None:
    """Read ``attribute`` of an entity of ``entity_type`` from document text; None if absent.

    With ``name``, only a sentence about that entity counts.
    """
    template = next((t for t in SENTENCES[entity_type] if "{" + attribute + "}" in t), None)
    if template is None:
        raise ValueError(f"{entity_type} documents have no attribute {attribute!r}; "
                         f"attributes: {sorted(SCHEMA[entity_type])}")
    for m in _sentence_pattern(template).finditer(text):
        if name is None or m.group("name") == name:
            return m.group(attribute)
    return None
