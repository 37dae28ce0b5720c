"""Error models: what an injected error looks like, bursty outages, and rate limiting.

* :data:`ERROR_KINDS` — how each error kind shows itself on a tool that does not handle
  faults itself (HTTP tools turn the same kinds into real HTTP behaviour in their transport).
* :class:`GilbertElliott` — bursty outages: a two-state (good/bad) Markov chain over a
  tool's calls; in the bad state calls fail with probability ``error_in_bad``.
* :class:`RateLimit` / :class:`TokenBucket` — a token bucket on the env clock; a call that
  finds no token gets HTTP 429 with ``Retry-After``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from appo_envs.faults.validation import check, check_number

# kind -> (status word, message shown to the agent). Templates may use {timeout_s} and {retry_after_s}.
ERROR_KINDS: dict[str, tuple[str, str]] = {
    "exception": ("error", "ToolError: the tool backend failed with an internal error (transient); you may retry."),
    "timeout": ("timeout", "ToolTimeout: no response from the tool within {timeout_s:g} s; you may retry."),
    "http_5xx": ("error", "HTTP 503 Service Unavailable: the service is temporarily unavailable; you may retry."),
    "http_429": ("error", "HTTP 429 Too Many Requests: rate limited; Retry-After: {retry_after_s:g} s."),
    "connection_reset": ("error", "ConnectionResetError: the connection was reset by the peer; you may retry."),
    "truncated_body": ("error", "IncompleteRead: the response body ended early; you may retry."),
    "sandbox_death": ("killed", "SandboxDied: the sandbox worker was killed during this call; its state is lost "
                                "and the next call starts a fresh sandbox. You may retry."),
}
# Error kinds a tool with ``handles_faults=True`` (an HTTP tool) must make real itself; the
# env renders every other kind (and sandbox death is always the env's job: it restarts the tool).
TRANSPORT_ERROR_KINDS = frozenset({"exception", "timeout", "http_5xx", "http_429", "connection_reset", "truncated_body"})


def render_error(kind: str, timeout_s: float, retry_after_s: float | None) -> tuple[str, str]:
    """(status, message) the agent sees for an injected error of ``kind``."""
    status, template = ERROR_KINDS[kind]
    return status, template.format(timeout_s=timeout_s, retry_after_s=retry_after_s or 0)


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty outages: per call, good -> bad with ``p_enter``, bad -> good with ``p_exit``.

    Mean outage length is ``1 / p_exit`` calls; the long-run fraction of calls in the bad
    state is ``p_enter / (p_enter + p_exit)``. The chain starts in its stationary
    distribution. A bad-state call fails with probability ``error_in_bad`` as ``kind``.
    """

    p_enter: float = 0.02
    p_exit: float = 0.25
    error_in_bad: float = 1.0
    kind: str = "http_5xx"

    def __post_init__(self) -> None:
        check_number("bursts.p_enter", self.p_enter, 0, 1)
        check_number("bursts.p_exit", self.p_exit, 0, 1, low_open=True)  # the mean burst length is 1/p_exit
        check_number("bursts.error_in_bad", self.error_in_bad, 0, 1)
        check(isinstance(self.kind, str) and self.kind in ERROR_KINDS,
              f"bursts.kind must be one of {sorted(ERROR_KINDS)}, got {self.kind!r}")

    @property
    def stationary_bad(self) -> float:
        return self.p_enter / (self.p_enter + self.p_exit)

    @property
    def mean_burst_calls(self) -> float:
        return 1.0 / self.p_exit

    def next_state(self, bad: bool | None, u: float) -> bool:
        """The state of the next call given the previous one (None: first call) and a uniform."""
        if bad is None:
            return u < self.stationary_bad
        return u >= self.p_exit if bad else u < self.p_enter

    def scaled(self, intensity: float) -> "GilbertElliott":
        return replace(self, p_enter=self.p_enter * intensity)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` tokens, refilled at ``rate_per_s`` on the env clock; one token per call."""

    rate_per_s: float = 1.0
    burst: float = 5.0

    def __post_init__(self) -> None:
        check_number("rate_limit.rate_per_s", self.rate_per_s, 0, low_open=True)
        check_number("rate_limit.burst", self.burst, 1)

    def scaled(self, intensity: float) -> "RateLimit | None":
        """Lower intensity allows more: rate and burst divided by intensity; 0 removes the limit."""
        return None if intensity == 0 else RateLimit(self.rate_per_s / intensity, self.burst / intensity)


_EPS = 1e-9


class TokenBucket:
    """The state of one :class:`RateLimit` (tokens and time of the last refill); plain data so forks copy it."""

    __slots__ = ("limit", "tokens", "t_last")

    def __init__(self, limit: RateLimit, t0: float = 0.0):
        self.limit = limit
        self.tokens = float(limit.burst)
        self.t_last = t0

    def admit(self, t: float) -> tuple[bool, float]:
        """Take a token at time ``t``; return (admitted, Retry-After in whole seconds, 0 when admitted)."""
        lim = self.limit
        if t > self.t_last:
            self.tokens = min(lim.burst, self.tokens + (t - self.t_last) * lim.rate_per_s)
            self.t_last = t
        if self.tokens >= 1.0 - _EPS:  # tolerate float rounding of elapsed time (t + retry_after - t)
            self.tokens = max(0.0, self.tokens - 1.0)
            return True, 0.0
        return False, float(max(1, math.ceil((1.0 - self.tokens) / lim.rate_per_s)))

    def __deepcopy__(self, memo: dict) -> "TokenBucket":
        clone = TokenBucket(self.limit)
        clone.tokens, clone.t_last = self.tokens, self.t_last
        return clone
