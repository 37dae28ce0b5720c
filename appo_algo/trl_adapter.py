"""Expose any suite env as TRL ``GRPOTrainer(environment_factory=...)``: tool methods, ``reset``, ``get_reward``.

What TRL (>= 1.x) requires of an environment, read from its ``GRPOTrainer``:

- a zero-argument factory; TRL builds one instance per concurrent rollout and reuses it
  through ``reset`` ("construct once, reset often");
- ``reset(**row)`` is called with the dataset row's columns as keywords and returns a
  string appended to the last user message (here: the task question);
- every public method other than ``reset``/``get_reward``, found on the CLASS with
  ``inspect.isfunction``, is a tool; its JSON schema comes from
  ``transformers.utils.get_json_schema``: type hints plus a Google-style docstring with an
  ``Args:`` line per argument. The return value is sent to the model with ``str()``;
- ``get_reward()`` (no arguments) scores the finished rollout from the env's own state.

So the adapter builds one class per env id whose methods mirror the env's tool schemas
(``info["tools"]``), each turning a call into one env turn with that single
``<tool_call>``; plus a ``submit_answer`` tool that sends ``<answer>`` (``get_reward`` sees
no text, so the answer must reach the env as a call). Arguments are passed through
unchecked so the env, not Python, reports bad arguments, exactly as for a text agent.
Rows carry a ``seed`` column: the GRPO group of one row shares the task and, with the
default ``shared`` pairing, its faults.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import gymnasium as gym
from datasets import Dataset

import appo_envs  # noqa: F401  (registers the env ids)
from appo_envs.toolcalls import parse_tool_responses, render_answer, render_tool_call

ANSWER_TOOL = "submit_answer"  # TRLToolEnv.submit_answer
INSTRUCTION = ("Use the tools to work it out. When you know the final answer, call "
               f"{ANSWER_TOOL} with it; that ends the task.")
_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool,
                              "object": dict, "array": list}


class TRLToolEnv:
    """Base of the generated adapters: one suite env episode per ``reset``."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}

    def __init__(self) -> None:
        self._env = gym.make(self.env_id, **self.env_kwargs)
        self._reward = 0.0

    def reset(self, seed: int | None = None, **row: Any) -> str:
        """Start the episode of ``seed``; return the question TRL appends to the user message."""
        if seed is None:
            raise ValueError("the train dataset needs a 'seed' column (one task per row, shared by its GRPO group); "
                             "build it with appo_algo.trl_adapter.seed_dataset(n)")
        _, info = self._env.reset(seed=int(seed))
        self._reward = 0.0
        question = next(m["content"] for m in info["messages"] if m["role"] == "user")
        return f"{question}\n\n{INSTRUCTION}"

    def get_reward(self) -> float:
        """The env's reward for the episode (0 if it ended without a correct answer or never ended)."""
        return self._reward

    def _turn(self, text: str) -> str:
        """Play one assistant turn; return the tool output as the model should read it."""
        obs, reward, *_ = self._env.step(text)
        self._reward += reward
        blocks = parse_tool_responses(obs)
        rest = obs
        for name, status, content in blocks:
            rest = rest.replace(f"<tool_response>\n[{name} {status}]\n{content}\n</tool_response>", "", 1)
        shown = "\n".join([f"[{status}] {content}" for _, status, content in blocks] + [rest.strip()])
        return shown.strip()

    def submit_answer(self, answer: str) -> str:
        """Submit the final answer to the task; call this once, at the end.

        Args:
            answer: The final answer, exactly as asked for in the task.
        """
        return self._turn(render_answer(str(answer))) or "Answer received."

    def _call(self, tool: str, arguments: dict[str, Any]) -> str:
        return self._turn(render_tool_call(tool, arguments))

    def _close(self) -> None:
        """Release the env's tools (sandboxes, services). Private: TRL would expose a public method as a tool."""
        self._env.close()


def _docstring(description: str, parameters: dict[str, Any]) -> str:
    """A Google-style docstring that ``get_json_schema`` turns back into the tool's schema."""
    lines = [" ".join(description.split()) or "A tool.", "", "Args:"]
    for name, prop in parameters.get("properties", {}).items():
        desc = " ".join(str(prop.get("description", name)).split())
        if "enum" in prop:
            desc += f" (choices: {list(prop['enum'])!r})".replace("'", '"')
        lines.append(f"    {name}: {desc}")
    return "\n".join(lines)


def _tool_method(schema: dict[str, Any]) -> Callable[..., str]:
    """A method named after the tool, with a signature and docstring matching its JSON schema."""
    fn_schema = schema["function"]
    name, params = fn_schema["name"], fn_schema.get("parameters", {"type": "object", "properties": {}})
    required = set(params.get("required", []))
    sig_params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    props = params.get("properties", {})
    for arg in sorted(props, key=lambda a: a not in required):  # required arguments first, as Python needs
        kind = props[arg].get("type", "string")
        if kind not in _PY_TYPES:
            raise ValueError(f"tool {name!r} argument {arg!r} has JSON type {kind!r}; the TRL adapter supports "
                             f"{sorted(_PY_TYPES)}")
        py = _PY_TYPES[kind] if arg in required else _PY_TYPES[kind] | None
        default = inspect.Parameter.empty if arg in required else None
        sig_params.append(inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=py))
        annotations[arg] = py
    annotations["return"] = str

    def method(self, **arguments: Any) -> str:  # noqa: ANN001  (schema comes from __signature__)
        return self._call(name, {k: v for k, v in arguments.items() if v is not None})

    method.__name__ = method.__qualname__ = name
    method.__doc__ = _docstring(fn_schema.get("description", ""), params)
    method.__signature__ = inspect.Signature(sig_params, return_annotation=str)  # type: ignore[attr-defined]
    method.__annotations__ = annotations
    return method


def trl_environment_class(env_id: str, **env_kwargs: Any) -> type[TRLToolEnv]:
    """A ``TRLToolEnv`` subclass for ``gym.make(env_id, **env_kwargs)`` with one method per env tool."""
    probe = gym.make(env_id, **env_kwargs)
    try:
        _, info = probe.reset(seed=0)
    finally:
        probe.close()
    methods: dict[str, Any] = {}
    for schema in info["tools"]:
        name = schema["function"]["name"]
        if name in {"reset", "get_reward", ANSWER_TOOL} or name.startswith("_") or not name.isidentifier():
            raise ValueError(f"tool name {name!r} of {env_id} cannot be a TRL tool method (reserved or not an identifier)")
        methods[name] = _tool_method(schema)
    class_name = "".join(ch for ch in env_id.split("/")[-1] if ch.isalnum()) + "TRLEnv"
    return type(class_name, (TRLToolEnv,), {"env_id": env_id, "env_kwargs": dict(env_kwargs), **methods})


def environment_factory(env_id: str, **env_kwargs: Any) -> Callable[[], TRLToolEnv]:
    """What to pass as ``GRPOTrainer(environment_factory=...)``: a zero-argument constructor."""
    return trl_environment_class(env_id, **env_kwargs)


def seed_dataset(n_tasks: int, first_seed: int = 0) -> Dataset:
    """``n_tasks`` rows, each an empty user message plus the ``seed`` that ``reset`` turns into the task."""
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}]] * n_tasks,
                              "seed": list(range(first_seed, first_seed + n_tasks))})
