"""Content-addressed record/replay of tool calls: replay episodes without tools, overlay faults on them.

A :class:`Cassette` stores every tool response once, under the SHA-256 of its content
(``blobs``), and one :class:`Tape` per recorded episode: the seed, options, profile, tool
schemas, the agent's actions, a hash of every observation, and which blob answered call
*k* of tool *T* with given arguments (and, for an HTTP tool, given transport error).

* ``cassette.record_episode(env, seed, actions)`` plays an episode with the real tools
  and records it.
* ``cassette.replay_episode(env, tape)`` replays it with the env's tools replaced by the
  tape: nothing reaches a real tool (not even ``reset``), and the observations are
  checked against the recorded hashes. It returns the steps and the fault log, and leaves
  the env as it found it (its own tools, profile, episode and RNG), even when it raises.
* ``cassette.replay_episode(env, tape, faults="flaky")`` overlays a fault profile on the
  recorded (typically clean) episode: same task, same actions, same tool responses, and
  faults exactly where the profile puts them (call *k* of *T* is a pure function of the
  seed) — a matched clean/faulted pair. Responses are taken as recorded: a call that the
  overlay fails is assumed not to have changed the tool's state, and errors overlaid on an
  HTTP tool are rendered the way the env renders errors of simple tools.

Forks of a replaying env replay the same tape; forks of a recording env are not recorded.
Envs whose task or reward lives in a tool's backend (API, Mixed: a service session is
opened at reset and graded at the end) cannot be replayed without it; replaying one
raises :class:`NotReplayable` naming what it needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gymnasium as gym

from appo_envs.core import ToolEnv
from appo_envs.faults import FaultLog, FaultProfile, resolve_profile
from appo_envs.tools.base import Tool, ToolOutput

CASSETTE_VERSION = 1


class CassetteMiss(LookupError):
    """A replayed call is not on the tape (different actions or arguments than were recorded)."""


class NotReplayable(AttributeError):
    """The env needs a tool's backend outside tool calls (its task or reward lives there)."""


def content_hash(data: Any) -> str:
    """SHA-256 of the canonical JSON of ``data`` (UTF-8; a lone surrogate is encoded as itself, "surrogatepass")."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _call_key(tool: str, k: int, arguments: dict[str, Any], error: str | None) -> str:
    return f"{tool}/{k}/{content_hash(arguments)[:16]}/{error or '-'}"


@dataclass
class Tape:
    """One recorded episode."""

    seed: int
    options: dict[str, Any]
    profile: dict[str, Any]
    tools: list[dict[str, Any]]  # name, description, parameters, handles_faults
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)  # content hash of the prompt, then of each observation
    rewards: list[float] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call key -> blob hash
    fault_entropy: int | None = None


@dataclass(frozen=True)
class ReplayedStep:
    """One step of a replayed episode."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@dataclass(frozen=True)
class Replay:
    """A replayed episode: its steps and its fault log."""

    steps: list[ReplayedStep]
    fault_log: FaultLog


# What a replay replaces on the env and puts back afterwards: its configuration, episode and RNG.
_REPLAY_SWAPS = ("profile", "tools", "cassette", "_state", "_injector", "_np_random", "_np_random_seed")


@contextlib.contextmanager
def _swapped_out(env: ToolEnv) -> Iterator[None]:
    """Restore every attribute of ``_REPLAY_SWAPS`` on leaving the block, however it is left."""
    saved = {name: getattr(env, name) for name in _REPLAY_SWAPS}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(env, name, value)


