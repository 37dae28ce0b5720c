"""Long-horizon tasks for ``appo/Mixed-v0`` that need all three tools in one episode.

A customer of the shop is owed a goodwill credit whose amount is a formula of two numbers
that only the fictional world's encyclopedia knows (each 1-2 documents away). The agent
must find both numbers with ``search``, compute the amount with ``python`` (the formulas
are tedious by hand on purpose), then find the customer and issue the credit with
``api``. The gold outcome is the shop with exactly that credit; grading is the API env's
(final data equal the gold data).
"""
from __future__ import annotations

import hashlib
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sandboxes.corpus import Corpus

from appo_envs.tasks.api import ApiOp, Intent, find_customer_op, generate_fixture
from appo_envs.tasks.search import SearchTask, fact_phrase, generate_search_task

NUMERIC_ATTRIBUTES = ("birth_year", "founded_year", "population")
CREDIT_REASON = "goodwill"


def prime_count(a: int, b: int) -> int:
    """100 times (1 + the number of primes p with a <= p <= a + b % 5000)."""
    lo, hi = max(a, 2), a + b % 5000
    window = bytearray([1]) * max(hi - lo + 1, 0)
    for p in range(2, int(hi**0.5) + 2):
        first = max(p * p, (lo + p - 1) // p * p)
        window[first - lo :: p] = bytearray(len(range(first, hi + 1, p)))
    return 100 * (1 + sum(window))


def power_mod(a: int, b: int) -> int:
    """(a**3 + b**2) mod 100003, plus 100."""
    return (a**3 + b**2) % 100003 + 100


def collatz_steps(a: int, b: int) -> int:
    """Number of Collatz steps from a * b down to 1, times 10."""
    n, steps = a * b, 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return 10 * steps


@dataclass(frozen=True)
class Formula:
    """How the credit is computed from the two facts: the wording and a stdlib-only solver."""

    wording: str  # uses {a} and {b} for the names of the two facts
    solver: Callable[[int, int], int]

    def solution_code(self, a: int, b: int) -> str:
        """Python source that prints the amount for ``a`` and ``b`` (what a careful agent runs)."""
        return f"{textwrap.dedent(inspect.getsource(self.solver))}\n\nprint({self.solver.__name__}({a}, {b}))\n"


FORMULAS: dict[str, Formula] = {
    "prime_count": Formula("100 times (1 + the number of primes p with A <= p <= A + (B mod 5000))", prime_count),
    "power_mod": Formula("(A cubed + B squared) modulo 100003, plus 100", power_mod),
    "collatz": Formula("10 times the number of Collatz steps (n -> n/2 if n is even, else 3n+1) that take the "
                       "product A*B down to 1", collatz_steps),
}


@dataclass
class MixedTask:
    """Two facts to find, a formula, and the shop write that uses the result (gold filled in by the env)."""

    task_id: str
    question: str
    facts: tuple[SearchTask, SearchTask]
    formula: str
    amount_cents: int
    fixture: dict[str, Any]
    customer_id: str
    intents: list[Intent]
    gold: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def writes(self) -> list[ApiOp]:
        return [op for it in self.intents for op in it.writes]


def generate_mixed_task(rng: np.random.Generator, corpus: Corpus, formula: str | None = None) -> MixedTask:
    """A credit whose amount needs two searched facts and a computation, for a customer of a seeded shop."""
    if formula is not None and formula not in FORMULAS:
        raise ValueError(f"unknown formula {formula!r}; formulas: {sorted(FORMULAS)}")
    name = formula or sorted(FORMULAS)[int(rng.integers(len(FORMULAS)))]
    facts = tuple(generate_search_task(rng, corpus, int(rng.integers(1, 3)), NUMERIC_ATTRIBUTES) for _ in range(2))
    a, b = (int(f.answer) for f in facts)
    amount = FORMULAS[name].solver(a, b)
    fixture = generate_fixture(rng)
    customer = fixture["customers"][int(rng.integers(len(fixture["customers"])))]
    credit = ApiOp("POST", f"/customers/{customer['id']}/credits", {"amount_cents": amount, "reason": CREDIT_REASON})
    intent = Intent("goodwill_credit", "", reads=(find_customer_op(customer),), writes=(credit,))
    question = (f"The shop owes its customer {customer['name']} (email {customer['email']}) a goodwill credit. "
                f"Its amount in cents is {FORMULAS[name].wording}, where A is {fact_phrase(facts[0])} and B is "
                f"{fact_phrase(facts[1])} (both are in the encyclopedia: use the search tool). Compute the amount "
                f"with the python tool, then issue the credit with the api tool (reason \"{CREDIT_REASON}\"). "
                "Finally reply with the amount in cents inside <answer></answer>.")
    digest = hashlib.sha256(f"{facts[0].task_id}|{facts[1].task_id}|{name}|{customer['id']}".encode()).hexdigest()[:10]
    return MixedTask(task_id=f"mixed-{name}-{digest}", question=question, facts=facts, formula=name,
                     amount_cents=amount, fixture=fixture, customer_id=customer["id"], intents=[intent])
