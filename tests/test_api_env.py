"""API-v0 through the Gymnasium API: checker, tasks, grading on final data, idempotency, fork, fuzzing, agent."""
import gymnasium as gym
import numpy as np
import pytest
from env_contract import assert_fork_future, assert_seed_determinism, fuzz_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appo_envs
from appo_envs.agents import ScriptedApiAgent, run_episode
from appo_envs.tasks.api import INCOMPATIBLE, INTENTS, compare_outcome, generate_api_task
from appo_envs.toolcalls import parse_tool_responses, render_answer, render_tool_call
from appo_envs.tools import ApiAdmin

ENV_ID = "appo/API-v0"


def api_call(method, path, body=None, key=None):
    args = {"method": method, "path": path}
    if body is not None:
        args["body"] = body
    if key is not None:
        args["idempotency_key"] = key
    return render_tool_call("api", args)


def plan_actions(spec, keys=True):
    """The scripted plan as actions: every read, then every write (with an idempotency key)."""
    out, n = [], 0
    for intent in spec["intents"]:
        out += [api_call(op["method"], op["path"]) for op in intent["reads"]]
        for op in intent["writes"]:
            n += 1
            out.append(api_call(op["method"], op["path"], op["body"], f"w{n}" if keys else None))
    return out


def test_reset_info_and_bad_arguments(make_env):
    obs, info = make_env().reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["api"]
    assert "POST /orders" in obs and "email" in obs
    with pytest.raises(ValueError, match="intents"):
        gym.make(ENV_ID, intents=["steal"])
    with pytest.raises(ValueError, match="n_intents"):
        gym.make(ENV_ID, n_intents=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_intents": True}, "n_intents must be 1, 2 or None"),
    ({"n_intents": 2.0}, "n_intents must be 1, 2 or None"),
    ({"intents": "place_order"}, "list of intent names"),
    ({"intents": []}, "at least one intent"),
    ({"intents": ["place_order", "place_order"]}, "more than once"),
    ({"intents": ["place_order"], "n_intents": 2}, "two intents that can be combined"),
    ({"intents": ["move_house", "place_order"], "n_intents": 2}, "two intents that can be combined"),
])
def test_intent_requests_that_cannot_be_honoured_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make(ENV_ID, **kwargs)
    with pytest.raises(ValueError, match=message):
        generate_api_task(np.random.default_rng(0), **kwargs)


def test_two_intents_asked_for_are_two_intents_given():
    rng = np.random.default_rng(0)
    for _ in range(100):
        names = [i.name for i in generate_api_task(rng, n_intents=2).intents]
        assert len(names) == 2 and frozenset(names) not in INCOMPATIBLE
    few_pairs = ["move_house", "refund_damaged", "place_order"]  # only pairs with refund_damaged combine
    assert all(len(generate_api_task(rng, 2, few_pairs).intents) == 2 for _ in range(30))


@pytest.mark.parametrize("env_id", sorted(appo_envs.ENVIRONMENTS))
def test_reset_after_close_reopens_the_tools(env_id):
    env = gym.make(env_id)
    first = env.reset(seed=0)[0]
    env.close()
    assert env.reset(seed=0)[0] == first
    assert env.step(render_answer("done"))[2]
    env.close()


def test_every_intent_is_generated_and_pairs_are_order_independent():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        task = generate_api_task(rng)
        names = [i.name for i in task.intents]
        seen.update(names)
        assert len(set(names)) == len(names) and frozenset(names) not in {
            frozenset({"move_house", "place_order"}), frozenset({"move_house", "cancel_pending"})}
        assert all(op.is_write for op in task.writes) and task.question.count("@") == 1
    assert seen == set(INTENTS)


def test_scripted_plan_succeeds_and_reports_checks(make_env):
    env = make_env()
    env.reset(seed=3)
    for action in plan_actions(env.unwrapped.task_spec()):
        obs, *_ = env.step(action)
        assert "[api ok]" in obs, obs
    _, reward, term, _, info = env.step(render_answer("done"))
    assert term and reward == 1.0 and info["failed_check"] is None
    assert set(info["checks"].values()) == {"ok"}


def test_missing_or_double_writes_fail_with_the_failing_check(make_env):
    env = make_env()
    env.reset(seed=5, options={"intents": ["place_order"], "n_intents": 1})
    _, reward, _, _, info = env.step(render_answer("done"))
    assert reward == 0.0 and info["failed_check"] is not None and "missing" in info["checks"]["orders"]

    env.reset(seed=5, options={"intents": ["refund_damaged"], "n_intents": 1})
    actions = plan_actions(env.unwrapped.task_spec(), keys=False)
    for action in actions + actions[-1:]:  # the refund applied twice
        env.step(action)
    _, reward, _, _, info = env.step(render_answer("done"))
    assert reward == 0.0 and "unexpected row" in info["checks"]["refunds"]

    env.reset(seed=5, options={"intents": ["refund_damaged"], "n_intents": 1})
    actions = plan_actions(env.unwrapped.task_spec(), keys=True)
    for action in actions + actions[-1:]:  # retried with the same key: applied once
        obs, *_ = env.step(action)
    assert "[api ok]" in obs
    assert env.step(render_answer("done"))[1] == 1.0


