"""``appo train`` and ``appo warmstart``: argument definitions and commands (heavy imports stay inside)."""
from __future__ import annotations

import argparse
import json

from appo_algo.cli_types import int_at_least


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of TrainConfig fields (default: built-in APPO defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set selector=entropy --set 'branch.clip=[0.8,1.2]' (repeatable; quote brackets in zsh)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", metavar="DIR", help="continue the run whose log_dir is DIR (its config.yaml + --set)")
    p.add_argument("--diagnostics", action="store_true",
                   help="log the Branching-Score diagnostics every step (overhead/ loc/ stab/; costs a clean replay "
                        "of each step's rollouts and two scoring passes)")


def add_warmstart_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--eval-episodes", type=int_at_least(0), default=64,
                   help="episodes to measure the warm-start success rate (0: skip)")


def cmd_train(args: argparse.Namespace) -> int:
    from appo_algo.config import TrainConfig
    from appo_algo.trainer import APPOTrainer

    if args.resume:
        if args.config:
            raise ValueError("--resume takes the run's own config.yaml; pass changes with --set, not --config")
        trainer = APPOTrainer.resume(args.resume, args.overrides)
    else:
        trainer = APPOTrainer(TrainConfig.load(args.config, args.overrides))
    print(json.dumps({"policy": trainer.policy.describe(), "log_dir": str(trainer.log_dir)}))
    callback = None
    if args.diagnostics:
        from appo_algo.diagnostics import DiagnosticsCallback
        callback = DiagnosticsCallback()
    try:
        trainer.learn(callback=callback)
    finally:
        trainer.close()
    return 0


def cmd_warmstart(args: argparse.Namespace) -> int:
    """Build (or find) the cached tiny model of the config's ``model_options`` and report its success rate."""
    from appo_algo.config import TrainConfig
    from appo_algo.policy import set_cpu_threads
    from appo_algo.policy_eval import evaluate_policy
    from appo_algo.presets import load_policy
    from appo_algo.rollout import RolloutLimits

    cfg = TrainConfig.load(args.config, args.overrides)
    if cfg.model != "tiny":
        raise ValueError(f"warmstart builds the 'tiny' preset; the config names model {cfg.model!r}")
    set_cpu_threads(cfg.cpu_threads)
    policy = load_policy("tiny", cfg.model_options, cfg.device)
    if args.eval_episodes > 0:
        limits = RolloutLimits(temperature=cfg.temperature, max_turn_tokens=cfg.max_turn_tokens,
                               max_episode_tokens=cfg.max_episode_tokens, env_workers=cfg.env_workers)
        env_kwargs = {**cfg.env_kwargs, **({"intensity": cfg.intensity} if cfg.intensity is not None else {})}
        result = evaluate_policy(policy, cfg.env_id, cfg.faults, env_kwargs, args.eval_episodes, limits)
        print(json.dumps({"warmstart_eval": result, "faults": cfg.faults}))
    return 0
