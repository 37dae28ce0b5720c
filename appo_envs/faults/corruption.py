"""Corrupted responses: the call went through but what comes back is wrong.

Each kind is a pure function ``(content, u, ctx) -> Corrupted | None`` registered in
:data:`CORRUPTIONS`; ``u`` (a uniform of the call's draw) picks where and how, and ``None``
means the kind does not apply to this content (malformed JSON of a non-JSON body, stale
with no earlier answer) so nothing is changed or logged. The env applies them to any
tool's output text; the HTTP transport and the fault proxy can apply them to bodies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from appo_envs.faults.errors import render_error


@dataclass(frozen=True)
class CorruptionContext:
    """What a corruption may use besides the content: earlier answers of the tool and its timeout."""

    earlier: Sequence[tuple[int, str, str]] = ()  # (call index, status, content) of earlier real answers
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Corrupted:
    """The corrupted response: new content, optionally a new status, and what was done (for ``info``)."""

    content: str
    status: str | None = None  # None keeps the tool's status
    detail: Mapping[str, Any] = field(default_factory=dict)
    waited_s: float = 0.0  # env-clock time the agent spends waiting (a lost response waits for the timeout)


@dataclass(frozen=True)
class JsonBody:
    """A response whose text is (an optional head line such as ``HTTP 200 OK``, then) a JSON object or array."""

    prefix: str  # the text before the JSON, newline included ("" when the whole content is JSON)
    text: str  # the JSON text as it was
    obj: Any  # the parsed JSON

    def dump(self, obj: Any) -> str:
        """``obj`` serialised in the layout of the original body, after the same prefix."""
        return self.prefix + json.dumps(obj, ensure_ascii=False, indent=2 if "\n" in self.text.strip() else None)


def json_body(content: str) -> JsonBody | None:
    """The JSON object or array that ``content`` is, or that follows its first line(s); None if there is none."""
    start = 0 if content.lstrip()[:1] in ("{", "[") else -1
    if start < 0:
        brace = [i for i in (content.find("\n{"), content.find("\n[")) if i >= 0]
        if not brace:
            return None
        start = min(brace) + 1
    try:
        return JsonBody(content[:start], content[start:], json.loads(content[start:]))
    except ValueError:
        return None


def json_records(obj: Any) -> list[dict[str, Any]]:
    """The "records" of a JSON body: a top-level list of objects, the first list of objects inside an object, or the object."""
    if isinstance(obj, list):
        return [x for x in obj if isinstance(x, dict)]
    if isinstance(obj, dict):
        for value in obj.values():
            if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
                return value
        return [obj]
    return []


def truncated(content: str, u: float, ctx: CorruptionContext) -> Corrupted | None:
    """Cut the body between 10% and 90% of its length, silently (a proxy dropped the rest)."""
    if len(content) < 2:
        return None
    keep = min(len(content) - 1, max(1, int(len(content) * (0.1 + 0.8 * u))))
    return Corrupted(content[:keep], detail={"kept_chars": keep, "of_chars": len(content)})


def _cut(text: str) -> str:
    return text.rstrip()[:-1]


def _trailing_comma(text: str) -> str:
    body = text.rstrip()
    return body[:-1] + "," + body[-1]


def _single_quotes(text: str) -> str:
    return text.replace('"', "'")


_MALFORMATIONS: dict[str, Callable[[str], str]] = {"cut": _cut, "trailing_comma": _trailing_comma,
                                                   "single_quotes": _single_quotes}


def malformed_json(content: str, u: float, ctx: CorruptionContext) -> Corrupted | None:
    """Turn a JSON body into text that no JSON parser accepts (cut end, trailing comma, or single quotes)."""
    body = json_body(content)
    if body is None:
        return None
    names = list(_MALFORMATIONS)
    name = names[min(int(u * len(names)), len(names) - 1)]
    bad = _MALFORMATIONS[name](body.text)
    if bad == body.text:  # single quotes in a body without strings
        name, bad = "cut", _cut(body.text)
    return Corrupted(body.prefix + bad, detail={"mutation": name})


def _drift_name(key: str) -> str:
    """A plausible new name for a field after an API version bump."""
    if "_" in key:
        head, *rest = key.split("_")
        return head + "".join(p[:1].upper() + p[1:] for p in rest)
    return key + "_v2"


def schema_drift(content: str, u: float, ctx: CorruptionContext) -> Corrupted | None:
    """Rename (snake_case -> camelCase, else ``_v2``) or drop one field in every record of a JSON body."""
    body = json_body(content)
    records = json_records(body.obj) if body is not None else []
    keys = sorted({k for r in records for k in r})
    if not keys:
        return None
    i = min(int(u * len(keys) * 2), len(keys) * 2 - 1)
    key, op = keys[i // 2], ("rename", "remove")[i % 2]
    new = _drift_name(key)
    for r in records:
        if key in r:
            items = [(new if k == key else k, v) for k, v in r.items() if not (op == "remove" and k == key)]
            r.clear()
            r.update(items)
    detail = {"field": key, "op": op, **({"renamed_to": new} if op == "rename" else {})}
    return Corrupted(body.dump(body.obj), detail=detail)


def stale(content: str, u: float, ctx: CorruptionContext) -> Corrupted | None:
    """Return an earlier answer of the same tool again (a stale cache), status included."""
    if not ctx.earlier:
        return None
    index, status, old = ctx.earlier[min(int(u * len(ctx.earlier)), len(ctx.earlier) - 1)]
    return Corrupted(old, status=status, detail={"from_call": index})


def write_lost(content: str, u: float, ctx: CorruptionContext) -> Corrupted | None:
    """The call ran and its effects are committed, but the response never arrives: the agent sees a timeout."""
    status, message = render_error("timeout", ctx.timeout_s, None)
    return Corrupted(message, status=status, detail={"committed": True}, waited_s=ctx.timeout_s)


CORRUPTIONS: dict[str, Callable[[str, float, CorruptionContext], Corrupted | None]] = {
    "truncated": truncated,
    "malformed_json": malformed_json,
    "schema_drift": schema_drift,
    "stale": stale,
    "write_lost": write_lost,
}


def corrupt(content: str, kind: str, u: float, ctx: CorruptionContext | None = None) -> Corrupted | None:
    """Apply corruption ``kind`` to ``content`` (None if it does not apply to this content)."""
    try:
        fn = CORRUPTIONS[kind]
    except KeyError:
        raise ValueError(f"unknown corruption kind {kind!r}; known: {sorted(CORRUPTIONS)}") from None
    return fn(content, u, ctx or CorruptionContext())
