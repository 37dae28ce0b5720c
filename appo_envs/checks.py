"""``check_fault_env``: assert that an env's faults are deterministic and paired as documented.

Like Gymnasium's ``check_env`` for the fault contract. It drives the env with probe
turns (one call of every tool per turn, arguments built from the tool schemas) under a
fault-heavy profile, and asserts:

1. the same seed gives identical observations, rewards and fault logs;
2. every logged error at call *k* of tool *T* is what the injector decides for (seed, T, k)
   (except 429s from the rate limiter, which also depend on call timing);
3. a fork taken mid-episode sees exactly the parent's future faults (``pairing="shared"``);
4. another seed gives other faults;
5. with ``pairing="fresh"``: equal ``fault_entropy`` replays identically, different entropy
   gives different faults for the same seed, and a fork draws its own future faults.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import gymnasium as gym

from appo_envs.core import ToolEnv
from appo_envs.faults import ERROR_KINDS, FaultLog, Patience, resolve_profile
from appo_envs.toolcalls import render_tool_call

_PROBE_VALUES: dict[str, Any] = {"string": "1", "integer": 1, "number": 1, "boolean": False, "array": [], "object": {}}


def probe_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """Valid-by-schema arguments for a tool: its required properties set to enum/default/simple values."""
    props = parameters.get("properties", {})
    args = {}
    for name in parameters.get("required", []):
        spec = props.get(name, {})
        if "enum" in spec:
            args[name] = spec["enum"][0]
        elif "default" in spec:
            args[name] = spec["default"]
        else:
            args[name] = _PROBE_VALUES.get(spec.get("type", "string"), "1")
    return args


def probe_turn(env: ToolEnv) -> str:
    """One assistant turn that calls every tool once (up to the per-turn call limit)."""
    tools = list(env.tools.values())[: env.budgets.max_calls_per_turn]
    return "".join(render_tool_call(t.name, probe_arguments(t.parameters)) for t in tools)


def _play(env: ToolEnv, seed: int, turns: int, options: dict[str, Any] | None = None) -> tuple[list[Any], FaultLog]:
    out: list[Any] = [env.reset(seed=seed, options=options)[0]]
    action = probe_turn(env)
    for _ in range(turns):
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return out, env.fault_log


def _fail(message: str) -> None:
    raise AssertionError(f"check_fault_env: {message}")


def check_fault_env(env: gym.Env, profile: Any = "chaos", seed: int = 0, turns: int = 4) -> None:
    """Assert fault determinism and pairing for ``env`` (a ToolEnv or a wrapper around one).

    ``profile`` is the fault profile to check under (the env's own is restored afterwards);
    raises AssertionError saying which property failed.
    """
    base = env.unwrapped
    if not isinstance(base, ToolEnv):
        raise TypeError(f"check_fault_env needs a ToolEnv (or a wrapper around one), got {type(base).__name__}")
    turns = max(2, min(turns, base.budgets.max_turns - 1))
    own = base.profile
    try:
        base.profile = replace(resolve_profile(profile), pairing="shared")
        _check_shared(base, seed, turns)
        # No user aborts here: a fork must live long enough to draw faults of its own.
        base.profile = replace(base.profile, pairing="fresh", patience=Patience())
        _check_fresh(base, seed, turns)
    finally:
        base.profile = own


def _check_shared(env: ToolEnv, seed: int, turns: int) -> None:
    first, log = _play(env, seed, turns)
    if not any(e["tool"] is not None for e in log):
        _fail(f"profile {env.profile.name!r} injected no tool fault in {turns} probe turns; use a fault-heavier profile")
    second, log2 = _play(env, seed, turns)
    if first != second or log != log2:
        _fail(f"two episodes with seed {seed} and the same actions differ (observations or fault logs)")
    fresh_injector = env._make_injector(seed, None)
    for e in log:
        if e["tool"] is not None and e["kind"] in ERROR_KINDS and e.get("source") != "rate_limit":
            decided = fresh_injector.for_call(e["tool"], e["call_index"]).error
            if decided != e["kind"]:
                _fail(f"call {e['call_index']} of {e['tool']!r} logged {e['kind']!r} but the injector decides "
                      f"{decided!r} for that (seed, tool, call): the fault is not a pure function of them")
    env.reset(seed=seed)
    action = probe_turn(env)
    env.step(action)
    child = env.fork()
    try:
        parent_future = [env.step(action)[:4] for _ in range(turns - 1)]
        child_future = [child.step(action)[:4] for _ in range(turns - 1)]
        if parent_future != child_future or env.fault_log != child.fault_log:
            _fail("a fork taken mid-episode does not see the parent's future faults and observations")
    finally:
        child.close()
    _, other = _play(env, seed + 1, turns)
    if other.digest() == log.digest():
        _fail(f"seeds {seed} and {seed + 1} gave identical fault logs: faults do not depend on the seed")


def _check_fresh(env: ToolEnv, seed: int, turns: int) -> None:
    a, log_a = _play(env, seed, turns, {"fault_entropy": 1})
    b, log_b = _play(env, seed, turns, {"fault_entropy": 1})
    if a != b or log_a != log_b:
        _fail("pairing='fresh' with equal fault_entropy did not replay identically")
    _, log_c = _play(env, seed, turns, {"fault_entropy": 2})
    if log_c.digest() == log_a.digest():
        _fail("pairing='fresh' with different fault_entropy gave identical faults for the same seed")
    env.reset(seed=seed, options={"fault_entropy": 1})
    action = probe_turn(env)
    env.step(action)
    child = env.fork(fault_entropy=3)
    try:
        for _ in range(turns - 1):
            env.step(action)
            child.step(action)
        if child.fault_log.digest() == env.fault_log.digest():
            _fail("under pairing='fresh' a fork repeated the parent's future faults")
        if list(child.fault_log.fault_entropy) != [1, 3]:
            _fail(f"a fresh fork's log must record its keys [1, 3], got {list(child.fault_log.fault_entropy)}")
    finally:
        child.close()
