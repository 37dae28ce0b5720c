"""Fault-injection overhead per tool call on the virtual clock, against ``clean`` in the same run.

Plays the test suite's in-process echo env (no sandbox, no I/O: what is left is the env
core and the fault machinery) with 4 calls per turn under every preset. Profiles take
turns step by step, so load from other processes hits all of them alike; each step's
wall time divided by its tool calls is one sample, and the script prints the median per
profile and its overhead over ``clean``. Target: <= 20 us per call.

    python scripts/bench_faults.py [--steps 5000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appo_envs.faults import PRESETS  # noqa: E402
from appo_envs.toolcalls import render_tool_call  # noqa: E402
from appo_envs.testing import EchoEnv  # noqa: E402

CALLS_PER_TURN = 4
TARGET_US = 20.0
BUDGETS = {"max_turns": 10_000, "max_tool_calls": 100_000, "max_calls_per_turn": CALLS_PER_TURN, "time_budget_s": 1e12}


def step_us_per_call(env: EchoEnv, action: str) -> float:
    """Wall time of one step divided by its tool calls, in microseconds."""
    start = time.perf_counter()
    _, _, terminated, truncated, info = env.step(action)
    elapsed = time.perf_counter() - start
    if terminated or truncated:
        env.reset(seed=env.state.seed + 1)
    return elapsed / len(info["tool_calls"]) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5000, help="timed steps per profile")
    args = ap.parse_args()
    # A JSON body so corruption and hostile injection do their real work (parse, mutate, re-serialise).
    body = json.dumps({"results": [{"doc_id": i, "title": f"Title {i}", "text": "lorem ipsum " * 8} for i in range(3)]})
    action = render_tool_call("echo", {"text": body}) * CALLS_PER_TURN
    # Patience off: an abort would end the episode and measure resets instead of calls.
    envs = {name: EchoEnv(faults={"base": name, "patience": {}}, budgets=BUDGETS) for name in PRESETS}
    for env in envs.values():
        env.reset(seed=0)
        for _ in range(20):  # warm up: memo, caches, allocator
            env.step(action)
    samples: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.steps):
        for name, env in envs.items():
            samples[name].append(step_us_per_call(env, action))
    clean = statistics.median(samples["clean"])
    print(f"{'profile':<10} {'median us/call':>15} {'overhead us':>12}")
    worst = 0.0
    for name, values in samples.items():
        med = statistics.median(values)
        worst = max(worst, med - clean)
        print(f"{name:<10} {med:>15.2f} {med - clean:>12.2f}")
    print(f"worst overhead vs clean: {worst:.2f} us per call (target <= {TARGET_US:g} us): "
          f"{'PASS' if worst <= TARGET_US else 'FAIL'}")
    for env in envs.values():
        env.close()


if __name__ == "__main__":
    main()
