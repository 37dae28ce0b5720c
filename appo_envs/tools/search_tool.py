"""The ``search`` tool: BM25 search over the corpus through the search service's ``POST /retrieve``."""
from __future__ import annotations

import re
from typing import Any

import httpx

from sandboxes.services import ServiceHandle

from appo_envs.tools.base import ToolOutput
from appo_envs.tools.http_transport import call_service, make_client

MAX_TOPK = 10


def format_documents(docs: list[dict[str, str]]) -> str:
    """Search-R1's rendering of retrieved documents: ``Doc i(Title: "...") text`` per line."""
    if not docs:
        return "No documents matched the query."
    lines = []
    for i, doc in enumerate(docs, 1):
        title, _, text = doc["contents"].partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}")
    return "\n".join(lines)


_DOC_LINE = re.compile(r'^Doc \d+\(Title: "(.*)"\) (.*)$', re.MULTILINE)


def parse_documents(text: str) -> list[tuple[str, str]]:
    """(title, text) of each document in a search result rendered by :func:`format_documents`."""
    return _DOC_LINE.findall(text)


class SearchTool:
    """Sends the agent's query to the search service; the env's faults are acted out by the HTTP transport."""

    name = "search"
    description = ("Search an encyclopedia of short documents about a fictional world (people, organisations, "
                   "cities, countries) by keywords (BM25). Returns the best documents with their titles. "
                   "Search for one entity name at a time.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "keywords, e.g. an entity's name"},
                       "topk": {"type": "integer", "description": f"how many documents (1..{MAX_TOPK}, default 3)"}},
        "required": ["query"],
    }
    handles_faults = True

    def __init__(self, service: ServiceHandle, default_topk: int = 3, nominal_latency_s: float = 0.1):
        if not 1 <= default_topk <= MAX_TOPK:
            raise ValueError(f"default_topk must be in 1..{MAX_TOPK}, got {default_topk}")
        self.service, self.default_topk, self.nominal_latency_s = service, default_topk, nominal_latency_s
        self._client: httpx.Client | None = None

    def _get_client(self) -> httpx.Client:
        if self._client is None:
            self._client = make_client(self.service.url, timeout_s=10.0)
        return self._client

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        topk = arguments.get("topk", self.default_topk)
        if not 1 <= topk <= MAX_TOPK:
            return ToolOutput("error", f"Invalid call: topk must be in 1..{MAX_TOPK}, got {topk}.", clock_s=0.0)
        body = {"queries": [arguments["query"]], "topk": topk, "return_scores": False}
        return call_service(self._get_client(), "POST", "/retrieve", fault=fault, timeout_s=timeout_s,
                            latency_s=self.nominal_latency_s, json=body,
                            render_ok=lambda r: format_documents(r.json()["result"][0]))

    def reset(self, seed: int) -> None:
        """Stateless between calls: nothing to reset."""

    def fork(self) -> "SearchTool":
        return SearchTool(self.service, self.default_topk, self.nominal_latency_s)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
