"""The sandbox contract: run untrusted Python and get a structured result back.

Every backend (``process``, ``docker``) implements :class:`Sandbox`; callers never see a
backend's exceptions for things the snippet did (loops, bombs, crashes): those come back as
an :class:`ExecResult` with a status. Exceptions are reserved for misuse of the API and for
an unusable backend (for example no Docker engine), and say what to do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Protocol, runtime_checkable


class ExecStatus(str, Enum):
    """How a snippet ended."""

    OK = "ok"  # exit code 0
    ERROR = "error"  # non-zero exit (uncaught exception, sys.exit(n))
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit hit
    MEMORY = "memory"  # address-space limit hit (MemoryError or allocation failure)
    KILLED = "killed"  # killed by a signal we did not send for a timeout
    OUTPUT_LIMIT = "output_limit"  # stdout or stderr exceeded its cap


@dataclass(frozen=True)
class ExecResult:
    """What one execution produced; stdout/stderr are already capped and decoded."""

    status: ExecStatus
    stdout: str
    stderr: str
    exit_code: int | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d


class SandboxError(RuntimeError):
    """The backend itself is unusable (misconfigured, engine missing); the message says how to fix it."""


@runtime_checkable
class Sandbox(Protocol):
    """Isolated execution of Python source. Implementations are context managers."""

    def run(self, code: str, timeout_s: float = 10.0) -> ExecResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Sandbox": ...

    def __exit__(self, *exc: object) -> None: ...
