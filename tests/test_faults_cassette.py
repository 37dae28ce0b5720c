"""Record/replay: exact replay with the tools unavailable, and fault overlays that change exactly the faulted calls."""
from dataclasses import replace

import gymnasium as gym
import pytest

from appo_envs.cassette import Cassette, CassetteMiss, NotReplayable, content_hash
from appo_envs.faults import FAULT_CATEGORIES
from appo_envs.toolcalls import parse_tool_responses, render_answer, render_tool_call
from sandboxes import SANDBOX_BACKENDS

CODES = ["print(6 * 7)", "print('héllo ✓')", "import json; print(json.dumps({'a': [1, 2]}))", "print(6 * 7)",
         "print(sum(range(10)))", "raise ValueError('nope')"]
ACTIONS = ["".join(render_tool_call("python", {"code": c}) for c in CODES[i: i + 2]) for i in (0, 2, 4)]
ACTIONS += [render_tool_call("python", {"code": "print(1)"}), render_answer("42")]
OVERLAY = {"default": {"error_rate": 0.3, "error_kinds": ["exception", "timeout", "http_5xx"],
                       "corruption_rate": 0.3, "corruption_kinds": ["truncated", "stale"],
                       "hostile_rate": 0.2, "latency": {"kind": "lognormal", "median_s": 0.2, "p99_s": 2.0}}}


@pytest.fixture(scope="module")
def recorded():
    env = gym.make("appo/CodeExec-v0", faults="clean", budgets={"max_turns": 10})
    cassette = Cassette()
    observations = []

    def policy(obs, info):
        observations.append(obs)
        return ACTIONS[len(observations) - 1]

    cassette.record_episode(env, seed=7, actions=policy)
    env.close()
    return cassette, observations


def _no_sandbox(**options):
    raise AssertionError("replay started a sandbox: the tools were not supposed to run")


@pytest.fixture(autouse=True)
def unavailable_backend(monkeypatch):
    """A sandbox backend that fails when a sandbox is created, so replay provably never runs a tool."""
    monkeypatch.setitem(SANDBOX_BACKENDS, "unavailable", _no_sandbox)


def unavailable_env(**kwargs):
    """CodeExec on the ``unavailable`` backend: any real tool call would fail the test."""
    return gym.make("appo/CodeExec-v0", sandbox="unavailable", budgets={"max_turns": 10}, **kwargs)


def test_replay_is_exact_without_the_tools(recorded, tmp_path):
    cassette, observations = recorded
    tape = cassette.tapes[0]
    assert len(tape.actions) == len(ACTIONS)
    path = tmp_path / "episode.json"
    cassette.save(path)
    loaded = Cassette.load(path)
    env = unavailable_env()
    steps = loaded.replay_episode(env, 0).steps  # verifies every observation hash against the tape
    assert [s.observation for s in steps[:-1]] == observations[1:]
    assert steps[-1].terminated and steps[-1].reward == tape.rewards[-1]
    env.close()


def test_a_call_that_is_not_on_the_tape_is_refused_not_executed(recorded):
    cassette, _ = recorded
    tape = cassette.tapes[0]
    wrong = replace(tape, actions=[render_tool_call("python", {"code": "print('never recorded')"})])
    with pytest.raises(CassetteMiss, match="not on the tape"):
        cassette.replay_episode(unavailable_env(), wrong)


def test_replay_leaves_the_env_as_it_found_it(recorded):
    cassette, _ = recorded
    env = gym.make("appo/CodeExec-v0", faults="flaky", budgets={"max_turns": 10})
    env.reset(seed=1)
    base = env.unwrapped
    before = (base.profile, dict(base.tools), base.state, base.np_random)
    cassette.replay_episode(env, 0, faults=OVERLAY)
    assert (base.profile, base.tools, base.state, base.np_random) == before and base.cassette is None
    assert all(base.tools[name] is tool for name, tool in before[1].items())  # the real tools, none leaked
    env.reset(seed=2)
    assert "42" in env.step(render_tool_call("python", {"code": "print(6 * 7)"}))[0]
    env.close()


def test_content_hash_is_unchanged_and_takes_any_string():
    # Pinned: cassettes recorded before surrogates were accepted keep their hashes.
    assert content_hash({"a": "héllo ✓", "b": [1, 2.5, None]}) == \
        "e116465a24ce57e835bdade6ca3f259762062554274eb4d4abfb55f42a45e7a1"
    assert content_hash({"a": "\ud800"}) != content_hash({"a": "\udc00"})


def test_arguments_with_lone_surrogates_record_save_and_replay(tmp_path):
    actions = [render_tool_call("python", {"code": "print(len('\ud800'))  # \udcff"}), render_answer("1")]
    env = gym.make("appo/CodeExec-v0", faults="clean")
    cassette = Cassette()
    cassette.record_episode(env, seed=1, actions=actions)
    env.close()
    path = tmp_path / "surrogates.json"
    cassette.save(path)
    replay = Cassette.load(path).replay_episode(unavailable_env(), 0)
    assert [s.reward for s in replay.steps] == [0.0, cassette.tapes[0].rewards[-1]]


