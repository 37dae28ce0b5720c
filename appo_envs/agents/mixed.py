"""Scripted Mixed agent: searches both facts, computes the amount with python, issues the credit via the API."""
from __future__ import annotations

from typing import Any

from appo_envs.agents.api import ApiSteps
from appo_envs.agents.script import Script
from appo_envs.agents.search import SearchSteps
from appo_envs.tasks.mixed import FORMULAS


def _integer_output(content: str) -> str | None:
    last = content.strip().splitlines()[-1].strip() if content.strip() else ""
    return last if last.isdigit() else None


class ScriptedMixedAgent(SearchSteps, ApiSteps):
    """Uses what the tools return at every step: the facts it read feed the program, its output feeds the write."""

    def script(self, spec: dict[str, Any]) -> Script:
        values = []
        for fact in spec["facts"]:
            values.append(int((yield from self.follow(fact["start_type"], fact["start"], list(fact["path"])))))
        code = FORMULAS[spec["formula"]].solution_code(*values)
        amount = yield from self.call("python", {"code": code}, _integer_output)
        intent = spec["intents"][0]
        for op in intent["reads"]:
            yield from self.request(op)
        (credit,) = intent["writes"]
        body = {**credit["body"], "amount_cents": int(amount)}
        yield from self.request({**credit, "body": body}, idempotency_key="credit-1")
        return amount
