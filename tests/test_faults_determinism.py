"""Determinism and pairing: identical fault logs across processes, vector envs and forks; check_fault_env."""
import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import appo_envs
from appo_envs import check_fault_env
from appo_envs.faults import FaultInjector
from appo_envs.faults.draws import stream_key
from appo_envs.registration import ENVIRONMENTS
from appo_envs.toolcalls import render_answer, render_tool_call
from appo_envs.testing import EchoEnv

BUDGETS = {"max_turns": 12, "max_tool_calls": 60, "time_budget_s": 1e6}
CALL = render_tool_call("echo", {"text": json.dumps({"results": [{"id": 1, "text": "lorem"}]})})
ACTIONS = [CALL * 3] * 6 + [render_answer("x")]
TESTS_DIR = Path(__file__).parent


def play(env, seed, actions=ACTIONS, options=None):
    """Observations and per-step fault events of one episode, and its final fault log digest."""
    obs, _ = env.reset(seed=seed, options=options)
    out = [obs]
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        out.append((obs, reward, info["faults"]))
        if term or trunc:
            break
    return out, env.unwrapped.fault_log.digest()


def test_same_fault_log_in_another_process():
    env = EchoEnv(faults="chaos", budgets=BUDGETS)
    _, digest = play(env, seed=21)
    script = (f"import sys; sys.path[:0] = [{str(TESTS_DIR)!r}, {str(TESTS_DIR.parent)!r}]\n"
              "from test_faults_determinism import play, BUDGETS; from appo_envs.testing import EchoEnv\n"
              "print(play(EchoEnv(faults='chaos', budgets=BUDGETS), seed=21)[1])")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == digest


def make_echo():
    return EchoEnv(faults="chaos", budgets=BUDGETS)


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_vector_envs_give_the_single_env_faults(vector_cls):
    seeds = [21, 21, 22]
    singles = [play(make_echo(), s) for s in seeds]
    envs = vector_cls([make_echo] * len(seeds))
    try:
        envs.reset(seed=seeds)
        logs, events = [None] * len(seeds), [[] for _ in seeds]
        for a in ACTIONS:
            _, _, term, trunc, info = envs.step([a] * len(seeds))
            for i in range(len(seeds)):
                if logs[i] is None and info["_faults"][i]:
                    events[i].append(info["faults"][i])
                if logs[i] is None and (term[i] or trunc[i]):
                    logs[i] = info["fault_log"][i]
    finally:
        envs.close()
    for i, (single, digest) in enumerate(singles):
        assert [step[2] for step in single[1:]] == events[i]
        assert logs[i].digest() == digest
    assert logs[0] == logs[1] and logs[0].digest() != logs[2].digest()  # shared pairing: same seed, same faults


def test_fork_sees_the_parents_future_faults():
    env = EchoEnv(faults="chaos", budgets=BUDGETS)
    env.reset(seed=4)
    env.step(CALL * 2)
    child = env.fork()
    parent_future = [env.step(a) for a in ACTIONS[1:]]
    child_future = [child.step(a) for a in ACTIONS[1:]]
    assert [s[:4] for s in parent_future] == [s[:4] for s in child_future]
    assert env.fault_log == child.fault_log and len(env.fault_log) > 0


