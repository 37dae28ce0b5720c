"""Parse an assistant turn into tool calls and a final answer, and render tool responses.

Format (Hermes/Qwen convention): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(several per turn allowed) and a final ``<answer>...</answer>``. Parsing never raises:
every problem becomes a :class:`CallError` whose message tells the agent how to fix it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAG = re.compile(r"<tool_call>|</tool_call>|<answer>|</answer>")


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call: a tool name and a JSON object of arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class CallError:
    """A call that could not be parsed; ``message`` is shown to the agent."""

    message: str


@dataclass
class ParsedTurn:
    """Everything found in one assistant turn, in order of appearance."""

    calls: list[ToolCall | CallError] = field(default_factory=list)
    answer: str | None = None
    problems: list[str] = field(default_factory=list)  # turn-level format problems


def _parse_call_body(body: str) -> ToolCall | CallError:
    body = body.strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return CallError(f"tool call is not valid JSON ({e.msg} at char {e.pos}); expected "
                         '{"name": "<tool>", "arguments": {...}}')
    if not isinstance(obj, dict):
        return CallError(f'tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, got {type(obj).__name__}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return CallError('tool call needs a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some chat templates emit arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return CallError(f'"arguments" of {name!r} is a string that is not a JSON object')
    if not isinstance(args, dict):
        return CallError(f'"arguments" of {name!r} must be a JSON object, got {type(args).__name__}')
    return ToolCall(name=name, arguments=args)


def parse_turn(text: str) -> ParsedTurn:
    """Split an assistant turn into calls and an answer; linear in the text length."""
    turn = ParsedTurn()
    open_tag: str | None = None
    open_at = 0
    for m in _TAG.finditer(text):
        tag = m.group(0)
        if tag in (TOOL_CALL_OPEN, ANSWER_OPEN):
            if open_tag is not None:
                turn.problems.append(f"{tag} opened inside an unclosed {open_tag}")
            open_tag, open_at = tag, m.end()
            continue
        expected = TOOL_CALL_CLOSE if open_tag == TOOL_CALL_OPEN else ANSWER_CLOSE if open_tag == ANSWER_OPEN else None
        if tag != expected:
            turn.problems.append(f"{tag} without a matching opening tag")
            continue
        body = text[open_at : m.start()]
        if tag == TOOL_CALL_CLOSE:
            turn.calls.append(_parse_call_body(body))
        elif turn.answer is None:
            turn.answer = body.strip()
        else:
            turn.problems.append("more than one <answer>; the first one counts")
        open_tag = None
    if open_tag is not None:
        closing = TOOL_CALL_CLOSE if open_tag == TOOL_CALL_OPEN else ANSWER_CLOSE
        turn.problems.append(f"unclosed {open_tag}: close it with {closing}")
        if open_tag == TOOL_CALL_OPEN:
            turn.calls.append(CallError(f"unclosed {TOOL_CALL_OPEN}: close it with {TOOL_CALL_CLOSE}"))
    return turn


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text an agent writes to call ``name``; the inverse of :func:`parse_turn`."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def render_answer(answer: str) -> str:
    """The text an agent writes to give its final answer."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def render_tool_response(name: str, status: str, content: str) -> str:
    """One tool response block; the first line names the tool and its status."""
    return f"<tool_response>\n[{name} {status}]\n{content}\n</tool_response>"


_RESPONSE = re.compile(r"<tool_response>\n\[(\S+) (\S+)\]\n(.*?)\n</tool_response>", re.DOTALL)


def parse_tool_responses(observation: str) -> list[tuple[str, str, str]]:
    """(tool name, status, content) of each response block in an observation."""
    return _RESPONSE.findall(observation)


def truncate(text: str, limit: int, marker: str = "\n…[truncated {n} chars]") -> str:
    """Cut ``text`` to at most ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    tail = marker.format(n=len(text) - limit)
    keep = max(0, limit - len(tail) - 8)
    tail = marker.format(n=len(text) - keep)
    return text[:keep] + tail[: max(0, limit - keep)]
