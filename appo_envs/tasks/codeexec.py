"""Task families for ``appo/CodeExec-v0``: problems that need a Python tool to solve exactly.

Each family samples JSON-serialisable parameters from a ``numpy.random.Generator``,
renders a question that states every parameter, and answers it with a self-contained,
stdlib-only solver function. The same solver is both called in-process (to produce the
reference answer) and shipped as source by ``solution_code`` (the scripted agent's
program), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

DIFFICULTIES = ("easy", "medium", "hard")

Params = dict[str, Any]


@dataclass(frozen=True)
class CodeTask:
    """One generated problem: the question shown to the agent and its exact reference answer."""

    task_id: str
    family: str
    difficulty: str
    question: str
    answer: str
    params: dict


@dataclass(frozen=True)
class TaskFamily:
    """A task family: parameter sampler, question renderer and stdlib-only solver."""

    name: str
    description: str
    sample_params: Callable[[np.random.Generator, str], Params]
    render_question: Callable[[Params], str]
    solver: Callable[..., str]

    def make(self, rng: np.random.Generator, difficulty: str) -> CodeTask:
        """Sample one task of this family at ``difficulty``, with its reference answer."""
        _check_difficulty(difficulty)
        params = self.sample_params(rng, difficulty)
        return CodeTask(
            task_id=_task_id(self.name, difficulty, params),
            family=self.name,
            difficulty=difficulty,
            question=self.render_question(params),
            answer=self.solver(**params),
            params=params,
        )

    def solution_code(self, params: Params) -> str:
        """Return stdlib-only Python source that prints exactly the answer on one line."""
        source = textwrap.dedent(inspect.getsource(self.solver))
        return f"{source}\n\nprint({self.solver.__name__}(**{params!r}))\n"


def _check_difficulty(difficulty: str) -> None:
    """Reject unknown difficulties with the list of valid ones."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid difficulties: {list(DIFFICULTIES)}")


def _task_id(family: str, difficulty: str, params: Params) -> str:
    """Deterministic id from the parameters, so equal tasks share an id across runs."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{family}-{difficulty}-{digest}"


def _randint(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in the closed range [low, high], as a plain (JSON-safe) int."""
    return int(rng.integers(low, high, endpoint=True))


# --- bigint_power_digits -------------------------------------------------------------
# Ranges keep base**exponent under 4300 digits, CPython's default int->str limit.
_POWER_SIZES = {
    "easy": ((2, 99), (20, 80), (3, 6)),
    "medium": ((100, 999), (150, 450), (8, 12)),
    "hard": ((1000, 9999), (400, 1000), (15, 25)),
}


