"""``TrainConfig``: one training run as plain data (YAML file + ``--set key=value`` overrides).

Registry names pick the algorithm parts (``selector`` from ``BRANCH_SELECTORS``,
``advantage`` from ``ADVANTAGE_ESTIMATORS``, ``loss`` from ``LOSSES``); their switches are
the nested dataclasses ``branch`` (``BranchConfig``), ``adv`` (``AdvantageConfig``) and
``ppo`` (``LossConfig``). Dotted overrides reach into them: ``--set branch.clip=[0.8,1.2]``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from appo_algo.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig
from appo_algo.branching import BRANCH_SELECTORS, BranchConfig
from appo_algo.losses import LOSSES, LossConfig
from appo_envs import ENVIRONMENTS, resolve_profile
from appo_envs.yaml_file import load_yaml_mapping

OMEGA_READINGS = ("paper", "code")
TRAIN_ROWS = ("initial", "all")
SCHEDULES = ("minibatch", "pre_update")


def _tiny_env_kwargs() -> dict[str, Any]:
    return {"difficulty": "easy", "budgets": {"max_turns": 4, "max_observation_chars": 512}}


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults: APPO as in the paper, sized for the ``tiny`` preset on a CPU.

    prompts_per_step: prompts per training step; rollouts_per_prompt: N (GRPO group size).
    Branches per rollout B live in ``branch.branches_per_rollout``; M = N·(B+1) when a
    selector branches, N otherwise.
    schedule: "minibatch" (paper: mini-batch j is branched with π_θ after mini-batches < j)
    or "pre_update" (all branches sampled before any update, Ω ≡ 1 everywhere).
    omega_reading: "paper" (Ω from π_θ vs π_old; exactly 1 while the weights equal the
    sampler's) or "code" (released code: Ω from the trainer's log-probs recomputed under the
    sampler's weights vs the sampler's own, γ = 1, so ``branch.gamma`` must be 1; numerical
    noise only in a single-engine setup; one extra no-grad forward pass per mini-batch).
    train_rows: "initial" (APPO: the loss sees the initial rollouts; branches only give
    rewards) or "all" (ARPO: branches are trained rows too, with GRPO advantages over every
    rollout of the prompt; needs ``advantage="grpo"``).
    mask_infra_failures: episodes whose failure the env blames on an injected fault
    (``info["infra_failure"]``) are left out of group statistics and of the loss.
    """

    seed: int = 0
    env_id: str = "appo/CodeExec-v0"
    faults: Any = "flaky"
    intensity: float | None = None
    env_kwargs: dict[str, Any] = field(default_factory=_tiny_env_kwargs)
    prompt_seed_offset: int = 0
    model: str = "tiny"
    model_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    cpu_threads: int | None = 1  # torch intra-op threads on CPU (None: torch's default); tiny models like 1
    selector: str = "appo"
    advantage: str = "appo"
    loss: str = "ppo_clip"
    branch: BranchConfig = field(default_factory=BranchConfig)
    adv: AdvantageConfig = field(default_factory=AdvantageConfig)
    ppo: LossConfig = field(default_factory=LossConfig)
    schedule: str = "minibatch"
    omega_reading: str = "paper"
    train_rows: str = "initial"
    prompts_per_step: int = 4
    rollouts_per_prompt: int = 4
    minibatches: int = 2
    temperature: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    steps: int = 50
    max_turn_tokens: int = 192
    max_episode_tokens: int = 768
    mask_infra_failures: bool = False
    env_workers: int = 4
    log_dir: str = "runs/appo"
    checkpoint_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    stdout_every: int = 1

    def __post_init__(self) -> None:
        for name, registry, value in (("env_id", ENVIRONMENTS, self.env_id),
                                      ("selector", BRANCH_SELECTORS, self.selector),
                                      ("advantage", ADVANTAGE_ESTIMATORS, self.advantage),
                                      ("loss", LOSSES, self.loss)):
            if value not in registry:
                raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(registry)}")
        resolve_profile(self.faults, self.intensity)  # an unknown preset, a bad profile or intensity: say so now
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.omega_reading not in OMEGA_READINGS:
            raise ValueError(f"omega_reading must be one of {OMEGA_READINGS}, got {self.omega_reading!r}")
        if self.omega_reading == "code" and self.branch.gamma != 1.0:
            raise ValueError(f"omega_reading='code' is the released code's reading, with γ = 1: set branch.gamma=1 "
                             f"(got {self.branch.gamma})")
        if self.train_rows not in TRAIN_ROWS:
            raise ValueError(f"train_rows must be one of {TRAIN_ROWS}, got {self.train_rows!r}")
        if self.train_rows == "all" and self.advantage != "grpo":
            raise ValueError(f"train_rows='all' trains branches as rows of one group per prompt: use advantage='grpo' "
                             f"(got {self.advantage!r}, which reads branches as a separate group)")
        for name in ("prompts_per_step", "rollouts_per_prompt", "minibatches", "steps", "max_turn_tokens",
                     "max_episode_tokens", "env_workers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.minibatches > self.prompts_per_step:
            raise ValueError(f"minibatches ({self.minibatches}) cannot exceed prompts_per_step ({self.prompts_per_step}): "
                             "a mini-batch holds whole prompt groups")
        if self.branch.layers != 1:
            raise ValueError("branch.layers > 1 (multi-layer branching) is not supported by APPOTrainer yet; use 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def branches(self) -> bool:
        return self.selector != "none"

    @property
    def group_size_m(self) -> int:
        """M: rollouts per prompt including branches (the paper's loss normaliser): N + the branch budget,
        which is ``branch.budget_per_prompt`` when set and N·B otherwise."""
        n = self.rollouts_per_prompt
        if not self.branches:
            return n
        budget = self.branch.budget_per_prompt
        return n + (n * self.branch.branches_per_rollout if budget is None else budget)

    # --- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return _build(cls, data, "config")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> "TrainConfig":
        """Defaults, then the YAML file (if any), then ``key=value`` overrides (values parsed as YAML)."""
        data: dict[str, Any] = {}
        if path is not None:
            data = load_yaml_mapping(path, "config file")
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} must look like key=value (e.g. selector=appo, branch.clip=[0.8,1.2])")
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"override {item!r}: {part!r} is not a section")
            try:
                node[parts[-1]] = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise ValueError(f"override {item!r}: the value is not valid YAML ({e.problem})") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(x: Any) -> Any:
    """Tuples become lists so the dict round-trips through YAML."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _is_tuple_hint(hint: Any) -> bool:
    """``tuple[...]`` or an Optional/Union containing one (YAML gives lists for them)."""
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, recursing into dataclass fields; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif isinstance(value, list) and _is_tuple_hint(hint):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
