"""The ``appo`` command line refuses bad input up front: a one-line error and exit status 2, before any work."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from appo_algo.cli import main
from appo_algo.config import TrainConfig

SWEEP = str(Path(__file__).parents[1] / "configs" / "demo_sweep.yaml")


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Loading a model, training or playing an episode would mean the input was checked too late."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the input was validated")

    monkeypatch.setattr("appo_algo.trainer.APPOTrainer", refuse)
    monkeypatch.setattr("appo_algo.presets.load_policy", refuse)
    monkeypatch.setattr("appo_algo.evaluate.evaluate_scripted", refuse)
    monkeypatch.setattr("appo_algo.sweep.run_sweep", refuse)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``appo ARGV`` run in-process (argparse errors exit, command errors return)."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("faults=flakey", "unknown fault profile 'flakey'"),
    ("intensity=2", r"intensity must be a finite number in \[0, 1\], got 2"),
    ("env_id=appo/Nope-v0", "unknown env_id 'appo/Nope-v0'"),
    ("env_id=CartPole-v1", "unknown env_id 'CartPole-v1'"),
])
@pytest.mark.parametrize("command", ["train", "warmstart"])
def test_train_config_errors_come_before_any_model_work(capsys, command, override, message):
    code, err = run_cli(capsys, command, "--set", override)
    assert code == 2
    assert err.startswith(f"appo {command}: error: ")
    assert re.search(message, err), err


def test_train_config_checks_faults_and_env_when_built():
    with pytest.raises(ValueError, match="choose one of"):
        TrainConfig(env_id="appo/Nope-v0")
    with pytest.raises(ValueError, match="unknown fault profile"):
        TrainConfig(faults="flakey")
    assert TrainConfig(faults={"default": {"error_rate": 0.5}}, intensity=0.5).intensity == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--env", "appo/Nope-v0"], "no scripted agent for 'appo/Nope-v0'"),
    (["--env", "CartPole-v1"], "no scripted agent for 'CartPole-v1'"),
    (["--profiles", "clean", "flakey"], "unknown fault profile 'flakey'"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["--episodes", "0"], "argument --episodes: must be an integer >= 1, got '0'"),
    (["--episodes", "-1"], "argument --episodes: must be an integer >= 1, got '-1'"),
    (["--episodes", "many"], "argument --episodes: must be an integer >= 1, got 'many'"),
])
def test_demo_refuses_bad_input(capsys, argv, message):
    code, err = run_cli(capsys, "demo", *argv)
    assert code == 2
    assert f"appo demo: error: {message}" in err


@pytest.mark.parametrize("argv, message", [
    (["--workers", "-3"], "argument --workers: must be an integer >= 1, got '-3'"),
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got '0'"),
    (["--backend", "bogus"], "unknown backend 'bogus'; choose one of ['local', 'ray']"),
])
def test_sweep_refuses_bad_options_even_on_a_dry_run(capsys, argv, message):
    code, err = run_cli(capsys, "sweep", "--config", SWEEP, "--dry-run", *argv)
    assert code == 2
    assert f"appo sweep: error: {message}" in err


def test_sweep_dry_run_with_good_options_lists_the_cells(capsys):
    assert main(["sweep", "--config", SWEEP, "--dry-run", "--workers", "2", "--backend", "ray"]) == 0
    assert "train-CodeExec-v0-clean-idefault-appo-s0" in capsys.readouterr().out