def _sample_power(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample a base, an exponent and whether to ask for the digit sum or the last k digits."""
    (b_lo, b_hi), (e_lo, e_hi), (k_lo, k_hi) = _POWER_SIZES[difficulty]
    params: Params = {"base": _randint(rng, b_lo, b_hi), "exponent": _randint(rng, e_lo, e_hi)}
    if rng.random() < 0.5:
        return {**params, "mode": "digit_sum"}
    return {**params, "mode": "last_digits", "k": _randint(rng, k_lo, k_hi)}


def _question_power(p: Params) -> str:
    """Phrase the big-power question for either mode."""
    power = f"{p['base']}^{p['exponent']} ({p['base']} raised to the power {p['exponent']})"
    if p["mode"] == "digit_sum":
        return f"What is the sum of the decimal digits of {power}? Answer with a single integer."
    return (
        f"What is {power} modulo 10^{p['k']}, i.e. its last {p['k']} decimal digits read as an "
        "integer (leading zeros dropped)? Answer with a single integer."
    )


def solve_bigint_power_digits(base: int, exponent: int, mode: str, k: int = 0) -> str:
    """Digit sum of base**exponent, or base**exponent mod 10**k, with exact big integers."""
    if mode == "digit_sum":
        return str(sum(int(digit) for digit in str(base**exponent)))
    return str(pow(base, exponent, 10**k))


# --- sequence_sum --------------------------------------------------------------------
_SEQUENCE_SIZES = {
    "easy": ((50, 200), (100, 1000)),
    "medium": ((2_000, 20_000), (10_000, 1_000_000)),
    "hard": ((100_000, 200_000), (10**8, 10**9)),
}


def _sample_sequence(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample a second-order linear recurrence mod m and a term count n."""
    (n_lo, n_hi), (m_lo, m_hi) = _SEQUENCE_SIZES[difficulty]
    m = _randint(rng, m_lo, m_hi)
    return {
        "x0": _randint(rng, 0, m - 1),
        "x1": _randint(rng, 0, m - 1),
        "a": _randint(rng, 2, 97),
        "b": _randint(rng, 2, 97),
        "c": _randint(rng, 1, 997),
        "m": m,
        "n": _randint(rng, n_lo, n_hi),
    }


def _question_sequence(p: Params) -> str:
    """Phrase the recurrence-sum question."""
    return (
        f"Define a sequence by x_0 = {p['x0']}, x_1 = {p['x1']}, and for i >= 2: "
        f"x_i = ({p['a']} * x_(i-1) + {p['b']} * x_(i-2) + {p['c']}) mod {p['m']}. "
        f"What is x_0 + x_1 + ... + x_(n-1) for n = {p['n']}, i.e. the exact sum of the first "
        f"{p['n']} terms (the sum itself is NOT reduced mod {p['m']})? Answer with a single integer."
    )


def solve_sequence_sum(x0: int, x1: int, a: int, b: int, c: int, m: int, n: int) -> str:
    """Exact sum of the first n (>= 2) terms of x_i = (a*x_(i-1) + b*x_(i-2) + c) mod m."""
    prev, cur = x0, x1
    total = x0 + x1
    for _ in range(n - 2):
        prev, cur = cur, (a * cur + b * prev + c) % m
        total += cur
    return str(total)


# --- prime_count ---------------------------------------------------------------------
_PRIME_SIZES = {
    "easy": ((2, 2_000), (200, 2_000)),
    "medium": ((10_000, 500_000), (10_000, 100_000)),
    "hard": ((2_000_000, 9_000_000), (500_000, 1_000_000)),
}


def _sample_primes(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample an interval [lo, hi] whose size grows with difficulty."""
    (lo_lo, lo_hi), (w_lo, w_hi) = _PRIME_SIZES[difficulty]
    lo = _randint(rng, lo_lo, lo_hi)
    return {"lo": lo, "hi": lo + _randint(rng, w_lo, w_hi)}


def _question_primes(p: Params) -> str:
    """Phrase the prime-counting question."""
    return (
        f"How many prime numbers p satisfy {p['lo']} <= p <= {p['hi']} (both ends inclusive)? "
        "Answer with a single integer."
    )


def solve_prime_count(lo: int, hi: int) -> str:
    """Count primes in [lo, hi] with a bytearray sieve of Eratosthenes (hi >= 2)."""
    import math

    sieve = bytearray([1]) * (hi + 1)
    sieve[0:2] = b"\x00\x00"
    for p in range(2, math.isqrt(hi) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, hi + 1, p)))
    return str(sum(sieve[lo:]))


# --- string_transform ----------------------------------------------------------------
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DIGITS = "0123456789"
# (string length range, op-count range, output kind)
_STRING_SIZES = {
    "easy": ((10, 16), (2, 3), "string"),
    "medium": ((30, 60), (4, 6), "string"),
    "hard": ((200, 400), (8, 12), "checksum"),
}
# op name -> (argument range or None, how the question describes it; {0} is the argument)
_STRING_OPS: dict[str, tuple[tuple[int, int] | None, str]] = {
    "reverse": (None, "reverse the string"),
    "caesar": (
        (1, 25),
        "shift every letter forward by {0} places in the alphabet (Caesar cipher; wrap z->a and "
        "Z->A, keep each letter's case, leave digits unchanged)",
    ),
    "swapcase": (None, "swap the case of every letter"),
    "remove_vowels": (None, "delete every vowel (a, e, i, o, u in either case)"),
    "rotate_left": (
        (1, 40),
        "rotate left by {0} (take r = {0} mod the current length and move the first r characters "
        "to the end)",
    ),
}


def _sample_string(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample an alphanumeric string (with at least one digit, so it never empties) and an op chain."""
    (len_lo, len_hi), (ops_lo, ops_hi), output = _STRING_SIZES[difficulty]
    chars = [_ALPHABET[i] for i in rng.integers(len(_ALPHABET), size=_randint(rng, len_lo, len_hi))]
    chars[_randint(rng, 0, len(chars) - 1)] = _DIGITS[_randint(rng, 0, 9)]
    names = sorted(_STRING_OPS)
    ops = []
    for _ in range(_randint(rng, ops_lo, ops_hi)):
        name = names[_randint(rng, 0, len(names) - 1)]
        arg_range = _STRING_OPS[name][0]
        ops.append([name] if arg_range is None else [name, _randint(rng, *arg_range)])
    return {"text": "".join(chars), "ops": ops, "output": output}


def _question_string(p: Params) -> str:
    """Phrase the transform-chain question, numbering the steps."""
    steps = "\n".join(
        f"{i}. " + _STRING_OPS[name][1].format(*args) for i, (name, *args) in enumerate(p["ops"], 1)
    )
    if p["output"] == "checksum":
        ask = (
            "What is the checksum of the final string, defined as the sum of (i * code point of "
            "the i-th character) over positions i = 1, 2, ..., length? Answer with a single integer."
        )
    else:
        ask = "What is the final string? Answer with the string only (case-sensitive, no quotes)."
    return f'Start with the string "{p["text"]}" and apply these steps in order:\n{steps}\n{ask}'


def solve_string_transform(text: str, ops: list, output: str) -> str:
    """Apply the op chain to text; return the final string or its position-weighted checksum."""
    import string

    def caesar(s: str, k: int) -> str:
        lower, upper = string.ascii_lowercase, string.ascii_uppercase
        table = str.maketrans(lower + upper, lower[k:] + lower[:k] + upper[k:] + upper[:k])
        return s.translate(table)

    def rotate_left(s: str, r: int) -> str:
        r = r % len(s) if s else 0
        return s[r:] + s[:r]

    transforms = {
        "reverse": lambda s: s[::-1],
        "caesar": caesar,
        "swapcase": str.swapcase,
        "remove_vowels": lambda s: "".join(ch for ch in s if ch not in "aeiouAEIOU"),
        "rotate_left": rotate_left,
    }
    for name, *args in ops:
        text = transforms[name](text, *args)
    if output == "checksum":
        return str(sum(i * ord(ch) for i, ch in enumerate(text, 1)))
    return text


# --- collatz_steps -------------------------------------------------------------------
_COLLATZ_SIZES = {
    "easy": ((1, 10_000), (20, 60)),
    "medium": ((10_000, 1_000_000), (500, 1_000)),
    "hard": ((10**6, 10**9), (2_000, 4_000)),
}


def _sample_collatz(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample a range [lo, hi] of starting values."""
    (lo_lo, lo_hi), (w_lo, w_hi) = _COLLATZ_SIZES[difficulty]
    lo = _randint(rng, lo_lo, lo_hi)
    return {"lo": lo, "hi": lo + _randint(rng, w_lo, w_hi)}


def _question_collatz(p: Params) -> str:
    """Phrase the Collatz step-sum question."""
    return (
        "The Collatz step count of a positive integer n is the number of applications of the map "
        "n -> n/2 (if n is even) or n -> 3n+1 (if n is odd) needed to reach 1 (it is 0 for n = 1). "
        f"What is the sum of the Collatz step counts of all integers n with {p['lo']} <= n <= "
        f"{p['hi']}? Answer with a single integer."
    )


def solve_collatz_steps(lo: int, hi: int) -> str:
    """Sum of Collatz step counts over [lo, hi] (lo >= 1)."""
    total = 0
    for n in range(lo, hi + 1):
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            total += 1
    return str(total)


# --- lcm_mod -------------------------------------------------------------------------
_LCM_MODULUS = 1_000_000_007
_LCM_SIZES = {
    "easy": ((5, 6), (2, 60)),
    "medium": ((12, 20), (100, 10_000)),
    "hard": ((40, 60), (10_000, 1_000_000)),
}


def _sample_lcm(rng: np.random.Generator, difficulty: str) -> Params:
    """Sample a list of positive integers."""
    (c_lo, c_hi), (v_lo, v_hi) = _LCM_SIZES[difficulty]
    nums = [_randint(rng, v_lo, v_hi) for _ in range(_randint(rng, c_lo, c_hi))]
    return {"nums": nums, "modulus": _LCM_MODULUS}


def _question_lcm(p: Params) -> str:
    """Phrase the LCM-mod question."""
    nums = ", ".join(str(x) for x in p["nums"])
    return (
        f"Let L be the least common multiple of these {len(p['nums'])} integers: {nums}. "
        f"What is L mod {p['modulus']}? Answer with a single integer."
    )


def solve_lcm_mod(nums: list, modulus: int) -> str:
    """Exact LCM of nums, reduced mod modulus."""
    import math

    lcm = 1
    for x in nums:
        lcm = lcm * x // math.gcd(lcm, x)
    return str(lcm % modulus)


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily(
            "bigint_power_digits",
            "digit sum or last k digits of a^b (exact big integers)",
            _sample_power,
            _question_power,
            solve_bigint_power_digits,
        ),
        TaskFamily(
            "sequence_sum",
            "exact sum of the first n terms of a second-order linear recurrence mod m",
            _sample_sequence,
            _question_sequence,
            solve_sequence_sum,
        ),
        TaskFamily(
            "prime_count",
            "number of primes in an interval [lo, hi]",
            _sample_primes,
            _question_primes,
            solve_prime_count,
        ),
        TaskFamily(
            "string_transform",
            "chain of reverse/Caesar/swapcase/remove-vowels/rotate on a random string; string or checksum",
            _sample_string,
            _question_string,
            solve_string_transform,
        ),
        TaskFamily(
            "collatz_steps",
            "sum of Collatz step counts over an integer range",
            _sample_collatz,
            _question_collatz,
            solve_collatz_steps,
        ),
        TaskFamily(
            "lcm_mod",
            "least common multiple of a list of integers, mod 10^9+7",
            _sample_lcm,
            _question_lcm,
            solve_lcm_mod,
        ),
    )
}


def generate_code_task(
    rng: np.random.Generator, difficulty: str = "medium", family: str | None = None
) -> CodeTask:
    """Sample a task; the family is drawn uniformly from ``rng`` when not given."""
    _check_difficulty(difficulty)
    if family is None:
        names = sorted(FAMILIES)
        family = names[_randint(rng, 0, len(names) - 1)]
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; valid families: {sorted(FAMILIES)}")
    return FAMILIES[family].make(rng, difficulty)


_QUOTES = ("\"", "'", "`")
_NUMERIC = re.compile(r"[+-]?\d+(?:[,_]\d+)*")


def normalize_answer(text: str) -> str:
    """Canonical form used for grading, on both the agent's answer and the reference.

    Rule: strip surrounding whitespace; repeatedly strip one pair of matching surrounding
    quotes (", ' or `) and the whitespace inside them; collapse every internal whitespace run
    to one space. If the result is an integer optionally written with a leading sign and with
    ``,`` or ``_`` separators between digit groups, remove the separators and a leading ``+``
    (so " +1,234 " -> "1234"). Nothing else is changed: comparison stays case-sensitive and
    leading zeros are kept. The reward is 1 iff the normalised answer equals the normalised
    reference exactly, else 0.
    """
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    text = " ".join(text.split())
    if _NUMERIC.fullmatch(text):
        text = text.replace(",", "").replace("_", "").removeprefix("+")
    return text


def check_answer(task: CodeTask, text: str) -> bool:
    """True iff ``text`` matches the task's reference answer after ``normalize_answer``."""
    return normalize_answer(text) == normalize_answer(task.answer)
