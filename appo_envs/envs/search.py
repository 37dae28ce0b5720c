"""``appo/Search-v0``: multi-hop questions about a generated fictional world, answered with a ``search`` tool.

The tool queries the search service (BM25 over the generated corpus) over HTTP: an
embedded server on 127.0.0.1 by default, or the one at ``search_url``. Reward: 1.0 when
the final ``<answer>`` equals the answer after SQuAD normalisation (lower case, no
punctuation or articles), else 0.0; ``info["f1"]`` gives token F1 as well. ``hops`` (make
kwarg, or ``options["hops"]`` per reset) is 1, 2 or 3 documents to read; None draws it.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import numpy as np

from sandboxes.corpus import Corpus, load_corpus
from sandboxes.services import ServiceHandle, connect

from appo_envs.core import Budgets, Task, ToolEnv
from appo_envs.tasks.search import HOPS, exact_match, f1_score, generate_search_task, valid_hops
from appo_envs.tools import SearchTool, Tool


def with_default_budgets(budgets: Budgets | Mapping[str, Any] | None,
                         defaults: Mapping[str, Any]) -> Budgets | dict[str, Any]:
    """An env's own budget defaults, overridden by whatever the user gave."""
    return budgets if isinstance(budgets, Budgets) else {**defaults, **(budgets or {})}


def connect_search(url: str | None) -> tuple[ServiceHandle, Corpus]:
    """The search service and the corpus it serves (they must be the same corpus the questions come from)."""
    service = connect("search", url)
    corpus = load_corpus()
    served = service.health.get("corpus")
    if served != corpus.fingerprint:
        raise RuntimeError(f"the search service at {service.url} serves corpus {served!r} but the questions come "
                           f"from {corpus.fingerprint!r}; run the service from the same appo-lab version")
    return service, corpus


def check_hops(hops: int | None) -> None:
    """Refuse a ``hops`` that is neither None nor an int in ``HOPS``."""
    if hops is not None and not valid_hops(hops):
        raise ValueError(f"hops must be one of {HOPS} or None (random), got {hops!r}")


class SearchEnv(ToolEnv):
    """Answer a 1-3 hop question about fictional entities by searching their encyclopedia."""

    system_intro = ("You answer questions about a fictional world. Nothing about it is common knowledge: find "
                    "every fact with the search tool, one entity name per query, and follow the chain of facts. "
                    "Give only the final name or value inside <answer></answer>.")
    default_budgets = {"max_turns": 12, "max_tool_calls": 24}

    def __init__(self, hops: int | None = None, search_url: str | None = None,
                 budgets: Budgets | Mapping[str, Any] | None = None, **kwargs: Any):
        check_hops(hops)
        self.hops = hops
        self.search_service, self.corpus = connect_search(search_url)
        super().__init__(budgets=with_default_budgets(budgets, self.default_budgets), **kwargs)

    def _build_tools(self) -> dict[str, Tool]:
        return {"search": SearchTool(self.search_service)}

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        hops = options.get("hops", self.hops)
        check_hops(hops)
        if hops is None:
            hops = HOPS[int(rng.integers(len(HOPS)))]
        task = generate_search_task(rng, self.corpus, hops)
        return Task(task_id=task.task_id, question=task.question, data=task)

    def _score(self, task: Task, answer: str) -> tuple[float, dict[str, Any]]:
        correct = exact_match(answer, task.data.answer)
        return (1.0 if correct else 0.0), {"expected": task.data.answer, "f1": f1_score(answer, task.data.answer),
                                           "hops": task.data.hops}

    def task_spec(self) -> dict[str, Any]:
        """The current task as plain data (used by scripted agents and analysis, never shown to the agent)."""
        return asdict(self.state.task.data)
