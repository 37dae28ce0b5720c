"""Multi-hop questions over the generated corpus for ``appo/Search-v0``.

A question follows a chain of attributes from a start entity, e.g. "What is the currency
of the country of the birthplace of Pidil Breko?". ``hops`` is the number of documents
that must be read: every step but the last goes from an entity to a related entity
(found in that entity's document), the last reads the asked attribute. Answers are
graded by normalised exact match (SQuAD normalisation); token F1 is reported too.
"""
from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from dataclasses import dataclass, replace
from typing import Collection

import numpy as np

from sandboxes.corpus import PHRASES, SCHEMA, Corpus

HOPS = (1, 2, 3)
# How often a question starts at each entity type (people are the most connected).
START_WEIGHTS = {"person": 0.6, "org": 0.2, "city": 0.15, "country": 0.05}


@dataclass(frozen=True)
class SearchTask:
    """One question: the start entity, the attribute chain, every entity on the way, and the answer."""

    task_id: str
    question: str
    answer: str
    hops: int
    start: str
    start_type: str
    path: tuple[str, ...]  # attributes followed, in order; len(path) == hops
    visited: tuple[tuple[str, str], ...]  # (entity type, name) of each document to read, in order


def valid_hops(hops: object) -> bool:
    """Whether ``hops`` is an int in ``HOPS`` (a bool or a float is not, though ``True == 1`` and ``2.0 == 2``)."""
    return not isinstance(hops, bool) and isinstance(hops, (int, np.integer)) and hops in HOPS


def _relations(entity_type: str) -> list[str]:
    return [a for a, target in SCHEMA[entity_type].items() if target is not None]


def generate_search_task(rng: np.random.Generator, corpus: Corpus, hops: int,
                         final_attributes: Collection[str] | None = None) -> SearchTask:
    """Sample a ``hops``-document question with its exact answer from ``corpus``.

    ``final_attributes`` restricts what is asked for in the end (e.g. only numbers).
    """
    if not valid_hops(hops):
        raise ValueError(f"hops must be one of {HOPS}, got {hops!r}")
    types = list(START_WEIGHTS)
    while True:  # walks that cannot end in an allowed attribute are drawn again
        start_type = types[int(rng.choice(len(types), p=list(START_WEIGHTS.values())))]
        names = corpus.names(start_type)
        start = names[int(rng.integers(len(names)))]
        etype, name, path, visited = start_type, start, [], []
        for step in range(hops):
            visited.append((etype, name))
            last = step == hops - 1
            options = [a for a in sorted(SCHEMA[etype]) if final_attributes is None or a in final_attributes] \
                if last else _relations(etype)
            if not options:
                break
            attribute = options[int(rng.integers(len(options)))]
            path.append(attribute)
            etype, name = SCHEMA[etype][attribute], corpus.fact(etype, name, attribute)
        if len(path) == hops:
            break
    digest = hashlib.sha256(f"{start}|{'/'.join(path)}".encode()).hexdigest()[:10]
    task = SearchTask(task_id=f"search-h{hops}-{digest}", question="", answer=str(name), hops=hops, start=start,
                      start_type=start_type, path=tuple(path), visited=tuple(visited))
    question = (f"Answer using the search tool. What is {fact_phrase(task)}? "
                "Give only the name or value inside <answer></answer>.")
    return replace(task, question=question)


def fact_phrase(task: SearchTask) -> str:
    """The noun phrase a task asks about, e.g. "the birth year of the mentor of Pidil Breko"."""
    return "the " + " of the ".join(PHRASES[a] for a in reversed(task.path)) + f" of {task.start}"


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def f1_score(prediction: str, answer: str) -> float:
    """Token-overlap F1 between normalised prediction and answer."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
