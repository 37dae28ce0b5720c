"""The tool contract: a named function with a JSON schema that the env calls for the agent.

A tool does the real work (runs code, sends HTTP); faults are applied around it by the
env's injector, except for HTTP tools, which take them through an httpx transport.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from appo_envs.toolcalls import shown_name

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returned: a status word and the text shown to the agent."""

    status: str  # "ok", "error", "timeout", ... (tool-specific words, "ok" means success)
    content: str
    clock_s: float  # time charged to the env clock for this call (deterministic)


@runtime_checkable
class Tool(Protocol):
    """A callable tool. ``fork`` returns an independent tool in the same state.

    By default the env turns an injected error into a synthetic response and does not call
    the tool. A tool whose ``handles_faults`` is True (HTTP tools) is called with the
    decided ``fault`` instead and must make it happen for real (through its transport).
    """

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    handles_faults: bool

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput: ...

    def reset(self, seed: int) -> None: ...

    def fork(self) -> "Tool": ...

    def close(self) -> None: ...


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The OpenAI/Hermes function schema of a tool (what chat templates expect in ``tools=``)."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def validate_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """Check arguments against a flat JSON schema; return a message for the agent, or None if valid."""
    props: dict[str, Any] = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    unknown = [k for k in arguments if k not in props]
    if unknown and not schema.get("additionalProperties", False):
        shown = ", ".join(shown_name(k) for k in unknown)  # agent-supplied keys: escaped and capped
        return f"unknown argument(s): {shown}; expected: {', '.join(props) or 'none'}"
    for key, value in arguments.items():
        want = props.get(key, {}).get("type")
        if want is None:
            continue
        ok_types = _JSON_TYPES.get(want, (object,))
        if not isinstance(value, ok_types) or (want in ("integer", "number") and isinstance(value, bool)):
            return f"argument {key!r} must be of type {want}, got {type(value).__name__}"
        enum = props[key].get("enum")
        if enum is not None and value not in enum:
            return f"argument {key!r} must be one of {enum}, got {value!r}"
    return None