def test_blobs_are_content_addressed(recorded):
    cassette, _ = recorded
    tape = cassette.tapes[0]
    assert len(tape.calls) == 7 and len(cassette.blobs) == 6  # "print(6 * 7)" twice: one blob
    for digest, blob in cassette.blobs.items():
        assert content_hash(blob) == digest


def test_overlay_changes_exactly_the_calls_the_profile_faults(recorded):
    cassette, _ = recorded
    clean = cassette.replay_episode(unavailable_env(), 0).steps
    faulted = cassette.replay_episode(unavailable_env(), 0, faults=OVERLAY).steps
    injector = unavailable_env(faults=OVERLAY).unwrapped._make_injector(7, None)
    changed_expected, changed_seen = set(), set()
    k = 0
    for c, f in zip(clean, faulted):
        for (name, s1, t1), (_, s2, t2) in zip(parse_tool_responses(c.observation), parse_tool_responses(f.observation)):
            if (s1, t1) != (s2, t2):
                changed_seen.add(k)
            k += 1
        for event in f.info["faults"]:
            if FAULT_CATEGORIES[event["kind"]] in ("infra", "adversarial"):
                changed_expected.add(event["call_index"])
    decided = {k for k in range(k) if (lambda d: d.error or d.corruption or d.hostile)(injector.for_call("python", k))}
    assert changed_seen == changed_expected
    # Every decided fault shows up, except corruption that cannot apply (stale with nothing earlier, say).
    assert changed_expected <= decided and len(changed_expected) >= 2
    assert [s.reward for s in faulted][-1:] == [c.reward for c in clean][-1:] or faulted[-1].truncated
    # Latency changes only the clock, never the text.
    assert faulted[0].info["elapsed_s"] > clean[0].info["elapsed_s"]


def test_overlay_of_the_same_profile_is_deterministic(recorded):
    cassette, _ = recorded
    a = cassette.replay_episode(unavailable_env(), 0, faults=OVERLAY).steps
    b = cassette.replay_episode(unavailable_env(), 0, faults=OVERLAY).steps
    assert [(s.observation, s.reward, s.info["faults"]) for s in a] == [(s.observation, s.reward, s.info["faults"]) for s in b]


def test_faulted_recording_replays_exactly():
    env = gym.make("appo/CodeExec-v0", faults=OVERLAY, budgets={"max_turns": 10})
    cassette = Cassette()
    cassette.record_episode(env, seed=3, actions=ACTIONS)
    recorded_log = env.unwrapped.fault_log
    env.close()
    assert any(FAULT_CATEGORIES[e["kind"]] == "infra" for e in recorded_log)
    replay = cassette.replay_episode(unavailable_env(), 0)  # raises if any observation or reward differs
    assert replay.fault_log == recorded_log


def test_load_rejects_a_broken_cassette(recorded, tmp_path):
    cassette, _ = recorded
    path = tmp_path / "c.json"
    cassette.save(path)
    text = path.read_text().replace('"version": 1', '"version": 99')
    path.write_text(text)
    with pytest.raises(ValueError, match="version"):
        Cassette.load(path)


def test_envs_graded_on_service_state_refuse_replay_clearly():
    env = gym.make("appo/API-v0", faults="clean")
    cassette = Cassette()
    cassette.record_episode(env, seed=1, actions=[render_answer("done")])
    env.close()
    env = gym.make("appo/API-v0")
    env.reset(seed=0)
    with pytest.raises(NotReplayable, match=r"'api'\.open_session outside tool calls"):
        cassette.replay_episode(env, 0)
    env.reset(seed=1)  # the failed replay put the real tool back
    assert env.step(render_answer("done"))[2]
    env.close()


def test_search_episode_with_transport_faults_replays_exactly():
    from appo_envs.agents import SCRIPTED_AGENTS

    profile = {"default": {"error_rate": 0.4, "error_kinds": ["http_5xx", "http_429", "timeout"]}}
    env = gym.make("appo/Search-v0", faults=profile)
    agent = SCRIPTED_AGENTS["appo/Search-v0"]()
    started = []

    def policy(obs, info):
        if not started:
            agent.begin(env, obs, info)
            started.append(True)
        return agent.act(obs)

    cassette = Cassette()
    tape = cassette.record_episode(env, seed=2, actions=policy)
    recorded_log = env.unwrapped.fault_log
    env.close()
    assert any(key.endswith(("/http_5xx", "/http_429", "/timeout")) for key in tape.calls)  # the transport's answers
    replay_env = gym.make("appo/Search-v0")
    assert cassette.replay_episode(replay_env, tape).fault_log == recorded_log
    replay_env.close()