def test_forks_stepping_in_threads_see_the_same_faults_as_one_env_alone():
    # The rollout engine steps sibling forks concurrently; they share one injector under shared pairing.
    from concurrent.futures import ThreadPoolExecutor

    from appo_envs.faults import resolve_profile

    def injector():
        return FaultInjector(resolve_profile("chaos"), stream_key(np.random.SeedSequence(5)), b"u" * 16)

    alone = injector()
    expected = [alone.for_call("echo", k) for k in range(400)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so a race shows up
    try:
        for _ in range(20):
            shared = injector()
            with ThreadPoolExecutor(8) as pool:  # every thread walks the chain from call 0, as forks do
                seen = list(pool.map(lambda _: [shared.for_call("echo", k) for k in range(400)], range(8)))
            assert all(s == expected for s in seen)
    finally:
        sys.setswitchinterval(interval)


def test_group_members_share_faults_and_fresh_pairing_draws_its_own():
    a, b = EchoEnv(faults="chaos", budgets=BUDGETS), EchoEnv(faults="chaos", budgets=BUDGETS)
    assert play(a, 3) == play(b, 3)
    fresh = {"base": "chaos", "pairing": "fresh"}
    f1, f2 = EchoEnv(faults=fresh, budgets=BUDGETS), EchoEnv(faults=fresh, budgets=BUDGETS)
    _, info1 = f1.reset(seed=3)
    _, info2 = f2.reset(seed=3)
    assert info1["task_id"] == info2["task_id"]  # same task ...
    assert info1["fault_entropy"] != info2["fault_entropy"]  # ... independent fault keys, reported for replay
    run1, run2 = play(f1, 3, options={"fault_entropy": 11}), play(f2, 3, options={"fault_entropy": 12})
    assert run1[1] != run2[1]
    assert play(f2, 3, options={"fault_entropy": 11}) == run1  # replay by passing the reported entropy back
    with pytest.raises(ValueError, match="pairing='fresh'"):
        a.reset(seed=3, options={"fault_entropy": 11})


def test_fresh_fork_draws_new_faults_and_records_its_key():
    env = EchoEnv(faults={"base": "chaos", "pairing": "fresh", "patience": {}}, budgets=BUDGETS)
    env.reset(seed=3, options={"fault_entropy": 5})
    env.step(CALL)
    same_key, new_key = env.fork(fault_entropy=5), env.fork(fault_entropy=6)
    for e in (env, same_key, new_key):
        for a in ACTIONS[1:4]:
            e.step(a)
    assert env.fault_log.fault_entropy == (5,) and new_key.fault_log.fault_entropy == (5, 6)
    assert new_key.fault_log.digest() != env.fault_log.digest()
    # A fork re-keyed with the episode's own entropy continues exactly like the parent.
    assert [e for e in same_key.fault_log] == [e for e in env.fault_log]


LONG = {"max_turns": 100, "max_tool_calls": 100, "time_budget_s": 1e9}
ONE_CALL = render_tool_call("echo", {"text": "hi"})


def fork_after_parent_call(faults, seeds, parent_calls=1, when=lambda info: True):
    """For each seed: the parent's step infos (until ``when`` holds) and a fresh fork's next step info."""
    env = EchoEnv(faults={"pairing": "fresh", **faults}, budgets=LONG)
    out = []
    for seed in seeds:
        env.reset(seed=seed, options={"fault_entropy": seed})
        infos = []
        for _ in range(parent_calls):
            infos.append(env.step(ONE_CALL)[4])
            if when(infos[-1]):
                fork = env.fork(fault_entropy=10**6 + seed)
                out.append((infos, fork.step(ONE_CALL)[4]))
                break
    return out


def in_outage(info):
    return any(f.get("source") == "burst" for f in info["faults"])


def test_a_fresh_fork_taken_in_an_outage_stays_in_it_with_probability_1_minus_p_exit():
    # P(call k+1 in outage | call k in outage) = 1 - p_exit = 0.95. A fork that forgot the parent's
    # chain would start afresh: p_enter / (p_enter + p_exit) = 0.29.
    bursts = {"default": {"bursts": {"p_enter": 0.02, "p_exit": 0.05}}}
    pairs = fork_after_parent_call(bursts, range(800), parent_calls=30, when=in_outage)
    still = np.mean([in_outage(fork) for _, fork in pairs])
    sd = math.sqrt(0.95 * 0.05 / len(pairs))  # binomial; about 0.009 for the ~500 forks taken in an outage
    assert len(pairs) > 400 and abs(still - 0.95) < 4 * sd, (still, len(pairs))


def test_a_fresh_fork_continues_the_parents_latency_chain():
    # Consecutive calls have Spearman correlation (6/pi) asin(rho/2) = 0.892 at rho = 0.9; a fork
    # that restarted the chain would be independent of the parent's last call (0).
    lat = {"default": {"latency": {"kind": "lognormal", "median_s": 0.2, "p99_s": 2.0}, "latency_correlation": 0.9}}
    pairs = fork_after_parent_call(lat, range(400))
    latency = lambda info: next(f["latency_s"] for f in info["faults"] if f["kind"] == "latency")
    ranks = [np.argsort(np.argsort(x)) for x in zip(*[(latency(p[-1]), latency(f)) for p, f in pairs])]
    spearman = np.corrcoef(*ranks)[0, 1]
    assert abs(spearman - 6 / math.pi * math.asin(0.45)) < 0.05, spearman  # sd of the estimate ~0.01 at n = 400


def test_a_fresh_fork_pays_the_cold_start_its_parent_owes():
    deaths = {"default": {"error_rate": 0.5, "error_kinds": {"sandbox_death": 1}}}
    died = lambda info: any(f["kind"] == "sandbox_death" for f in info["faults"])
    pairs = fork_after_parent_call(deaths, range(40), when=died)
    assert len(pairs) >= 10
    assert all(any(f["kind"] == "cold_start" for f in fork["faults"]) for _, fork in pairs)


def test_fresh_forks_of_one_state_draw_different_futures():
    env = EchoEnv(faults={"base": "chaos", "pairing": "fresh", "patience": {}}, budgets=BUDGETS)
    env.reset(seed=3, options={"fault_entropy": 5})
    env.step(CALL * 3)
    forks = [env.fork(fault_entropy=e) for e in (*range(6, 26), 6)]
    for fork in forks:
        for a in ACTIONS[1:5]:
            fork.step(a)
    digests = [fork.fault_log.digest() for fork in forks]
    assert len(set(digests[:-1])) == 20 and digests[-1] == digests[0]  # own keys, own futures; a key replays
    past = list(env.fault_log)
    assert all(list(fork.fault_log)[:len(past)] == past for fork in forks)


def test_check_fault_env_passes_on_the_echo_env():
    check_fault_env(EchoEnv(budgets=BUDGETS))


@pytest.mark.parametrize("env_id", sorted(ENVIRONMENTS))
def test_check_fault_env_passes_on_every_registered_env(env_id):
    env = gym.make(env_id)
    try:
        check_fault_env(env)
    finally:
        env.close()


class LeakyEnv(EchoEnv):
    """Draws its fault key from OS entropy at every reset: faults are not a function of the seed."""

    def _make_injector(self, episode_seed, entropy):
        key = stream_key(np.random.SeedSequence())
        return FaultInjector(self.profile, key, key)


class ForgetfulForkEnv(EchoEnv):
    """Forks with a fresh injector: the branch does not see the parent's faults."""

    def fork(self, fault_entropy=None):
        clone = super().fork(fault_entropy)
        clone._injector = FaultInjector(self.profile, stream_key(np.random.SeedSequence(99)), self._injector.user_key)
        return clone


@pytest.mark.parametrize("broken, message", [(LeakyEnv, "differ"), (ForgetfulForkEnv, "fork")])
def test_check_fault_env_catches_broken_envs(broken, message):
    with pytest.raises(AssertionError, match=message):
        check_fault_env(broken(budgets=BUDGETS))


def test_check_fault_env_needs_faults_to_check():
    with pytest.raises(AssertionError, match="injected no tool fault"):
        check_fault_env(EchoEnv(budgets=BUDGETS), profile="clean")
    with pytest.raises(TypeError, match="ToolEnv"):
        check_fault_env(gym.make("CartPole-v1"))


def test_fork_env_helper_forks_wrapped_envs_with_faults():
    env = gym.make("appo/CodeExec-v0", faults="chaos", budgets={"max_turns": 10})
    try:
        env.reset(seed=2)
        call = render_tool_call("python", {"code": "print(1)"})
        env.step(call)
        child = appo_envs.fork_env(env)
        assert [child.step(call)[:4] for _ in range(2)] == [env.step(call)[:4] for _ in range(2)]
        assert child.unwrapped.fault_log == env.unwrapped.fault_log
        child.close()
    finally:
        env.close()
