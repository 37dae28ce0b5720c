"""``appo sweep``: the grid env × fault profile × intensity × selector × seed, on a local process pool or Ray.

A sweep is a YAML file (``SweepSpec``); every grid point of every cell kind is one cell:

- ``train``: an ``APPOTrainer`` run with ``DiagnosticsCallback`` (one row per training step);
- ``scripted``: the scripted agent evaluated over seeded episodes (evaluation only, one row;
  the selector axis does not apply and is collapsed).

Each cell writes its raw logs under ``RESULTS/cells/<cell id>/`` and, when it finished,
``rows.jsonl`` and a ``DONE`` marker; a rerun skips cells with ``DONE`` (resume). The tidy
table ``RESULTS/results.parquet`` (or ``results.csv`` without pyarrow) has one row per cell
and step, the cell's axes as columns. Backends (``BACKENDS``): ``local`` (process pool,
default) and ``ray`` (one task per cell with the declared ``resources``; ``--address`` joins
an existing cluster).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from appo_envs.yaml_file import load_yaml_mapping

GRID_AXES = ("env", "profile", "intensity", "selector", "seed")
CELL_COLUMNS = ("cell", "kind", *GRID_AXES)


@dataclass
class SweepSpec:
    """A sweep as plain data (see ``configs/demo_sweep.yaml``).

    grid:        lists per axis: env ids, fault profile presets, intensities (null = the
                 profile's own rates), selectors, seeds.
    kinds:       cell kinds to run (``CELL_RUNNERS``).
    train:       ``TrainConfig`` fields shared by every train cell (the grid sets env_id,
                 faults, intensity, selector, seed and log_dir).
    env_kwargs:  per env id, ``env_kwargs`` of its train cells and scripted episodes.
    diagnostics: ``DiagnosticsConfig`` fields; ``oracle_step`` defaults to the last step.
    oracle_selectors: train cells of these selectors run the oracle (it scores every criterion
                 whatever the cell's selector, so one selector's cells suffice); null: all.
    scripted:    ``episodes`` per scripted cell; ``envs``: env ids of the scripted cells
                 (default: the grid's), e.g. every env while training runs on a few.
    resources:   what one cell needs (Ray: ``num_cpus``, ``num_gpus``).
    workers:     local pool size (default: CPU count).
    """

    name: str = "sweep"
    grid: dict[str, list[Any]] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=lambda: ["train"])
    train: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    oracle_selectors: list[str] | None = None
    scripted: dict[str, Any] = field(default_factory=lambda: {"episodes": 20})
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})
    workers: int | None = None

    def __post_init__(self) -> None:
        missing = [a for a in GRID_AXES if not self.grid.get(a)]
        unknown = set(self.grid) - set(GRID_AXES)
        if missing or unknown:
            raise ValueError(f"sweep grid needs a non-empty list for each of {list(GRID_AXES)}; "
                             f"missing {missing}, unknown {sorted(unknown)}")
        bad = [k for k in self.kinds if k not in CELL_RUNNERS]
        if bad or not self.kinds:
            raise ValueError(f"sweep kinds {bad or self.kinds} unknown; choose from {sorted(CELL_RUNNERS)}")
        unknown_scripted = set(self.scripted) - {"episodes", "envs"}
        if unknown_scripted:
            raise ValueError(f"unknown scripted key(s) {sorted(unknown_scripted)}; allowed: ['envs', 'episodes']")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"sweep workers must be a positive integer (or null: CPU count), got {self.workers!r}")
        for key in ("num_cpus", "num_gpus"):
            self.resources.setdefault(key, 1 if key == "num_cpus" else 0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{k: v for k, v in data.items()})

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        return cls.from_dict(load_yaml_mapping(path, "sweep file"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Cell:
    """One grid point of one kind."""

    kind: str
    env: str
    profile: str
    intensity: float | None
    selector: str
    seed: int

    @property
    def id(self) -> str:
        env = self.env.split("/")[-1]
        inten = "default" if self.intensity is None else f"{float(self.intensity):g}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.kind}-{env}-{self.profile}-i{inten}-{self.selector}-s{self.seed}")

    def columns(self) -> dict[str, Any]:
        return {"cell": self.id, **dataclasses.asdict(self)}


def _train_cells(spec: SweepSpec) -> list[Cell]:
    g = spec.grid
    return [Cell("train", *p) for p in itertools.product(g["env"], g["profile"], g["intensity"], g["selector"], g["seed"])]


def _scripted_cells(spec: SweepSpec) -> list[Cell]:
    g = spec.grid
    envs = spec.scripted.get("envs") or g["env"]
    return [Cell("scripted", e, p, i, "scripted", s) for e, p, i, s in
            itertools.product(envs, g["profile"], g["intensity"], g["seed"])]


def cells_of(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, kinds in spec order."""
    return [c for kind in spec.kinds for c in CELL_GRIDS[kind](spec)]


# --- cell runners (run inside a worker process or a Ray task) -----------------------------------


def _env_kwargs(spec: SweepSpec, env_id: str) -> dict[str, Any] | None:
    return spec.env_kwargs.get(env_id)


def run_train_cell(cell: Cell, spec: SweepSpec, cell_dir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train with the cell's selector under its fault profile; one row per step with the diagnostics."""
    from appo_algo.config import TrainConfig
    from appo_algo.diagnostics import DiagnosticsCallback, DiagnosticsConfig
    from appo_algo.trainer import APPOTrainer

    data = {**spec.train, "env_id": cell.env, "faults": cell.profile, "intensity": cell.intensity,
            "selector": cell.selector, "seed": int(cell.seed), "log_dir": str(cell_dir / "train"),
            "progress": False, "tensorboard": False}
    kwargs = _env_kwargs(spec, cell.env)
    if kwargs is not None:
        data["env_kwargs"] = kwargs
    cfg = TrainConfig.from_dict(data)
    runs_oracle = spec.oracle_selectors is None or cell.selector in spec.oracle_selectors
    diag = {**spec.diagnostics, "oracle_step": spec.diagnostics.get("oracle_step", cfg.steps - 1) if runs_oracle else None}
    callback = DiagnosticsCallback(DiagnosticsConfig(**diag))
    trainer = APPOTrainer(cfg, log=log)
    try:
        trainer.learn(cfg.steps, callback=callback)
    finally:
        trainer.close()
    if callback.oracle is not None:
        (cell_dir / "oracle.json").write_text(json.dumps(callback.oracle))
    return callback.rows


def run_scripted_cell(cell: Cell, spec: SweepSpec, cell_dir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The scripted agent over ``scripted.episodes`` seeded episodes (seeds from 1000·seed)."""
    from appo_algo.evaluate import evaluate_scripted

    kwargs = dict(_env_kwargs(spec, cell.env) or {})
    if cell.intensity is not None:
        kwargs["intensity"] = cell.intensity
    episodes = int(spec.scripted.get("episodes", 20))
    row = evaluate_scripted(cell.env, cell.profile, episodes, seed=1000 * int(cell.seed), **kwargs)
    log(f"scripted {cell.id}: success {row.success_rate:.3f}")
    return [{"step": 0, "eval/episodes": float(episodes), "eval/success_rate": row.success_rate,
             "eval/tool_calls_mean": row.mean_tool_calls, "eval/clock_s_mean": row.mean_clock_s,
             "eval/faults_per_episode": row.faults / episodes, "eval/infra_failure_frac": row.infra_failures / episodes}]


CELL_GRIDS: dict[str, Callable[[SweepSpec], list[Cell]]] = {"train": _train_cells, "scripted": _scripted_cells}
CELL_RUNNERS: dict[str, Callable[[Cell, SweepSpec, Path, Callable[[str], None]], list[dict[str, Any]]]] = {
    "train": run_train_cell,
    "scripted": run_scripted_cell,
}


def run_cell(cell: Cell, spec: SweepSpec, results_dir: str) -> str:
    """Run one cell into ``results_dir/cells/<id>/`` (a fresh folder), write rows.jsonl then DONE; return the id."""
    cell_dir = Path(results_dir) / "cells" / cell.id
    shutil.rmtree(cell_dir, ignore_errors=True)  # an unfinished earlier attempt starts over
    cell_dir.mkdir(parents=True)
    (cell_dir / "cell.json").write_text(json.dumps(cell.columns()))
    t0 = time.perf_counter()
    with (cell_dir / "log.txt").open("w") as logf, contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
        # Library progress bars and prints of the cell go to its log, not over the sweep's progress bar.
        rows = CELL_RUNNERS[cell.kind](cell, spec, cell_dir, lambda s: print(s, file=logf, flush=True))
    wall = time.perf_counter() - t0
    tmp = cell_dir / "rows.jsonl.tmp"
    tmp.write_text("".join(json.dumps({**cell.columns(), "cell_wall_s": wall, **r}) + "\n" for r in rows))
    os.replace(tmp, cell_dir / "rows.jsonl")
    (cell_dir / "DONE").write_text(f"{wall:.3f}\n")
    return cell.id


def is_done(results_dir: Path, cell: Cell) -> bool:
    return (results_dir / "cells" / cell.id / "DONE").exists()


# --- backends -----------------------------------------------------------------------------------


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="cells", unit="cell", file=sys.stderr, dynamic_ncols=True)


def run_local(cells: list[Cell], spec: SweepSpec, results_dir: Path, address: str | None) -> None:
    """A process pool of ``spec.workers`` (default: CPU count) workers, one cell per task."""
    if address is not None:
        raise ValueError("--address applies to --backend ray only")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = spec.workers or os.cpu_count() or 1
    _prepare_model(cells, spec)
    ctx = multiprocessing.get_context("spawn")  # torch and thread pools do not survive fork safely
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, _progress(len(cells)) as bar:
        futures = {pool.submit(run_cell, c, spec, str(results_dir)): c for c in cells}
        for fut in as_completed(futures):
            cell = futures[fut]
            try:
                fut.result()
            except Exception as e:
                pool.shutdown(cancel_futures=True)
                raise RuntimeError(f"cell {cell.id} failed: {e!r}; see {results_dir / 'cells' / cell.id / 'log.txt'}; "
                                   "fix and rerun the same command to resume") from e
            bar.update(1)


def _prepare_model(cells: list[Cell], spec: SweepSpec) -> None:
    """Build and cache the train cells' model once, so pool workers do not all build it at the same time."""
    if len(cells) > 1 and any(c.kind == "train" for c in cells) and spec.train.get("model", "tiny") == "tiny":
        from appo_algo.tiny import TinySpec, build_tiny

        build_tiny(TinySpec.from_options(spec.train.get("model_options")), device="cpu", log=lambda s: print(s, file=sys.stderr))


def run_ray(cells: list[Cell], spec: SweepSpec, results_dir: Path, address: str | None) -> None:
    """One Ray task per cell with ``spec.resources``; a local Ray instance unless ``address`` names a cluster.

    The results folder must be on storage every node sees (a shared filesystem) when the
    cluster has more than one machine: cells write there directly.
    """
    try:
        import ray
    except ImportError as e:
        raise ValueError("--backend ray needs Ray: pip install 'ray>=2.9'") from e
    started = not ray.is_initialized()
    if started:
        init = {"address": address} if address else {"num_cpus": spec.workers or os.cpu_count() or 1}
        ray.init(include_dashboard=False, log_to_driver=False, **init)
    try:
        task = ray.remote(num_cpus=spec.resources["num_cpus"], num_gpus=spec.resources["num_gpus"])(run_cell)
        pending = {task.remote(c, spec, str(results_dir.resolve())): c for c in cells}
        with _progress(len(cells)) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                try:
                    ray.get(done[0])
                except Exception as e:
                    for ref in pending:
                        ray.cancel(ref)
                    raise RuntimeError(f"cell {cell.id} failed on Ray: {e!r}; rerun the same command to resume") from e
                bar.update(1)
    finally:
        if started:
            ray.shutdown()


BACKENDS: dict[str, Callable[[list[Cell], SweepSpec, Path, str | None], None]] = {"local": run_local, "ray": run_ray}


# --- the table ----------------------------------------------------------------------------------


def collect_rows(results_dir: Path) -> list[dict[str, Any]]:
    """Rows of every finished cell, ordered by cell id then step."""
    rows = []
    for done in sorted((results_dir / "cells").glob("*/DONE")):
        rows += [json.loads(line) for line in (done.parent / "rows.jsonl").read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["cell"], r.get("step", 0)))


def write_table(rows: list[dict[str, Any]], results_dir: Path) -> Path:
    """``results.parquet`` when pyarrow is installed, else ``results.csv``; columns: cell axes, step, metrics."""
    columns = list(CELL_COLUMNS) + sorted({k for r in rows for k in r} - set(CELL_COLUMNS))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = results_dir / "results.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)
        return path
    path = results_dir / "results.parquet"
    table = pa.table({c: [_cell_value(r.get(c)) for r in rows] for c in columns})
    pq.write_table(table, path)
    (results_dir / "results.csv").unlink(missing_ok=True)
    return path


def _cell_value(v: Any) -> Any:
    """Parquet columns need one type: numbers stay numbers, everything else (str, None) passes as is."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def read_table(results_dir: str | Path) -> list[dict[str, Any]]:
    """The tidy table as a list of row dicts (from Parquet or CSV, whichever the sweep wrote)."""
    results_dir = Path(results_dir)
    if (results_dir / "results.parquet").exists():
        import pyarrow.parquet as pq

        return pq.read_table(results_dir / "results.parquet").to_pylist()
    if (results_dir / "results.csv").exists():
        with (results_dir / "results.csv").open() as f:
            return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
    raise ValueError(f"{results_dir} has no results.parquet or results.csv: run `appo sweep` into it first")


def _parse(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def run_sweep(spec: SweepSpec, results_dir: str | Path, backend: str = "local", address: str | None = None,
              echo: Callable[[str], None] = print) -> Path:
    """Run the cells not yet done, then (re)write the tidy table; returns its path."""
    run_backend = backend_runner(backend)
    _check_envs(spec)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    _check_same_spec(spec, results_dir)
    (results_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    cells = cells_of(spec)
    todo = [c for c in cells if not is_done(results_dir, c)]
    echo(f"sweep {spec.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
         f"on backend {backend}")
    if todo:
        run_backend(todo, spec, results_dir, address)
    return write_table(collect_rows(results_dir), results_dir)


def backend_runner(backend: str) -> Callable[[list[Cell], SweepSpec, Path, str | None], None]:
    """The function of ``BACKENDS`` named ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend]


def _check_same_spec(spec: SweepSpec, results_dir: Path) -> None:
    """Resuming into a folder written by a different spec would mix results: refuse (the grid may grow, nothing else)."""
    path = results_dir / "sweep.yaml"
    if not path.exists():
        return
    old = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in ("grid", "workers")}
    new = {k: v for k, v in spec.to_dict().items() if k not in ("grid", "workers")}
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{results_dir} holds a sweep with different settings ({', '.join(changed)}); finished cells "
                         "would not match the new ones. Use another --out, or delete the folder to start over.")


def _check_envs(spec: SweepSpec) -> None:
    from appo_envs import ENVIRONMENTS

    named = [*spec.grid["env"], *(spec.scripted.get("envs") or [])]
    unknown = [e for e in named if e not in ENVIRONMENTS]
    if unknown:
        raise ValueError(f"sweep names unregistered env(s) {unknown}; registered: {sorted(ENVIRONMENTS)}")


def cells_table(cells: Iterable[Cell]) -> str:
    """One line per cell (for --dry-run)."""
    return "\n".join(c.id for c in cells)