def test_compare_outcome_names_the_first_difference():
    gold = {"orders": [{"id": "O-1", "status": "cancelled"}], "order_items": []}
    have = {"orders": [{"id": "O-1", "status": "pending"}], "order_items": [{"order_id": "O-1", "product_id": "P-1"}]}
    checks = compare_outcome(have, gold)
    assert checks["orders"] == "orders O-1.status is 'pending', expected 'cancelled'"
    assert "unexpected row" in checks["order_items"]


def test_each_episode_has_its_own_session_and_close_frees_it(make_env):
    env = make_env()
    env.reset(seed=0)
    tool = env.unwrapped.tools["api"]
    first = tool.session_id
    env.reset(seed=1)
    second = tool.session_id
    assert second != first
    admin = ApiAdmin(env.unwrapped.api_service)
    with pytest.raises(RuntimeError, match="404"):
        admin.snapshot(first)
    env.close()
    with pytest.raises(RuntimeError, match="404"):
        admin.snapshot(second)
    admin.close()


def _actions(env, seed):
    env.reset(seed=seed)
    spec = env.unwrapped.task_spec()
    return [*plan_actions(spec), "no tags", api_call("GET", "/orders/O-1"), render_answer("done")]


def test_same_seed_same_everything_different_seed_differs(make_env):
    assert_seed_determinism(make_env, _actions(make_env(), 11), faults="chaos", budgets={"max_turns": 30})


def test_fork_copies_the_session_and_has_identical_independent_future(make_env):
    env = make_env(faults="flaky", budgets={"max_turns": 30})
    actions = _actions(make_env(), 7)
    env.reset(seed=7)
    for a in actions[:2]:
        env.step(a)
    parent_tool = env.unwrapped.tools["api"]
    before = parent_tool.snapshot()

    def parent_unchanged() -> None:  # the child's writes stayed in the child's session
        assert parent_tool.snapshot() == before

    child = assert_fork_future(env, actions[2:], check_between=parent_unchanged)
    child_tool = child.unwrapped.tools["api"]
    assert child_tool.session_id != parent_tool.session_id
    assert child_tool.snapshot() == parent_tool.snapshot() != before  # same writes on a copied session
    child.close()


_PATHS = st.one_of(st.sampled_from(["/customers", "/customers/C-1", "/orders", "/orders/O-1/cancel", "/products",
                                    "/orders/O-1/refunds", "/admin/sessions", "//x", "/health", "/../x", "/orders?"]),
                   st.text(max_size=40), st.builds(lambda s: "/" + s, st.text(max_size=40)))
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10))
_JSON = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=3),
                  st.dictionaries(st.sampled_from(["customer_id", "items", "amount_cents", "reason", "method", "address",
                                                   "shipping_address", "x"]),
                                  st.one_of(_SCALAR, st.lists(st.dictionaries(st.sampled_from(["product_id", "quantity"]),
                                                                              _SCALAR, max_size=2), max_size=2)),
                                  max_size=4))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    st.text(max_size=300),
    st.builds(lambda s: "<tool_call>" + s + "</tool_call>", st.text(max_size=100)),
    st.builds(lambda m, p, b, k: render_tool_call("api", {k2: v for k2, v in
                                                         {"method": m, "path": p, "body": b, "idempotency_key": k}.items()
                                                         if v is not None}),
              st.one_of(st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]), st.text(max_size=5)), _PATHS,
              st.one_of(st.none(), _JSON), st.one_of(st.none(), st.text(max_size=12))),
    st.builds(lambda args: render_tool_call("api", args), st.dictionaries(st.text(max_size=8), _JSON, max_size=4)),
    st.builds(lambda s: "<answer>" + s, st.text(max_size=50)),
))
def test_arbitrary_actions_never_raise(fuzz_env, action):
    obs = fuzz_step(fuzz_env, action)[0]
    for _, status, content in parse_tool_responses(obs):
        assert "Traceback" not in content


def test_scripted_agent_clean_and_flaky_and_degraded(make_env):
    clean_env = make_env(faults="clean")
    clean = [run_episode(clean_env, ScriptedApiAgent(), seed=s) for s in range(40)]
    assert np.mean([r.success for r in clean]) >= 0.95
    chaos_env = make_env(faults="chaos")  # every HTTP fault kind, rate limits, corruption, an impatient user
    chaos = [run_episode(chaos_env, ScriptedApiAgent(), seed=s) for s in range(40)]
    assert sum(r.faults for r in chaos) > 0 and 0 < np.mean([r.success for r in chaos]) < 1
    # Idempotency keys keep retried writes safe: every failure is the infrastructure's, never a double write.
    assert all(r.infra_failure for r in chaos if not r.success)
    degraded_env = make_env(faults="degraded")
    degraded = [run_episode(degraded_env, ScriptedApiAgent(), seed=s) for s in range(40)]
    assert 0 < np.mean([r.success for r in degraded]) < 1.0
    assert any(r.infra_failure for r in degraded)