class Cassette:
    """A store of tool responses (by content hash) and of the episodes that produced them."""

    def __init__(self) -> None:
        self.blobs: dict[str, dict[str, Any]] = {}
        self.tapes: list[Tape] = []

    # --- recording ------------------------------------------------------------------------

    def record_episode(self, env: gym.Env, seed: int, actions: Sequence[str] | Callable[[str, dict[str, Any]], str],
                       options: dict[str, Any] | None = None, max_steps: int = 1000) -> Tape:
        """Play one episode with the real tools (``actions`` is a list or a policy ``(obs, info) -> action``)."""
        base = _tool_env(env)
        tape = Tape(seed=seed, options=dict(options or {}), profile=base.profile.to_dict(),
                    tools=[{"name": t.name, "description": t.description, "parameters": t.parameters,
                            "handles_faults": bool(getattr(t, "handles_faults", False))} for t in base.tools.values()])
        base.cassette = _Recorder(self, tape)
        try:
            obs, info = env.reset(seed=seed, options=dict(tape.options))
            tape.fault_entropy = info.get("fault_entropy")
            tape.observations.append(content_hash(obs))
            for i in range(max_steps):
                action = actions[i] if isinstance(actions, Sequence) else actions(obs, info)
                obs, reward, terminated, truncated, info = env.step(action)
                tape.actions.append(action)
                tape.observations.append(content_hash(obs))
                tape.rewards.append(float(reward))
                if terminated or truncated or (isinstance(actions, Sequence) and i + 1 == len(actions)):
                    break
        finally:
            base.cassette = None
        self.tapes.append(tape)
        return tape

    def _store(self, out: ToolOutput) -> str:
        blob = {"status": out.status, "content": out.content, "clock_s": out.clock_s}
        digest = content_hash(blob)
        self.blobs.setdefault(digest, blob)
        return digest

    # --- replay ----------------------------------------------------------------------------

    def replay_episode(self, env: gym.Env, tape: Tape | int = 0, faults: Any = None,
                       verify: bool | None = None) -> Replay:
        """Replay ``tape`` in ``env`` with its tools replaced by the tape; optionally overlay ``faults``.

        ``verify`` (default: True unless ``faults`` is given) asserts that every observation
        hashes to the recorded one. The env gets its own tools, profile, episode and RNG back
        afterwards (the real tools are neither used nor closed), so it can go on as before.
        """
        tape = self.tapes[tape] if isinstance(tape, int) else tape
        base = _tool_env(env)
        with _swapped_out(base):
            base.profile = resolve_profile(faults) if faults is not None else FaultProfile.from_dict(tape.profile)
            # Overlaid errors are rendered by the env (a tape cannot know how a service would have failed).
            base.tools = {t["name"]: TapeTool(**{**t, "handles_faults": t["handles_faults"] and faults is None})
                          for t in tape.tools}
            base.cassette = _Replayer(self, tape)
            steps = self._play_tape(env, tape, verify=faults is None if verify is None else verify,
                                    overlay=faults is not None)
            return Replay(steps, base.fault_log)

    @staticmethod
    def _play_tape(env: gym.Env, tape: Tape, verify: bool, overlay: bool) -> list[ReplayedStep]:
        """Reset to the tape's seed and send its actions, checking the outcome when ``verify``."""
        options = dict(tape.options)
        if _tool_env(env).profile.pairing == "fresh" and tape.fault_entropy is not None and not overlay:
            options["fault_entropy"] = tape.fault_entropy
        obs, _ = env.reset(seed=tape.seed, options=options)
        _check(verify, obs, tape.observations[0], "the reset prompt")
        steps = []
        for i, action in enumerate(tape.actions):
            obs, reward, terminated, truncated, info = env.step(action)
            _check(verify, obs, tape.observations[i + 1], f"the observation of step {i + 1}")
            if verify and float(reward) != tape.rewards[i]:
                raise AssertionError(f"replay diverged at the reward of step {i + 1}: {reward} != {tape.rewards[i]}")
            steps.append(ReplayedStep(obs, float(reward), terminated, truncated, info))
            if terminated or truncated:
                break
        return steps

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write one JSON file (ASCII: every string, lone surrogates included, round-trips through ``load``)."""
        data = {"version": CASSETTE_VERSION, "blobs": self.blobs, "tapes": [asdict(t) for t in self.tapes]}
        Path(path).write_text(json.dumps(data, ensure_ascii=True), encoding="ascii")

    @classmethod
    def load(cls, path: str | Path) -> "Cassette":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version") != CASSETTE_VERSION:
            raise ValueError(f"{path}: cassette version {data.get('version')!r}, this code reads {CASSETTE_VERSION}")
        cassette = cls()
        cassette.blobs = data["blobs"]
        cassette.tapes = [Tape(**t) for t in data["tapes"]]
        for tape in cassette.tapes:
            missing = set(tape.calls.values()) - set(cassette.blobs)
            if missing:
                raise ValueError(f"{path}: tape of seed {tape.seed} references {len(missing)} missing blob(s)")
        return cassette


def _tool_env(env: gym.Env) -> ToolEnv:
    base = env.unwrapped
    if not isinstance(base, ToolEnv):
        raise TypeError(f"a cassette records and replays ToolEnv environments, got {type(base).__name__}")
    return base


def _check(verify: bool, obs: str, recorded: str, what: str) -> None:
    if verify and content_hash(obs) != recorded:
        raise AssertionError(f"replay diverged at {what}: the env no longer produces the recorded text "
                             "(task generator, env code or fault profile changed since recording)")


class TapeTool:
    """Stands in for a recorded tool: same name and schema; never runs anything."""

    def __init__(self, name: str, description: str, parameters: dict[str, Any], handles_faults: bool):
        self.name, self.description, self.parameters, self.handles_faults = name, description, parameters, handles_faults

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        raise RuntimeError(f"tool {self.name!r} is replayed from a cassette; calls go through the env's cassette")

    def reset(self, seed: int) -> None:
        """Nothing to reset: the tape holds every response."""

    def fork(self) -> "TapeTool":
        return self

    def close(self) -> None:
        """Nothing to close (a sandbox death on a replayed tool kills nothing)."""

    def __getattr__(self, attr: str) -> Any:
        raise NotReplayable(f"the env uses {self.name!r}.{attr} outside tool calls (its task or reward lives in "
                            "the tool's backend, e.g. a service session), so it cannot be replayed without that tool; "
                            "replay envs whose tasks and rewards need no tool backend (CodeExec, Search)")


class _Recorder:
    """The env's cassette hook while recording: calls go to the real tool and are stored."""

    def __init__(self, cassette: Cassette, tape: Tape):
        self.cassette, self.tape = cassette, tape

    def bind(self, tool: Tool, k: int) -> "_RecordedCall":
        return _RecordedCall(self, tool, k)

    def on_fork(self) -> None:
        return None  # a branch's calls would collide with the episode's call indices


