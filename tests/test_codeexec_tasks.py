"""Tests for the CodeExec task generators, reference answers and answer normalisation."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appo_envs.tasks.codeexec import (
    DIFFICULTIES,
    FAMILIES,
    CodeTask,
    check_answer,
    generate_code_task,
    normalize_answer,
)

SEEDS = range(20)
CASES = list(itertools.product(sorted(FAMILIES), DIFFICULTIES))

# Runs each source in a fresh namespace of an isolated interpreter (no project on sys.path),
# capturing exactly what it prints; one process per batch keeps the suite fast.
_BATCH_RUNNER = """
import contextlib, io, json, sys
outputs = []
for source in json.load(sys.stdin):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, "<solution>", "exec"), {"__name__": "__main__"})
    outputs.append(buffer.getvalue())
json.dump(outputs, sys.stdout)
"""


def _run_batch(sources: list[str]) -> list[str]:
    """Execute solution sources in one isolated subprocess and return their stdout texts."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _BATCH_RUNNER],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def _generate(family: str, difficulty: str) -> list[CodeTask]:
    """Freshly generate the 20 seeded tasks of one family x difficulty."""
    return [generate_code_task(np.random.default_rng(seed), difficulty, family) for seed in SEEDS]


@cache
def _tasks(family: str, difficulty: str) -> tuple[CodeTask, ...]:
    """The 20 seeded tasks of one family x difficulty, generated once per session."""
    return tuple(_generate(family, difficulty))


def _param_ints(value: object) -> list[int]:
    """All integers nested anywhere in a params value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for item in value for n in _param_ints(item)]
    return []


@pytest.fixture(scope="module")
def solved() -> dict[tuple[str, str], list[tuple[CodeTask, str]]]:
    """Every family x difficulty x seed task paired with its solution code's stdout."""
    tasks = {case: _tasks(*case) for case in CASES}
    batches = [[FAMILIES[family].solution_code(t.params) for t in tasks[(family, d)]] for family, d in CASES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(_run_batch, batches))
    return {case: list(zip(tasks[case], out)) for case, out in zip(CASES, outputs)}


def test_registry_has_enough_families() -> None:
    """At least five families, each registered under its own name."""
    assert len(FAMILIES) >= 5
    assert all(name == family.name for name, family in FAMILIES.items())


@pytest.mark.parametrize(("family", "difficulty"), CASES)
def test_solution_code_prints_reference_answer(solved, family: str, difficulty: str) -> None:
    """The scripted solution prints exactly one line that matches the reference answer."""
    for task, stdout in solved[(family, difficulty)]:
        assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
        assert stdout.rstrip("\n") == task.answer
        assert check_answer(task, stdout)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_solution_code_runs_standalone(family: str) -> None:
    """A solution is a complete stdlib-only script: run it alone and compare stdout."""
    task = generate_code_task(np.random.default_rng(0), "hard", family)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FAMILIES[family].solution_code(task.params)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert proc.stdout == task.answer + "\n"


@pytest.mark.parametrize(("family", "difficulty"), CASES)
def test_task_fields_and_question_mention_params(family: str, difficulty: str) -> None:
    """Fields are consistent, params are JSON-safe, and the question states every parameter."""
    for task in _tasks(family, difficulty):
        assert (task.family, task.difficulty) == (family, difficulty)
        assert task.task_id.startswith(f"{family}-{difficulty}-")
        assert json.loads(json.dumps(task.params)) == task.params
        assert task.answer and task.answer == normalize_answer(task.answer)
        for number in _param_ints(task.params):
            assert str(number) in task.question, (number, task.question)
        if family == "string_transform":
            assert f'"{task.params["text"]}"' in task.question


@pytest.mark.parametrize(("family", "difficulty"), CASES)
def test_same_seed_same_task_and_seeds_vary(family: str, difficulty: str) -> None:
    """Generation is a pure function of the rng; different seeds give mostly different tasks."""
    first = _tasks(family, difficulty)
    assert list(first) == _generate(family, difficulty)
    assert len({t.task_id for t in first}) >= 0.8 * len(first)
    assert len({t.question for t in first}) == len({t.task_id for t in first})


def test_family_is_drawn_from_rng() -> None:
    """Without a family, the pick is deterministic per seed and covers several families."""
    picks = [generate_code_task(np.random.default_rng(seed)).family for seed in range(60)]
    assert picks == [generate_code_task(np.random.default_rng(seed)).family for seed in range(60)]
    assert len(set(picks)) >= 4


def test_unknown_family_raises_with_valid_names() -> None:
    """An unknown family name lists the valid ones."""
    with pytest.raises(ValueError) as info:
        generate_code_task(np.random.default_rng(0), "easy", "no_such_family")
    assert "no_such_family" in str(info.value)
    assert all(name in str(info.value) for name in FAMILIES)


@pytest.mark.parametrize("family", [None, "prime_count"])
def test_unknown_difficulty_raises_with_valid_names(family: str | None) -> None:
    """An unknown difficulty lists the valid ones, via both entry points."""
    with pytest.raises(ValueError) as info:
        generate_code_task(np.random.default_rng(0), "impossible", family)
    assert "impossible" in str(info.value)
    assert all(d in str(info.value) for d in DIFFICULTIES)
    with pytest.raises(ValueError, match="valid difficulties"):
        FAMILIES["prime_count"].make(np.random.default_rng(0), "impossible")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  1,234 ", "1234"),
        ("+1_234", "1234"),
        ("-1,000,000", "-1000000"),
        ('"42"', "42"),
        (" ' `7` ' ", "7"),
        ("0042", "0042"),
        ("  a   b\n c ", "a b c"),
        ("AbC", "AbC"),
        ('"unbalanced', '"unbalanced'),
        ("1,2x", "1,2x"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    """Whitespace, quotes and numeric separators are normalised; nothing else is."""
    assert normalize_answer(raw) == expected


@given(st.text(alphabet=st.sampled_from(list("09+-,_ \t\n'\"`aZ"))))
def test_normalize_answer_is_idempotent(raw: str) -> None:
    """Normalising twice changes nothing, so grading is symmetric in answer and reference."""
    assert normalize_answer(normalize_answer(raw)) == normalize_answer(raw)


def test_check_answer_accepts_formatting_and_rejects_wrong() -> None:
    """Formatting variants of the right answer pass; different values or case do not."""
    task = CodeTask("t", "f", "easy", "q", "1234", {})
    assert check_answer(task, "  1,234 ")
    assert check_answer(task, "'1234'")
    assert not check_answer(task, "1235")
    assert not check_answer(task, "12345")
    assert not check_answer(task, "")
    text_task = CodeTask("t", "f", "easy", "q", "aB3", {})
    assert check_answer(text_task, ' "aB3" ')
    assert not check_answer(text_task, "ab3")
