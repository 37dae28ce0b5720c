"""Scripted Search agent, and the search skill the Mixed agent reuses.

The agent follows the question's chain of attributes, reading each fact out of the retrieved
document (it knows the chain, not the answer).
"""
from __future__ import annotations

from typing import Any, Generator

from sandboxes.corpus import SCHEMA, parse_fact

from appo_envs.agents.script import Script, ScriptedToolAgent
from appo_envs.tools.search_tool import parse_documents


class SearchSteps(ScriptedToolAgent):
    """The search skill: look a fact up in an entity's document, follow a chain of facts."""

    def lookup(self, entity_type: str, name: str, attribute: str) -> Generator[str, str, str]:
        """Search ``name`` and read ``attribute`` from its document (more results on a retry)."""
        def accept(content: str) -> str | None:
            for title, text in parse_documents(content):
                if title == name:
                    return parse_fact(text, entity_type, attribute, name)
            return None

        return (yield from self.call("search", {"query": name}, accept, retry_arguments={"query": name, "topk": 10}))

    def follow(self, start_type: str, start: str, path: list[str]) -> Generator[str, str, str]:
        """Follow a chain of attributes from an entity, one search per document; return the last value."""
        etype, value = start_type, start
        for attribute in path:
            value = yield from self.lookup(etype, value, attribute)
            etype = SCHEMA[etype][attribute]
        return value


class ScriptedSearchAgent(SearchSteps):
    """Answers a multi-hop question by searching each entity on the chain and reading the next fact."""

    def script(self, spec: dict[str, Any]) -> Script:
        return (yield from self.follow(spec["start_type"], spec["start"], list(spec["path"])))
