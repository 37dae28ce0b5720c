"""APPOTrainer end to end on CPU: a 30-step APPO run, resume == uninterrupted, every selector, hostile faults."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from appo_algo.callbacks import Callback
from appo_algo.config import TrainConfig
from appo_algo.tiny import SMOKE_ENV_KWARGS, SMOKE_OPTIONS
from appo_algo.trainer import APPOTrainer

SMALL = {
    "model": "tiny", "model_options": SMOKE_OPTIONS, "device": "cpu", "prompts_per_step": 2,
    "rollouts_per_prompt": 2, "minibatches": 2, "branch": {"branches_per_rollout": 1},
    "max_turn_tokens": 96, "max_episode_tokens": 448, "lr": 3e-4, "progress": False, "env_workers": 2,
    "env_kwargs": {**SMOKE_ENV_KWARGS, "budgets": {"max_turns": 3, "max_observation_chars": 256}},
}


def config(tmp_path: Path, name: str, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, "log_dir": str(tmp_path / name), **overrides})


def rows(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def assert_finite(metrics: list[dict]) -> None:
    bad = {(r["step"], k): v for r in metrics for k, v in r.items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics: {bad}"


def without_time(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("time/")}


class Recorder(Callback):
    """Counts hook calls, to check the phase order the trainer promises."""

    def __init__(self):
        self.calls: list[str] = []

    def on_rollout_start(self, trainer):
        self.calls.append("rollout_start")

    def on_rollout_end(self, trainer, episodes):
        self.calls.append("rollout_end")

    def on_branch(self, trainer, minibatch, branches, metrics):
        self.calls.append(f"branch{minibatch}")

    def on_update(self, trainer, minibatch, metrics):
        self.calls.append(f"update{minibatch}")

    def on_step(self, trainer, metrics):
        self.calls.append("step")
        return True


@pytest.mark.slow
def test_appo_30_steps_codeexec_flaky_cpu(tmp_path):
    cfg = config(tmp_path, "run", steps=30, selector="appo", advantage="appo", faults="flaky")
    recorder = Recorder()
    trainer = APPOTrainer(cfg)
    try:
        trainer.learn(callback=recorder)
    finally:
        trainer.close()
    metrics = rows(cfg_dir := Path(cfg.log_dir))
    assert [r["step"] for r in metrics] == list(range(1, 31))
    assert_finite(metrics)
    assert (cfg_dir / "checkpoint.pt").exists() and (cfg_dir / "metrics.csv").exists()
    assert any((cfg_dir / "tb").iterdir())
    assert recorder.calls[:6] == ["rollout_start", "rollout_end", "branch0", "update0", "branch1", "update1"]
    # Mini-batch 0 branches with π_θ = π_old: Ω is degenerate there by construction, and it is reported.
    assert all(r["branch/first_minibatch_degenerate_frac"] == 1.0 for r in metrics)
    assert sum(r["branch/n"] for r in metrics) > 0
    # Whenever some prompt group of initial rollouts had reward variance, the update had a gradient.
    for r in metrics:
        assert r["adv/zero_std_frac"] == 1.0 or r["train/grad_norm"] > 0.0, r


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = config(tmp_path, "whole", steps=4, checkpoint_every=100)
    t = APPOTrainer(whole)
    t.learn()
    t.close()
    part = config(tmp_path, "part", steps=4, checkpoint_every=100)
    t = APPOTrainer(part)
    t.learn(total_steps=2)  # saves at its last step
    t.close()
    t = APPOTrainer.resume(part.log_dir)
    assert t.step == 2
    t.learn()
    t.close()
    a, b = rows(Path(whole.log_dir)), rows(Path(part.log_dir))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [without_time(r) for r in a] == [without_time(r) for r in b]


@pytest.mark.parametrize("selector", ["none", "random", "entropy", "tool_boundary", "appo"])
def test_every_selector_runs_in_the_same_loop(tmp_path, selector):
    arpo = selector == "tool_boundary"  # ARPO: GRPO advantages over initial rollouts and branches, all trained
    cfg = config(tmp_path, selector, steps=2, selector=selector, advantage="grpo" if selector in ("none", "tool_boundary")
                 else "appo", train_rows="all" if arpo else "initial", tensorboard=False)
    t = APPOTrainer(cfg)
    t.learn()
    t.close()
    metrics = rows(Path(cfg.log_dir))
    assert_finite(metrics)
    if selector == "none":
        assert all(r["branch/n"] == 0 for r in metrics)
    else:
        assert sum(r["branch/n"] for r in metrics) > 0
        assert all(r["branch/scoring_forward_passes"] == 0 for r in metrics)
    initial_rows = cfg.prompts_per_step * cfg.rollouts_per_prompt / cfg.minibatches
    trained = [r["train/rows"] for r in metrics]
    assert (max(trained) > initial_rows) if arpo else all(x == initial_rows for x in trained)


def test_code_reading_of_omega_branches_from_same_weight_logprobs(tmp_path):
    cfg = config(tmp_path, "code", steps=1, omega_reading="code", branch={"branches_per_rollout": 1, "gamma": 1.0},
                 tensorboard=False)
    t = APPOTrainer(cfg)
    t.learn()
    t.close()
    (row,) = rows(Path(cfg.log_dir))
    assert_finite([row])
    assert row["branch/n"] > 0 and row["branch/scoring_forward_passes"] == 0


HOSTILE = {
    "all_tools_fail": {"default": {"error_rate": 1.0, "error_kinds": {"exception": 1, "timeout": 1}}},
    "all_users_abort": {"patience": {"base_hazard": 50.0}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("mask_infra", [False, True])
def test_learner_survives_hostile_faults(tmp_path, case, mask_infra):
    cfg = config(tmp_path, f"{case}-{mask_infra}", steps=2, faults=HOSTILE[case], mask_infra_failures=mask_infra,
                 tensorboard=False, ppo={"aggregation": "token_mean", "dual_clip": 3.0, "kl_coef": 0.001})
    t = APPOTrainer(cfg)
    t.learn()
    t.close()
    metrics = rows(Path(cfg.log_dir))
    assert_finite(metrics)
    if case == "all_users_abort":
        # Every episode that does not answer in its first turn is aborted after it, with reward 0.
        for r in metrics:
            aborted = r.get("rollout/end_user_abort_frac", 0.0)
            assert aborted + r.get("rollout/end_answer_frac", 0.0) == 1.0 and aborted >= 0.5
            assert r["faults/infra_failure_frac"] == aborted
            if mask_infra:
                assert r["train/masked_infra_frac"] == aborted
            if r["rollout/reward_mean"] == 0.0:  # all-equal rewards: zero advantages, no update, no NaN
                assert r["train/grad_norm"] == 0.0
                assert mask_infra or r["adv/zero_std_frac"] == 1.0  # masked episodes form no group at all
    else:
        assert all(r["rollout/success_rate"] == 0.0 for r in metrics)
        calls = [r for r in metrics if r["rollout/tool_calls_mean"] > 0]
        assert calls, "the model made no tool call, so the test did not exercise failing tools"
        assert all(r["rollout/tool_error_frac"] == 1.0 for r in calls)


def test_config_overrides_and_errors(tmp_path):
    cfg = TrainConfig.load(None, ["selector=entropy", "branch.clip=[0.8, 1.2]", "adv.dual_group=code", "steps=7"])
    assert cfg.selector == "entropy" and cfg.branch.clip == (0.8, 1.2) and cfg.adv.dual_group == "code"
    path = tmp_path / "c.yaml"
    cfg.save(path)
    assert TrainConfig.load(path) == cfg
    with pytest.raises(ValueError, match="unknown selector"):
        TrainConfig.load(None, ["selector=nope"])
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.load(None, ["branch.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig.load(None, ["selector"])
    with pytest.raises(ValueError, match="branch.gamma=1"):
        TrainConfig.load(None, ["omega_reading=code"])
    with pytest.raises(ValueError, match="advantage='grpo'"):
        TrainConfig.load(None, ["train_rows=all", "advantage=appo"])
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.load(None, ["branch.clip=[0.8"])
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- selector: appo\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        TrainConfig.load(tmp_path / "list.yaml")
    pooled = TrainConfig.load(None, ["rollouts_per_prompt=4", "branch.budget_per_prompt=6", "branch.selection=pooled"])
    assert pooled.group_size_m == 10 and TrainConfig.load(None, ["rollouts_per_prompt=4"]).group_size_m == 4 * (
        1 + TrainConfig().branch.branches_per_rollout)


def test_cli_train_resume_and_warmstart(tmp_path, capsys):
    from appo_algo.cli import main

    log_dir = tmp_path / "cli"
    cfg = config(tmp_path, "cli", steps=1, tensorboard=False)
    cfg.save(tmp_path / "cfg.yaml")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--set", f"log_dir={log_dir}"]) == 0
    assert main(["train", "--resume", str(log_dir), "--set", "steps=2"]) == 0
    assert [r["step"] for r in rows(log_dir)] == [1, 2]
    assert main(["warmstart", "--config", str(tmp_path / "cfg.yaml"), "--eval-episodes", "2"]) == 0
    assert '"warmstart_eval"' in capsys.readouterr().out
    assert main(["train", "--set", "selector=nope"]) == 2  # bad input: a message, not a traceback
    (tmp_path / "broken.yaml").write_text("grid: [1\n")
    assert main(["sweep", "--config", str(tmp_path / "broken.yaml"), "--out", str(tmp_path / "sw")]) == 2
    assert main(["sweep", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "sw")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_train_diagnostics_are_logged_with_the_metrics(tmp_path):
    from appo_algo.cli import main

    cfg = config(tmp_path, "diag", steps=1, tensorboard=False, faults="flaky")
    cfg.save(tmp_path / "cfg.yaml")
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--diagnostics"]) == 0
    (row,) = rows(tmp_path / "diag")
    assert row["overhead/extra_forward_passes"] == 0.0 and 0.0 <= row["overhead/bs_frac"] < 1.0
    assert {"loc/after_tool", "stab/omega_degenerate_frac", "stab/rescore_pairs", "stab/fault_pairs",
            "diag/seconds"} <= set(row)
    assert_finite([{k: v for k, v in row.items() if not k.startswith("stab/")}])
