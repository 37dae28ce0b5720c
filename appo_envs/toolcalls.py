"""Parse an assistant turn into tool calls and a final answer, and render tool responses.

Format (Hermes/Qwen convention): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(several per turn allowed) and a final ``<answer>...</answer>``. Parsing never raises:
every problem becomes a :class:`CallError` whose message tells the agent how to fix it.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAG = re.compile(r"<tool_call>|</tool_call>|<answer>|</answer>")
MAX_JSON_DEPTH = 64  # nesting limit of a call's JSON, far below Python's recursion limit
NAME_SHOWN_CHARS = 64  # an agent-supplied name is echoed back at most this long
_ESCAPED = frozenset("<>[]\\")  # tag and header delimiters, escaped in echoed names


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


def shown_name(name: str) -> str:
    """An agent-supplied name made safe to echo back: one token, escaped and capped.

    Whitespace, control characters, lone surrogates and ``<>[]\\`` become ``\\x``/``\\u``
    escapes, so an echoed name can neither break an encoder nor forge a ``<tool_response>``
    block or its header line; a name over ``NAME_SHOWN_CHARS`` characters is cut with ``…``.
    """
    shown = "".join(_escape(c) for c in name[:NAME_SHOWN_CHARS])
    return shown + "…" if len(name) > NAME_SHOWN_CHARS else shown


def _escape(c: str) -> str:
    """``c`` itself if it is a printable non-space character other than ``<>[]\\``, else its escape."""
    if c.isprintable() and not c.isspace() and c not in _ESCAPED:
        return c
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` has arrays/objects nested more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _load_json(text: str, what: str) -> tuple[Any, str | None]:
    """``json.loads`` that never raises: (value, None), or (None, what is wrong with ``what``).

    Besides syntax errors, Python refuses integers over 4300 digits (ValueError) and deep
    nesting (RecursionError, at a depth that depends on the caller's stack); the explicit
    ``MAX_JSON_DEPTH`` makes the outcome the same wherever the parse runs.
    """
    too_deep = f"{what} nests arrays/objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{what} is not valid JSON ({e.msg} at char {e.pos})"
    except ValueError:  # json's only other ValueError: an integer over Python's int-from-string limit
        return None, f"{what} has an integer of more than {sys.get_int_max_str_digits()} digits"
    except RecursionError:
        return None, too_deep
    # Depth needs at least that many brackets in the text: count them (fast) before walking the value.
    may_nest = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    return (None, too_deep) if may_nest and _nests_deeper(value, MAX_JSON_DEPTH) else (value, None)


def _arguments_of(name: str) -> str:
    return f'"arguments" of \'{shown_name(name)}\''


def _parse_call_body(body: str) -> ToolCall | CallError:
    obj, problem = _load_json(body.strip(), "tool call")
    if problem is not None:
        return CallError(f'{problem}; expected {{"name": "<tool>", "arguments": {{...}}}}')
    if not isinstance(obj, dict):
        return CallError(f'tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, got {type(obj).__name__}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return CallError('tool call needs a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some chat templates emit arguments as a JSON string
        args, problem = _load_json(args, f"{_arguments_of(name)} (a string)") if args.strip() else ({}, None)
        if problem is not None:
            return CallError(problem)
    if not isinstance(args, dict):
        return CallError(f"{_arguments_of(name)} must be a JSON object, got {type(args).__name__}")
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


def render_observation(responses: Sequence[tuple[str, str, str]], notes: Sequence[str], limit: int) -> str:
    """A turn's observation: its tool responses ((name, status, content) each), then its notes, one per line.

    Over ``limit`` characters, each part gets a fair share of what the response tags leave
    (max-min fair: a part under its share keeps all of it, the longer ones split the rest
    evenly), so one huge response cannot hide the turn's later ones. A cut response keeps its
    tags and ends its content with the truncation marker.
    """
    whole = "\n".join([render_tool_response(*response) for response in responses] + list(notes))
    if len(whole) <= limit:
        return whole
    bodies = [content for _, _, content in responses] + list(notes)
    frames = sum(len(render_tool_response(name, status, "")) for name, status, _ in responses)
    room = max(0, limit - frames - max(0, len(bodies) - 1))  # minus the tags and the joining newlines
    cut = [truncate(body, share) for body, share in zip(bodies, _fair_shares([len(b) for b in bodies], room))]
    blocks = [render_tool_response(name, status, content) for (name, status, _), content in zip(responses, cut)]
    return truncate("\n".join(blocks + cut[len(responses):]), limit)  # only a turn of very many blocks needs this cut


def _fair_shares(lengths: Sequence[int], total: int) -> list[int]:
    """Split ``total`` max-min fairly: shortest first, each gets min(its length, an even share of what is left)."""
    shares = [0] * len(lengths)
    left = total
    for rank, i in enumerate(sorted(range(len(lengths)), key=lengths.__getitem__)):
        shares[i] = min(lengths[i], left // (len(lengths) - rank))
        left -= shares[i]
    return shares
