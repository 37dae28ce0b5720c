"""``appo sweep`` and ``appo report``: argument definitions and command functions (registered in ``appo_algo.cli``)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from appo_algo.cli_types import int_at_least


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="sweep YAML (see configs/demo_sweep.yaml)")
    p.add_argument("--out", default=None, help="results folder (default: results/<sweep name>); rerun to resume")
    p.add_argument("--backend", default="local", help="local (process pool, default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. ray://head:10001); default: local Ray")
    p.add_argument("--workers", type=int_at_least(1), default=None,
                   help="local pool size / local Ray CPUs (default: CPU count)")
    p.add_argument("--report", action="store_true", help="write report.html and report.md when the sweep is done")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")


def cmd_sweep(args: argparse.Namespace) -> int:
    from appo_algo.sweep import SweepSpec, backend_runner, cells_of, cells_table, run_sweep

    backend_runner(args.backend)  # a typo fails now, --dry-run included
    spec = SweepSpec.load(args.config)
    if args.workers is not None:
        spec.workers = args.workers
    if args.dry_run:
        print(cells_table(cells_of(spec)))
        return 0
    out = Path(args.out or Path("results") / spec.name)
    t0 = time.perf_counter()
    table = run_sweep(spec, out, backend=args.backend, address=args.address)
    print(f"results table: {table}  ({time.perf_counter() - t0:.0f} s)")
    if args.report:
        return _report(out)
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", help="a folder written by `appo sweep`")


def cmd_report(args: argparse.Namespace) -> int:
    return _report(Path(args.results_dir))


def _report(results_dir: Path) -> int:
    from appo_algo.report import summary_tables, write_report
    from appo_algo.sweep import read_table

    html_path, md_path = write_report(results_dir)
    print(summary_tables(read_table(results_dir)))
    print(f"\nreport: {html_path}\nsummary: {md_path}")
    return 0
