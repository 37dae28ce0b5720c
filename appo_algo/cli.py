"""The ``appo`` command line: one subcommand per entry of ``COMMANDS``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from appo_algo.cli_types import int_at_least
from appo_algo.sweep_cli import add_report_arguments, add_sweep_arguments, cmd_report, cmd_sweep
from appo_algo.train_cli import add_train_arguments, add_warmstart_arguments, cmd_train, cmd_warmstart


def cmd_envs(args: argparse.Namespace) -> int:
    from appo_envs import ENVIRONMENTS

    width = max(len(k) for k in ENVIRONMENTS)
    for env_id, (_, description) in ENVIRONMENTS.items():
        print(f"{env_id:<{width}}  {description}")
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", action="append", help="env id (repeatable; default: every env with a scripted agent)")
    p.add_argument("--profiles", nargs="+", default=["clean", "flaky", "degraded"])
    p.add_argument("--episodes", type=int_at_least(1), default=40)
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the first episode (then seed+1, ...)")


def cmd_demo(args: argparse.Namespace) -> int:
    from appo_algo.evaluate import evaluate_scripted, format_table
    from appo_envs import resolve_profile
    from appo_envs.agents import SCRIPTED_AGENTS, scripted_agent_for

    env_ids = args.env or list(SCRIPTED_AGENTS)
    for env_id in env_ids:  # every cell's env and profile, before the first cell runs for minutes
        scripted_agent_for(env_id)
    for profile in args.profiles:
        resolve_profile(profile)
    rows = []
    for env_id in env_ids:
        for profile in args.profiles:
            rows.append(evaluate_scripted(env_id, profile, args.episodes, seed=args.seed))
            print(f"  done {env_id} / {profile}", file=sys.stderr, flush=True)
    print(f"Scripted agent, {args.episodes} seeded episodes per cell (env clock is virtual):")
    print(format_table(rows))
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand: what it runs, its one-line help, and the arguments it takes."""

    run: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None


COMMANDS: dict[str, Command] = {
    "envs": Command(cmd_envs, "list the registered environments"),
    "demo": Command(cmd_demo, "evaluate the scripted agents under several fault profiles and print a table",
                    add_demo_arguments),
    "train": Command(cmd_train, "train a policy with APPO or a baseline (appo train --config cfg.yaml --set k=v)",
                     add_train_arguments),
    "warmstart": Command(cmd_warmstart, "build and cache the warm-started tiny model, and report its success rate",
                         add_warmstart_arguments),
    "sweep": Command(cmd_sweep, "run a grid env x fault profile x intensity x selector x seed (local pool or Ray), "
                     "resumable", add_sweep_arguments),
    "report": Command(cmd_report, "write report.html (self-contained) and report.md for a sweep results folder",
                      add_report_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appo", description="Fault-injecting tool environments and the APPO learner.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except ValueError as e:  # bad user input (unknown profile, env, ...): say what, not a traceback
        print(f"appo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
