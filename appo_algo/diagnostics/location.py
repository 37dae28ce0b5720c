"""Where branch points fall: reasoning, tool-call arguments, answer, whitespace/punctuation, right after a tool response."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from appo_algo.branching import RolloutView, Segment

# Checked in this order: the first kind that applies labels the token.
LOCATION_KINDS = ("after_tool", "ws_punct", "tool_args", "answer", "reasoning")
_BY_SEGMENT = {int(Segment.TOOL_CALL): "tool_args", int(Segment.ANSWER): "answer", int(Segment.REASONING): "reasoning"}


def token_locations(view: RolloutView, after_tool_window: int = 3) -> list[str | None]:
    """Location kind of every token (None on tool-response tokens, which are never branch points).

    ``after_tool``: one of the first ``after_tool_window`` generated tokens after a tool response;
    ``ws_punct``: a whitespace- or punctuation-only token (``view.skip``).
    """
    trainable = view.trainable.cpu().numpy()
    skip = view.skip.cpu().numpy()
    boundary = view.tool_boundary.cpu().numpy()
    segment = view.segment.cpu().numpy()
    out: list[str | None] = []
    since: int | None = None
    for i in range(len(trainable)):
        if boundary[i]:
            since = 0
        if not trainable[i]:
            out.append(None)
            if segment[i] == int(Segment.TOOL_RESPONSE):
                since = None
            continue
        if since is not None and since < after_tool_window:
            out.append("after_tool")
        elif skip[i]:
            out.append("ws_punct")
        else:
            out.append(_BY_SEGMENT[int(segment[i])])
        if since is not None:
            since += 1
    return out


def location_histogram(views: Sequence[RolloutView], points: Iterable[tuple[int, int]],
                       after_tool_window: int = 3) -> dict[str, float]:
    """Share of branch points ``(rollout, token index)`` per location kind, plus the share at tool boundaries.

    Returns ``loc/<kind>`` fractions (summing to 1 when there are points), ``loc/points`` and
    ``loc/tool_boundary_share`` (points exactly on the first token after a tool response).
    """
    labels = {r: token_locations(v, after_tool_window) for r, v in enumerate(views)}
    counts: Counter = Counter()
    at_boundary = n = 0
    for r, i in points:
        kind = labels[r][i]
        if kind is None:
            raise ValueError(f"branch point (rollout {r}, token {i}) is a tool-response token; selectors never pick those")
        counts[kind] += 1
        at_boundary += bool(views[r].tool_boundary[i])
        n += 1
    out = {f"loc/{k}": counts[k] / n if n else 0.0 for k in LOCATION_KINDS}
    out["loc/points"] = float(n)
    out["loc/tool_boundary_share"] = at_boundary / n if n else 0.0
    return out


def scored_points(plan_points: Iterable[tuple[int, int]], offset: int, lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Branch-plan positions (first regenerated token) back to the scored token: position − offset, in range."""
    return [(r, int(np.clip(p - offset, 0, lengths[r] - 1))) for r, p in plan_points]
