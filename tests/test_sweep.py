"""appo sweep: grid expansion, spec errors, resume skips finished cells, Ray == local, a train cell's diagnostics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from appo_algo.sweep import SweepSpec, cells_of, read_table, run_sweep
from appo_algo.tiny import SMOKE_ENV_KWARGS, SMOKE_OPTIONS

GRID = {"env": ["appo/CodeExec-v0"], "profile": ["clean", "flaky"], "intensity": [None], "selector": ["appo", "none"],
        "seed": [0, 1]}


def scripted_spec(**grid) -> SweepSpec:
    return SweepSpec.from_dict({"name": "t", "kinds": ["scripted"], "grid": {**GRID, **grid}, "scripted": {"episodes": 3},
                                "workers": 2})


def test_grid_expansion_and_cell_ids():
    spec = SweepSpec.from_dict({"grid": GRID, "kinds": ["train", "scripted"]})
    cells = cells_of(spec)
    train = [c for c in cells if c.kind == "train"]
    scripted = [c for c in cells if c.kind == "scripted"]
    assert len(train) == 1 * 2 * 1 * 2 * 2
    assert len(scripted) == 1 * 2 * 1 * 2  # the selector axis does not apply to the scripted agent
    assert len({c.id for c in cells}) == len(cells)
    assert train[0].id == "train-CodeExec-v0-clean-idefault-appo-s0"
    spec.scripted["envs"] = ["appo/CodeExec-v0", "appo/API-v0"]  # scripted cells may cover more envs
    assert {c.env for c in cells_of(spec) if c.kind == "scripted"} == {"appo/CodeExec-v0", "appo/API-v0"}


@pytest.mark.parametrize("data, message", [
    ({"grid": {**GRID, "seed": []}}, "non-empty list"),
    ({"grid": {**GRID, "colour": [1]}}, "unknown"),
    ({"grid": GRID, "kinds": ["nope"]}, "choose from"),
    ({"grid": GRID, "typo": 1}, "unknown sweep key"),
    ({"grid": GRID, "scripted": {"episode": 3}}, "unknown scripted key"),
    ({"grid": GRID, "workers": -3}, "workers must be a positive integer"),
    ({"grid": GRID, "workers": True}, "workers must be a positive integer"),
])
def test_bad_specs_say_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec.from_dict(data)


def test_unregistered_env_and_backend_are_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="unregistered env"):
        run_sweep(scripted_spec(env=["appo/Nope-v0"]), tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        run_sweep(scripted_spec(), tmp_path, backend="slurm")


def test_resume_skips_finished_cells(tmp_path: Path):
    spec = scripted_spec(seed=[0])
    messages: list[str] = []
    run_sweep(spec, tmp_path, echo=messages.append)
    assert "2 cells, 0 already done, 2 to run" in messages[-1]
    done = sorted((tmp_path / "cells").glob("*/rows.jsonl"))
    stamps = {p: p.stat().st_mtime_ns for p in done}
    run_sweep(spec, tmp_path, echo=messages.append)
    assert "2 cells, 2 already done, 0 to run" in messages[-1]
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # nothing was rerun
    # A cell without DONE (interrupted) is run again; the other one is not touched.
    (done[0].parent / "DONE").unlink()
    run_sweep(spec, tmp_path, echo=messages.append)
    assert "2 cells, 1 already done, 1 to run" in messages[-1]
    assert done[1].stat().st_mtime_ns == stamps[done[1]]
    table = read_table(tmp_path)
    assert len(table) == 2 and {r["profile"] for r in table} == {"clean", "flaky"}


# Wall-clock measurements differ run to run; every other column must match exactly.
TIMING = ("time/", "diag/", "cell_wall_s", "overhead/step_s", "overhead/scoring_s", "overhead/bs_frac",
          "overhead/generate_frac", "overhead/tools_frac", "overhead/update_frac")


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows without timing columns, NaN as None (NaN != NaN would fail an equal table)."""
    nan_free = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return [{k: nan_free(v) for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def small_train(**extra) -> dict:
    return {"model": "tiny", "model_options": SMOKE_OPTIONS, "device": "cpu", "steps": 2, "prompts_per_step": 2,
            "rollouts_per_prompt": 2, "minibatches": 2, "branch": {"branches_per_rollout": 1},
            "max_turn_tokens": 96, "max_episode_tokens": 448, "lr": 3e-4, "env_workers": 2,
            "env_kwargs": {**SMOKE_ENV_KWARGS, "budgets": {"max_turns": 3, "max_observation_chars": 256}}, **extra}


@pytest.mark.slow
def test_ray_backend_gives_the_same_table_as_local(tmp_path: Path):
    pytest.importorskip("ray", reason="the Ray backend needs `pip install ray`")
    # 4 cells: 2 training runs and 2 scripted evaluations (seeds 0 and 1), under hostile faults.
    spec = SweepSpec.from_dict({"name": "t", "kinds": ["train", "scripted"], "workers": 2, "train": small_train(),
                                "grid": {**GRID, "profile": ["hostile"], "selector": ["appo"]}, "scripted": {"episodes": 3},
                                "diagnostics": {"oracle_candidates": 2, "oracle_k": 2, "oracle_rollouts": 1,
                                                "oracle_boot": 20}})
    assert len(cells_of(spec)) == 4
    local = read_table(run_sweep(spec, tmp_path / "local").parent)
    ray_rows = read_table(run_sweep(spec, tmp_path / "ray", backend="ray").parent)
    assert len(local) == 2 * 2 + 2  # one row per train step, one per scripted cell
    assert _comparable(local) == _comparable(ray_rows)


@pytest.mark.slow
def test_train_cell_logs_every_diagnostic(tmp_path: Path):
    spec = SweepSpec.from_dict({
        "name": "train", "kinds": ["train"], "workers": 1,
        "grid": {"env": ["appo/CodeExec-v0"], "profile": ["hostile"], "intensity": [None], "selector": ["appo"],
                 "seed": [0]},
        "train": small_train(),
        "diagnostics": {"oracle_candidates": 3, "oracle_k": 2, "oracle_rollouts": 2, "oracle_boot": 50},
    })
    rows = read_table(run_sweep(spec, tmp_path).parent)
    assert [r["step"] for r in rows] == [1.0, 2.0]
    for r in rows:
        assert r["overhead/extra_forward_passes"] == 0.0
        assert 0.0 <= r["overhead/bs_frac"] < 1.0
        assert math.isclose(sum(r[f"loc/{k}"] for k in ("after_tool", "ws_punct", "tool_args", "answer", "reasoning")),
                            1.0)
        assert r["stab/fault_pairs"] + r["stab/fault_short"] + r["stab/fault_degenerate"] == 4.0
        assert r["stab/rescore_pairs"] + r["stab/rescore_degenerate"] == 4.0
    assert rows[-1]["oracle/positions"] == 6.0 and "oracle/appo_spearman" in rows[-1]
    oracle = json.loads(next((tmp_path / "cells").glob("*/oracle.json")).read_text())
    assert len(oracle["impact"]) == 6


def test_resume_refuses_a_folder_written_by_different_settings(tmp_path: Path):
    run_sweep(scripted_spec(seed=[0], profile=["clean"]), tmp_path)
    grown = scripted_spec(seed=[0, 1], profile=["clean"])  # a larger grid resumes: only the new cell runs
    messages: list[str] = []
    run_sweep(grown, tmp_path, echo=messages.append)
    assert "2 cells, 1 already done, 1 to run" in messages[-1]
    changed = scripted_spec(seed=[0], profile=["clean"])
    changed.scripted = {"episodes": 5}
    with pytest.raises(ValueError, match="different settings \\(scripted\\)"):
        run_sweep(changed, tmp_path)