class _RecordedCall:
    """Call ``k`` of a real tool, recorded on the way back."""

    def __init__(self, recorder: _Recorder, tool: Tool, k: int):
        self.recorder, self.tool, self.k = recorder, tool, k
        self.name, self.handles_faults = tool.name, getattr(tool, "handles_faults", False)

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        if fault is None:
            out = self.tool.call(arguments, timeout_s=timeout_s)
        else:
            out = self.tool.call(arguments, timeout_s=timeout_s, fault=fault)
        key = _call_key(self.name, self.k, arguments, fault.error if fault is not None else None)
        self.recorder.tape.calls[key] = self.recorder.cassette._store(out)
        return out

    def close(self) -> None:
        self.tool.close()


class _Replayer:
    """The env's cassette hook while replaying: calls are answered from the tape."""

    def __init__(self, cassette: Cassette, tape: Tape):
        self.cassette, self.tape = cassette, tape

    def bind(self, tool: Tool, k: int) -> "_ReplayedCall":
        return _ReplayedCall(self, tool, k)

    def on_fork(self) -> "_Replayer":
        return self


class _ReplayedCall:
    """Call ``k`` of a replayed tool: the recorded response for these arguments."""

    def __init__(self, replayer: _Replayer, tool: Tool, k: int):
        self.replayer, self.k = replayer, k
        self.name, self.handles_faults = tool.name, getattr(tool, "handles_faults", False)

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        error = fault.error if fault is not None else None
        digest = self.replayer.tape.calls.get(_call_key(self.name, self.k, arguments, error))
        if digest is not None:
            return ToolOutput(**self.replayer.cassette.blobs[digest])
        raise CassetteMiss(f"call {self.k} of tool {self.name!r} with arguments {arguments!r} is not on the tape; "
                           "a replay must send the recorded actions (record this episode first)")

    def close(self) -> None:
        """Replayed tools have no worker to kill."""
