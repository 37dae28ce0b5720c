"""Fault profiles, pure fault decisions, and fault statistics measured through the env."""
import math

import gymnasium as gym
import numpy as np
import pytest

from appo_envs.faults import FaultInjector, FaultProfile, LogNormal, PRESETS, ToolFaults, resolve_profile
from appo_envs.faults.draws import stream_key, uniforms
from appo_envs.toolcalls import render_tool_call


def test_uniform_draws_are_pure_and_uniform():
    key = stream_key(np.random.SeedSequence(7))
    assert uniforms(key, "call:python", 3) == uniforms(key, "call:python", 3)
    assert uniforms(key, "call:python", 3) != uniforms(key, "call:python", 4)
    assert uniforms(key, "call:python", 3) != uniforms(key, "call:search", 3)
    u = np.array([uniforms(key, "s", k)[0] for k in range(20000)])
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.mean(u < 0.1) - 0.1) < 0.01


def test_lognormal_by_median_and_p99():
    model = LogNormal(median_s=0.2, p99_s=2.0)
    key = stream_key(np.random.SeedSequence(1))
    draws = np.array([model.sample(uniforms(key, "lat", k)[0]) for k in range(5000)])
    assert abs(np.median(draws) / 0.2 - 1) < 0.08
    assert abs(np.quantile(draws, 0.99) / 2.0 - 1) < 0.25


def test_profile_validation_messages():
    with pytest.raises(ValueError, match="unknown key"):
        FaultProfile.from_dict({"defualt": {}})
    with pytest.raises(ValueError, match="error_rate"):
        FaultProfile.from_dict({"default": {"error_rate": 1.5}})
    with pytest.raises(ValueError, match="unknown error kind"):
        FaultProfile.from_dict({"default": {"error_rate": 0.1, "error_kinds": {"meteor": 1}}})
    with pytest.raises(ValueError, match="unknown latency kind"):
        FaultProfile.from_dict({"default": {"latency": {"kind": "gamma"}}})
    with pytest.raises(ValueError, match="presets"):
        resolve_profile("nope")
    with pytest.raises(ValueError, match="intensity"):
        resolve_profile("flaky", intensity=2.0)


def test_dict_yaml_and_intensity(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: flaky\nintensity: 0.5\ntools:\n  python:\n    error_rate: 0.4\n    latency: 0.3\n")
    prof = resolve_profile(str(p))
    assert prof.name == "mine" and prof.intensity == 0.5
    assert prof.for_tool("python").error_rate == pytest.approx(0.2)
    assert prof.for_tool("python").latency.sample(0.9) == pytest.approx(0.15)
    assert prof.for_tool("other").error_rate == pytest.approx(0.075)
    zero = PRESETS["degraded"].with_intensity(0.0)
    assert zero.for_tool("python").error_rate == 0 and not zero.effective_patience.active
    assert FaultProfile.from_dict(PRESETS["degraded"].to_dict()) == PRESETS["degraded"]
    with pytest.raises(ValueError, match="does not exist"):
        resolve_profile(str(tmp_path / "typo.yaml"))


def test_fault_of_call_k_is_pure_function_of_seed_tool_k():
    prof = PRESETS["degraded"]
    key = stream_key(np.random.SeedSequence(5))
    a, b = FaultInjector(prof, key, key), FaultInjector(prof, key, key)
    seq_a = [a.for_call("python", k) for k in range(50)]
    seq_b = [b.for_call("python", k) for k in reversed(range(50))][::-1]  # order of asking is irrelevant
    assert seq_a == seq_b


def test_error_rate_and_latency_statistics_over_2000_env_calls(echo_env_factory):
    profile = FaultProfile(name="stats", default=ToolFaults(error_rate=0.2, error_kinds={"exception": 0.5, "timeout": 0.5},
                                                            latency=LogNormal(median_s=0.5, p99_s=5.0)))
    env = echo_env_factory(faults=profile, budgets={"max_turns": 100, "max_tool_calls": 400, "time_budget_s": 1e9})
    call = render_tool_call("echo", {"text": "hi"})
    errors, latencies, calls, seed = 0, [], 0, 0
    while calls < 2000:
        env.reset(seed=seed)
        seed += 1
        for _ in range(100):
            _, _, term, trunc, info = env.step(call * 4)
            calls += len(info["tool_calls"])
            errors += sum(f["kind"] in ("exception", "timeout") for f in info["faults"])
            latencies += [f["latency_s"] for f in info["faults"] if f["kind"] == "latency"]
            if term or trunc:
                break
    # Binomial sd at n=2000, p=0.2 is 0.009: 4 sd tolerance.
    assert abs(errors / calls - 0.2) < 0.036
    assert abs(np.median(latencies) / 0.5 - 1) < 0.1
    assert abs(np.quantile(latencies, 0.99) / 5.0 - 1) < 0.35


def test_patience_aborts_grow_with_time():
    prof = FaultProfile(patience=__import__("appo_envs").faults.Patience(base_hazard=0.01, per_second=0.01))
    key = stream_key(np.random.SeedSequence(3))
    inj = FaultInjector(prof, key, key)
    assert inj.user_aborts(1, 0.0)[1] == pytest.approx(1 - math.exp(-0.01))
    assert inj.user_aborts(1, 100.0)[1] > inj.user_aborts(1, 10.0)[1]


def test_a_misspelt_tool_in_a_profile_is_refused_when_the_env_is_built(echo_env_factory):
    with pytest.raises(ValueError, match=r"tool 'ehco', which this env does not have; did you mean 'echo'\? "
                                         r"\(the env's tools: echo\)"):
        echo_env_factory(faults={"tools": {"ehco": {"error_rate": 1.0}}})
    with pytest.raises(ValueError, match="did you mean 'python'"):
        gym.make("appo/CodeExec-v0", faults={"base": "flaky", "tools": {"pyhton": {"error_rate": 1.0}}})
    # Entries for other envs' tools are kept unused: one profile serves a sweep over envs (chaos names python).
    for faults in ("chaos", {"tools": {"python": {"error_rate": 1.0}, "search": {"hostile_rate": 0.5}}}):
        env = echo_env_factory(faults=faults)
        assert env.profile.for_tool("echo") == env.profile.default.scaled(1.0)


def test_check_tools_compares_names_with_the_env_tools():
    profile = FaultProfile(tools={"Search": {}, "serach": {}, "python": {}, "api": {}})
    profile.check_tools(["python", "api", "calculator"])
    for tools in (["search"], ["python", "search"]):
        with pytest.raises(ValueError, match="'Search'.*did you mean 'search'"):
            profile.check_tools(tools)
