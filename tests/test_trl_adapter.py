"""The TRL adapter: tool schemas TRL derives from it, env turns behind each method, and 3 real GRPOTrainer steps."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.utils import get_json_schema

import appo_envs
from appo_algo.trl_adapter import ANSWER_TOOL, TRLToolEnv, environment_factory, seed_dataset

ROOT = Path(__file__).resolve().parents[1]


def _tool_names(cls):
    """The methods TRL's GRPOTrainer turns into tools (its own rule: public functions on the class)."""
    import inspect

    return sorted(n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
                  if n not in ("reset", "get_reward") and not n.startswith("_"))


@pytest.mark.parametrize("env_id", sorted(appo_envs.ENVIRONMENTS))
def test_schemas_trl_derives_match_the_env_tools(env_id):
    cls = environment_factory(env_id)
    env = cls()
    try:
        env.reset(seed=0)
        tools = {name: tool for name, tool in env._env.unwrapped.tools.items()}
        assert _tool_names(cls) == sorted([*tools, ANSWER_TOOL])
        for name, tool in tools.items():
            derived = get_json_schema(getattr(env, name))["function"]
            assert derived["name"] == name
            params = derived["parameters"]
            assert set(params["properties"]) == set(tool.parameters["properties"])
            assert sorted(params.get("required", [])) == sorted(tool.parameters.get("required", []))
            for arg, prop in tool.parameters["properties"].items():
                assert params["properties"][arg]["type"] == prop["type"]
                assert params["properties"][arg].get("enum") == prop.get("enum")
    finally:
        env._close()


def test_methods_are_env_turns_and_reward_comes_from_the_env():
    cls = environment_factory("appo/CodeExec-v0", faults="clean", difficulty="easy")
    env = cls()
    try:
        question = env.reset(seed=5)
        assert ANSWER_TOOL in question
        assert env.python(code="print('日本語', 6*7)") == "[ok] 日本語 42"
        assert env.get_reward() == 0.0
        expected = env._env.unwrapped.task_spec()["answer"]
        env.submit_answer(answer=expected)
        assert env.get_reward() == 1.0
        env.reset(seed=5)  # reuse, as TRL's pool does
        assert env.get_reward() == 0.0
        assert "Invalid call" in env.python(cod="print(1)")  # bad arguments reach the env, which explains them
        env.submit_answer(answer="not it")
        assert env.get_reward() == 0.0
    finally:
        env._close()


def test_faults_reach_the_model_and_a_group_shares_its_task():
    cls = environment_factory("appo/CodeExec-v0", faults="degraded", difficulty="easy")
    a, b = cls(), cls()
    try:
        seen = set()
        for seed in range(12):
            qa, qb = a.reset(seed=seed), b.reset(seed=seed)
            assert qa == qb
            ra, rb = a.python(code="print(1)"), b.python(code="print(1)")
            assert ra == rb  # same seed: same fault for the same call (shared pairing)
            seen.add(ra.split("]")[0])
        assert {"[ok", "[error"} <= seen or {"[ok", "[timeout"} <= seen
    finally:
        a._close()
        b._close()


def test_seed_dataset_rows_and_a_row_without_seed_is_refused():
    ds = seed_dataset(3, first_seed=10)
    assert ds["seed"] == [10, 11, 12]
    assert ds[0]["prompt"] == [{"role": "user", "content": ""}]
    env = environment_factory("appo/CodeExec-v0")()
    try:
        with pytest.raises(ValueError, match="seed_dataset"):
            env.reset(prompt=[{"role": "user", "content": ""}])  # what TRL passes without a train dataset
    finally:
        env._close()


def test_base_class_exposes_only_the_answer_tool():
    assert _tool_names(TRLToolEnv) == [ANSWER_TOOL]


@pytest.mark.slow
def test_trl_grpo_script_runs_three_steps_with_tool_calls(tmp_path):
    out = tmp_path / "trl.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "trl_grpo.py"), "--steps", "3", "--json", str(out)],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                   timeout=900)
    result = json.loads(out.read_text())
    assert result["global_step"] == 3
    assert len(result["history"]) == 3
    assert max(h["tools/call_frequency"] for h in result["history"]) > 0  # TRL's tool loop called the env
