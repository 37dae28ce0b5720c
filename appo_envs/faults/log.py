"""The fault log a trajectory carries, and the rules that attribute a failure to infrastructure.

Every injected fault is one plain-dict event ``{"kind", "tool", "call_index", ...}``
(JSON-able, so it travels through vector envs, files and replays). :class:`FaultLog`
bundles an episode's events with what is needed to replay them (seed, profile, pairing
entropy) and its outcome, including ``infra_failure``: a learner that wants to keep
infrastructure-caused failures out of credit assignment drops (or masks) trajectories
whose log says ``exclude_from_credit``.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from appo_envs.faults.corruption import CORRUPTIONS
from appo_envs.faults.errors import ERROR_KINDS

# What kind of cause each event kind is. "infra": the tool side failed the agent; "delay":
# time the agent lost waiting; "user": the user left; "adversarial": hostile content was
# planted (not a failure by itself); "agent": the agent acted on hostile content.
FAULT_CATEGORIES: dict[str, str] = {
    **{k: "infra" for k in ERROR_KINDS},
    **{k: "infra" for k in CORRUPTIONS},
    "latency": "delay",
    "cold_start": "delay",
    "user_abort": "user",
    "hostile": "adversarial",
    "hostile_obeyed": "agent",
}


@dataclass(frozen=True)
class Outcome:
    """How an episode ended, as attribution needs it."""

    done: bool = False
    success: bool = False
    truncation_reason: str | None = None
    last_call_faulted: bool = False  # the last tool call before the end hit an infra fault


def _any(events: Sequence[dict[str, Any]], out: Outcome) -> bool:
    """Failed, and some infrastructure fault hit the episode (or the user left, or injected delay ran out the clock)."""
    cats = {FAULT_CATEGORIES[e["kind"]] for e in events}
    timed_out = out.truncation_reason == "time_budget" and "delay" in cats
    return "infra" in cats or "user" in cats or timed_out


def _terminal(events: Sequence[dict[str, Any]], out: Outcome) -> bool:
    """Failed, and the end itself was caused by infrastructure: a user abort, injected delay
    that ran out the time budget, or an infra fault on the very last tool call."""
    cats = {FAULT_CATEGORIES[e["kind"]] for e in events}
    return ("user" in cats or (out.truncation_reason == "time_budget" and "delay" in cats)
            or out.last_call_faulted)


ATTRIBUTION_RULES: dict[str, Callable[[Sequence[dict[str, Any]], Outcome], bool]] = {
    "any": _any,
    "terminal": _terminal,
    "off": lambda events, out: False,
}


def infra_failure(rule: str, events: Sequence[dict[str, Any]], outcome: Outcome) -> bool:
    """Whether a finished, failed episode counts as an infrastructure failure under ``rule``."""
    return outcome.done and not outcome.success and ATTRIBUTION_RULES[rule](events, outcome)


@dataclass(frozen=True, eq=False)
class FaultLog(Sequence):
    """An episode's fault events (a read-only sequence of dicts) plus replay keys and outcome."""

    events: tuple[dict[str, Any], ...] = ()
    seed: int | None = None
    profile: str = "clean"
    pairing: str = "shared"
    fault_entropy: tuple[int, ...] = ()  # the fresh-pairing keys in use (episode's, then each fresh fork's)
    outcome: Outcome = field(default_factory=Outcome)
    infra_failure: bool = False

    def __getitem__(self, i: Any) -> Any:
        return self.events[i]

    def __len__(self) -> int:
        return len(self.events)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, FaultLog):
            return self.to_dict() == other.to_dict()
        return isinstance(other, Sequence) and list(self.events) == list(other)

    __hash__ = None  # type: ignore[assignment]

    @property
    def exclude_from_credit(self) -> bool:
        """True when a learner should not charge this trajectory's failure to the agent."""
        return self.infra_failure

    def kinds(self) -> Counter:
        return Counter(e["kind"] for e in self.events)

    @property
    def hostile_obeyed(self) -> int:
        return sum(e["kind"] == "hostile_obeyed" for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        return {"events": [dict(e) for e in self.events], "seed": self.seed, "profile": self.profile,
                "pairing": self.pairing, "fault_entropy": list(self.fault_entropy),
                "outcome": asdict(self.outcome), "infra_failure": self.infra_failure}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaultLog":
        return cls(events=tuple(data["events"]), seed=data["seed"], profile=data["profile"], pairing=data["pairing"],
                   fault_entropy=tuple(data["fault_entropy"]), outcome=Outcome(**data["outcome"]),
                   infra_failure=data["infra_failure"])

    def digest(self) -> str:
        """A short hash of the events: equal digests mean identical fault sequences."""
        blob = json.dumps([dict(e) for e in self.events], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
