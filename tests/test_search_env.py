"""Search-v0 through the Gymnasium API: checker, tasks, grading, HTTP faults, determinism, fork, fuzzing, agent."""
import gymnasium as gym
import numpy as np
import pytest
from env_contract import assert_fork_future, assert_seed_determinism, fuzz_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appo_envs
from appo_envs.agents import ScriptedSearchAgent, run_episode
from appo_envs.tasks.search import exact_match, f1_score, generate_search_task, normalize_answer
from appo_envs.toolcalls import parse_tool_responses, render_answer, render_tool_call
from sandboxes.corpus import SCHEMA, load_corpus

ENV_ID = "appo/Search-v0"


def test_reset_info_and_bad_arguments(make_env):
    obs, info = make_env().reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["search"]
    assert "What is the" in obs and info["task_id"].startswith("search-h")
    with pytest.raises(ValueError, match="hops"):
        gym.make(ENV_ID, hops=4)
    env = make_env().unwrapped
    with pytest.raises(ValueError, match="hops"):
        env.reset(seed=0, options={"hops": 0})


@pytest.mark.parametrize("hops", [True, False, 2.0, "2", 0, 4])
def test_hops_that_are_not_1_2_or_3_are_refused(make_env, hops):
    with pytest.raises(ValueError, match=r"hops must be one of \(1, 2, 3\)"):
        gym.make(ENV_ID, hops=hops)
    with pytest.raises(ValueError, match=r"hops must be one of \(1, 2, 3\)"):
        make_env().reset(seed=0, options={"hops": hops})
    with pytest.raises(ValueError, match=r"hops must be one of \(1, 2, 3\)"):
        generate_search_task(np.random.default_rng(0), load_corpus(), hops)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_generated_answers_follow_the_corpus_facts(hops):
    corpus = load_corpus()
    rng = np.random.default_rng(hops)
    for _ in range(50):
        task = generate_search_task(rng, corpus, hops)
        assert len(task.path) == len(task.visited) == hops
        etype, value = task.start_type, task.start
        for (vtype, vname), attribute in zip(task.visited, task.path):
            assert (vtype, vname) == (etype, value)
            value, etype = str(corpus.fact(etype, value, attribute)), SCHEMA[etype][attribute]
        assert value == task.answer
        assert task.start in task.question


def test_grading_normalises_and_reports_f1(make_env):
    assert exact_match("  The Vrafar  Partners! ", "vrafar partners") and not exact_match("Vrafar", "Vrafar Partners")
    assert normalize_answer("A Kettle, the best.") == "kettle best"
    assert f1_score("Vrafar", "Vrafar Partners") == pytest.approx(2 / 3)
    env = make_env()
    env.reset(seed=2)
    expected = env.unwrapped.task_spec()["answer"]
    _, reward, term, _, info = env.step(render_answer(f" {expected.upper()}. "))
    assert term and reward == 1.0 and info["f1"] == 1.0 and info["expected"] == expected
    env.reset(seed=2)
    _, reward, _, _, info = env.step(render_answer("nobody"))
    assert reward == 0.0 and info["f1"] == 0.0 and not info["success"]


def test_search_results_are_real_retrieval(make_env):
    env = make_env()
    env.reset(seed=4)
    start = env.unwrapped.task_spec()["start"]
    obs, *_ = env.step(render_tool_call("search", {"query": start, "topk": 5}))
    (name, status, content), = parse_tool_responses(obs)
    assert status == "ok" and content.startswith(f'Doc 1(Title: "{start}")') and content.count("\nDoc ") == 4
    obs, *_ = env.step(render_tool_call("search", {"query": "qqqzzz"}))
    assert "No documents matched" in obs
    obs, *_ = env.step(render_tool_call("search", {"query": "x", "topk": 99}))
    assert "topk must be in 1..10" in obs


@pytest.mark.parametrize("kind, seen", [("http_5xx", "HTTP 503 Service Unavailable"),
                                        ("http_429", "Retry-After"), ("exception", "HTTP 500"),
                                        ("timeout", "ReadTimeout"), ("connection_reset", "Connection reset by peer"),
                                        ("truncated_body", "RemoteProtocolError")])
def test_injected_faults_are_real_http_behaviour(make_env, kind, seen):
    env = make_env(faults={"tools": {"search": {"error_rate": 1.0, "error_kinds": [kind]}}})
    env.reset(seed=0)
    obs, _, _, _, info = env.step(render_tool_call("search", {"query": "anything"}))
    assert seen in obs
    assert [f["kind"] for f in info["faults"]] == [kind]
    assert info["tool_calls"][0]["status"] in ("error", "timeout")


ACTIONS = [render_tool_call("search", {"query": "Kettle"}), "no tags here",
           render_tool_call("search", {"query": "日本語 🚀"}) * 2, '<tool_call>{"name": "nope"}</tool_call>',
           render_answer("7")]


def test_same_seed_same_everything_different_seed_differs(make_env):
    assert_seed_determinism(make_env, ACTIONS, faults="chaos")


def test_fork_mid_episode_has_identical_independent_future(make_env):
    env = make_env(faults="chaos", budgets={"max_turns": 20})
    env.reset(seed=5)
    env.step(ACTIONS[0])
    assert_fork_future(env, ACTIONS[:4]).close()


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    st.text(max_size=300),
    st.text(alphabet="<>/{}\":,[] tool_callanswer", max_size=200),
    st.builds(lambda s: "<tool_call>" + s + "</tool_call>", st.text(max_size=100)),
    st.builds(lambda q, k: render_tool_call("search", {"query": q, "topk": k}), st.text(max_size=80),
              st.one_of(st.integers(-5, 20), st.text(max_size=3), st.none(), st.floats())),
    st.builds(lambda args: render_tool_call("search", args),
              st.dictionaries(st.sampled_from(["query", "topk", "q", ""]), st.one_of(st.text(max_size=20), st.integers()))),
    st.builds(lambda s: "<answer>" + s, st.text(max_size=50)),
))
def test_arbitrary_actions_never_raise(fuzz_env, action):
    fuzz_step(fuzz_env, action)


def test_scripted_agent_clean_and_degraded(make_env):
    clean_env = make_env(faults="clean")
    clean = [run_episode(clean_env, ScriptedSearchAgent(), seed=s) for s in range(60)]
    assert np.mean([r.success for r in clean]) >= 0.95
    assert {r.tool_calls for r in clean} == {1, 2, 3}  # every hop count occurs
    degraded_env = make_env(faults="degraded")
    degraded = [run_episode(degraded_env, ScriptedSearchAgent(), seed=s) for s in range(40)]
    rate = np.mean([r.success for r in degraded])
    assert 0 < rate < 1.0
    assert any(r.infra_failure for r in degraded)
