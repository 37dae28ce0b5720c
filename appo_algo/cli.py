"""The ``appo`` command line: ``appo envs``, ``appo demo``."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from appo_algo.sweep_cli import add_report_arguments, add_sweep_arguments, cmd_report, cmd_sweep
from appo_algo.train_cli import add_train_arguments, add_warmstart_arguments, cmd_train, cmd_warmstart


def cmd_envs(args: argparse.Namespace) -> int:
    from appo_envs import ENVIRONMENTS

    width = max(len(k) for k in ENVIRONMENTS)
    for env_id, (_, description) in ENVIRONMENTS.items():
        print(f"{env_id:<{width}}  {description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from appo_algo.evaluate import evaluate_scripted, format_table
    from appo_envs.agents import SCRIPTED_AGENTS

    env_ids = args.env or list(SCRIPTED_AGENTS)
    rows = []
    for env_id in env_ids:
        for profile in args.profiles:
            rows.append(evaluate_scripted(env_id, profile, args.episodes, seed=args.seed))
            print(f"  done {env_id} / {profile}", file=sys.stderr, flush=True)
    print(f"Scripted agent, {args.episodes} seeded episodes per cell (env clock is virtual):")
    print(format_table(rows))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "envs": (cmd_envs, "list the registered environments"),
    "demo": (cmd_demo, "evaluate the scripted agents under several fault profiles and print a table"),
    "train": (cmd_train, "train a policy with APPO or a baseline (appo train --config cfg.yaml --set k=v)"),
    "warmstart": (cmd_warmstart, "build and cache the warm-started tiny model, and report its success rate"),
    "sweep": (cmd_sweep, "run a grid env x fault profile x intensity x selector x seed (local pool or Ray), resumable"),
    "report": (cmd_report, "write report.html (self-contained) and report.md for a sweep results folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "demo":
            p.add_argument("--env", action="append", help="env id (repeatable; default: every env with a scripted agent)")
            p.add_argument("--profiles", nargs="+", default=["clean", "flaky", "degraded"])
            p.add_argument("--episodes", type=int, default=40)
            p.add_argument("--seed", type=int, default=0)
        elif name == "train":
            add_train_arguments(p)
        elif name == "warmstart":
            add_warmstart_arguments(p)
        elif name == "sweep":
            add_sweep_arguments(p)
        elif name == "report":
            add_report_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except ValueError as e:  # bad user input (unknown profile, env, ...): say what, not a traceback
        print(f"appo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
