"""Scripted API agent: performs the task's reads, then its writes with idempotency keys, retrying failures.

A write is retried with the same idempotency key, so a write whose response was lost (a
timeout or a truncated body after the service applied it) is never applied twice. A 4xx
answer other than 429 is the agent's own mistake and is not retried.
"""
from __future__ import annotations

from typing import Any, Generator

from appo_envs.agents.script import Script, ScriptedToolAgent


def _is_client_error(content: str) -> bool:
    return content.startswith("HTTP 4") and not content.startswith("HTTP 429")


def _success_body(content: str) -> str | None:
    return content if content.startswith("HTTP 2") else None


class ApiSteps(ScriptedToolAgent):
    """The API skill: one REST request per turn, retried until it succeeds."""

    def request(self, op: dict[str, Any], idempotency_key: str | None = None) -> Generator[str, str, str]:
        """Send ``op`` ({method, path, body}) until it succeeds; return the response text."""
        args: dict[str, Any] = {"method": op["method"], "path": op["path"]}
        if op.get("body") is not None:
            args["body"] = op["body"]
        if idempotency_key is not None:
            args["idempotency_key"] = idempotency_key
        return (yield from self.call("api", args, _success_body, fatal=_is_client_error))


class ScriptedApiAgent(ApiSteps):
    """Carries out every intent of the request: its reads, then its writes (each with its own key)."""

    def script(self, spec: dict[str, Any]) -> Script:
        n_writes = 0
        for intent in spec["intents"]:
            for op in intent["reads"]:
                yield from self.request(op)
            for op in intent["writes"]:
                n_writes += 1
                yield from self.request(op, idempotency_key=f"write-{n_writes}")
        return "done"
