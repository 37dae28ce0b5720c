"""Host side of the warm workers: the protocol, a pool of live workers, and the shared Sandbox class.

A backend only knows how to start one worker (:meth:`WarmSandbox._spawn`: a process in new
namespaces, a container) and returns a :class:`WorkerConnection` over a byte stream. Everything
else — framing, deadlines, result classification, replacing dead workers, session history
and ``fork()`` — lives here once.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import select
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Protocol

from sandboxes.base import ExecResult, ExecStatus, SandboxError
from sandboxes.limits import SandboxLimits
from sandboxes.worker import encode_frame

log = logging.getLogger(__name__)

WORKER_SOURCE = Path(__file__).with_name("worker.py").read_text(encoding="utf-8")
WORKER_FLAGS = ("-s", "-S", "-B", "-X", "utf8")  # no site dirs, no site module, no .pyc, UTF-8 I/O
WORKER_ENV = {"PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}  # same str hashes (set order) in every run
SCRATCH = ("/tmp", "/dev/shm")  # inside the sandbox: work dirs go in the first; all are emptied after every run
MAX_INODES = 4096  # files a snippet may create in the work dir (keeps the wipe after it fast)
SNIPPET_PATH = "/usr/local/bin:/usr/bin:/bin"

_WORKER_IDS = itertools.count(1)
_WORKER_GRACE_S = 5.0  # beyond the snippet's timeout, how long the worker may take to answer

# Heuristic for MEMORY: with an address-space limit, Python raises MemoryError (its traceback
# ends in a line starting "MemoryError"); C code reports failed allocations in these words
# before aborting. A bare SIGSEGV/SIGKILL carries no such text and is reported as KILLED.
_MEMORY_FAILURE = re.compile(r"^MemoryError\b|Cannot allocate memory|[Oo]ut of memory|bad_alloc",
                             re.MULTILINE)


class WorkerGone(Exception):
    """The worker's stream ended (it exited or was killed)."""


class Channel(Protocol):
    """A byte stream to one worker: its stdin for requests, its stdout for responses."""

    def send(self, data: bytes) -> None: ...

    def read(self, deadline: float) -> bytes: ...  # some bytes; b"" at EOF; TimeoutError at deadline

    def readable(self) -> bool: ...  # data or EOF waiting (an idle worker never writes)

    def close(self) -> None: ...


def wait_readable(fd: int, deadline: float) -> None:
    """Block until ``fd`` is readable; TimeoutError once ``deadline`` (time.monotonic) passes."""
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise TimeoutError


class WorkerConnection:
    """One live worker: request/response over its channel, and how to kill it for good."""

    def __init__(self, channel: Channel, kill: Callable[[], None], name: str, host_pid: int | None = None):
        self.channel, self._kill, self.name = channel, kill, name
        self.host_pid = host_pid  # the worker process as the host sees it
        self._buffer = bytearray()

    def handshake(self, timeout_s: float) -> dict:
        """Wait for the worker's ready message; SandboxError (worker killed) if it failed to set up."""
        try:
            header, _ = self._read_message(time.monotonic() + timeout_s)
        except (WorkerGone, TimeoutError, ValueError) as exc:  # ValueError: a garbled frame
            self.kill()
            raise SandboxError(f"sandbox worker {self.name} did not start "
                               f"({type(exc).__name__}: {exc or 'no answer'})") from None
        if not header.get("ready"):
            self.kill()
            why = header.get("error") or header.get("worker_error")
            raise SandboxError(f"sandbox worker {self.name} could not set up its sandbox: {why}")
        return header

    def request(self, message: dict, deadline: float) -> tuple[dict, bytes]:
        """Send one request and return the worker's (header, body); WorkerGone or TimeoutError."""
        try:
            self.channel.send(encode_frame(json.dumps(message).encode("ascii")))
        except OSError as exc:
            raise WorkerGone(str(exc)) from None
        return self._read_message(deadline)

    def _read_message(self, deadline: float) -> tuple[dict, bytes]:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                size = int(self._buffer[:newline])
                end = newline + 1 + size
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[newline + 1:end])
                    del self._buffer[:end]
                    head, _, body = payload.partition(b"\n")
                    return json.loads(head), body
            chunk = self.channel.read(deadline)
            if not chunk:
                raise WorkerGone("the worker's stream ended")
            self._buffer += chunk

    def alive(self) -> bool:
        """False when the worker has exited (an idle worker's stream only becomes readable at EOF)."""
        return not self._buffer and not self.channel.readable()

    def kill(self) -> None:
        """Stop the worker and everything it started; idempotent."""
        try:
            self.channel.close()
        finally:
            self._kill()


def snippet_rlimits(limits: SandboxLimits, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, soft, hard) per rlimit in ``names``; the hard CPU limit is one second above the soft one."""
    mib = 1024 * 1024
    wanted = {
        "RLIMIT_CPU": (limits.cpu_time_s, limits.cpu_time_s + 1),  # SIGXCPU first, then SIGKILL
        "RLIMIT_AS": (limits.memory_mb * mib,) * 2,
        "RLIMIT_NPROC": (limits.max_processes,) * 2,
        "RLIMIT_FSIZE": (limits.max_file_mb * mib,) * 2,
        "RLIMIT_NOFILE": (limits.max_open_files,) * 2,
        "RLIMIT_CORE": (0, 0),
    }
    return [(name, *wanted[name]) for name in names]


def worker_config(limits: SandboxLimits, *, session: bool, rlimits: list, unshare: int = 0,
                  root: dict | None = None, uid: int | None = None, gid: int | None = None,
                  scratch: tuple[str, ...] = SCRATCH) -> dict:
    """The JSON config a worker is started with (see sandboxes/worker.py). Work dirs are created in
    ``scratch[0]`` and named after a token unique to this worker; HOME and TMPDIR point there."""
    return {
        "unshare": unshare, "root": root, "uid": uid, "gid": gid, "session": session,
        "rlimits": rlimits, "max_output_bytes": limits.max_output_bytes,
        "workdir_base": scratch[0], "scratch": list(scratch), "token": f"w{os.getpid()}-{next(_WORKER_IDS)}",
        "env": {"PATH": SNIPPET_PATH, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONIOENCODING": "utf-8"},
    }


def classify(header: dict, stderr: str, cpu_limit_s: int) -> ExecStatus:
    """The ExecStatus of a worker's result header (stderr is used for the MEMORY heuristic)."""
    if header["stopped_for"] is not None:
        return ExecStatus(header["stopped_for"])
    sig = header["signal"]
    if sig is not None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and (header["cpu_s"] or 0) >= cpu_limit_s):
            return ExecStatus.TIMEOUT  # the CPU rlimit: soft (SIGXCPU) or hard (SIGKILL)
        return ExecStatus.MEMORY if _MEMORY_FAILURE.search(stderr) else ExecStatus.KILLED
    if header["exit_code"] == 0:
        return ExecStatus.OK
    return ExecStatus.MEMORY if _MEMORY_FAILURE.search(stderr) else ExecStatus.ERROR


class _Pool:
    """Idle warm workers; ``acquire`` hands one out (starting one if none is idle).

    At least ``keep_warm`` idle workers are kept, and as many as ever ran at once: threads that
    run concurrently (a trainer stepping envs in a thread pool) then find warm workers every
    time instead of starting and stopping one per overlapping call.
    """

    def __init__(self, spawn: Callable[[], WorkerConnection], keep_warm: int, max_workers: int | None):
        self._spawn, self._keep_warm, self._max = spawn, keep_warm, max_workers
        self._idle: list[WorkerConnection] = []
        self._busy = 0
        self._peak_busy = 0
        self._closed = False
        self._cond = threading.Condition()

    def fill(self) -> None:
        """Start workers until ``keep_warm`` are idle (surfaces set-up errors at construction)."""
        while len(self._idle) < self._keep_warm:
            self._idle.append(self._spawn())

    def acquire(self) -> WorkerConnection:
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("run() on a closed sandbox; create a new one")
                while self._idle:
                    conn = self._idle.pop()
                    if conn.alive():
                        self._mark_busy()
                        return conn
                    log.warning("sandbox worker %s died while idle; starting a new one", conn.name)
                    conn.kill()
                if self._max is None or self._busy < self._max:
                    self._mark_busy()
                    break
                self._cond.wait()
        try:
            return self._spawn()
        except BaseException:
            self.release(None)
            raise

    def _mark_busy(self) -> None:
        self._busy += 1
        self._peak_busy = max(self._peak_busy, self._busy)

    def idle(self) -> list[WorkerConnection]:
        with self._cond:
            return list(self._idle)

    def release(self, conn: WorkerConnection | None) -> None:
        """Return a healthy worker (None: it was killed) to the idle list, or stop it."""
        with self._cond:
            self._busy -= 1
            keep = conn is not None and not self._closed and len(self._idle) < max(self._keep_warm, self._peak_busy)
            if keep:
                self._idle.append(conn)
            self._cond.notify()
        if conn is not None and not keep:
            conn.kill()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for conn in idle:
            conn.kill()


_LIVE: "weakref.WeakSet[WarmSandbox]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, stop every worker this process started (containers included)."""
    for sandbox in list(_LIVE):
        sandbox.close()


class WarmSandbox:
    """A Sandbox served by warm workers that a subclass starts in :meth:`_spawn`.

    Stateless by default: every run is a fresh forked process in a fresh work dir, and up to
    ``pool_size`` idle workers are kept (concurrent runs start more, which stay warm). With ``session=True``
    one worker keeps the snippet's globals between runs, ``fork()`` returns a sandbox whose
    session was rebuilt by replaying this one's cells, and ``reset()`` empties it.
    """

    backend = "warm"

    def __init__(self, limits: SandboxLimits | dict, pool_size: int, session: bool, options: dict):
        self.limits = limits if isinstance(limits, SandboxLimits) else SandboxLimits(**limits)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self.session = bool(session)
        self._options = options  # constructor arguments, for fork()
        self._history: list[tuple[str, float, ExecStatus]] = []
        self._owner = os.getpid()
        self._pool = _Pool(self._spawn, 1 if session else pool_size, 1 if session else None)
        _LIVE.add(self)
        try:
            self._pool.fill()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> WorkerConnection:
        raise NotImplementedError

    def run(self, code: str, timeout_s: float = 10.0) -> ExecResult:
        """Execute ``code``; what the snippet does comes back as a status, never as an exception."""
        if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        conn = self._pool.acquire()
        start = time.monotonic()
        try:
            header, body = conn.request({"code": code, "timeout_s": float(timeout_s)},
                                        start + timeout_s + _WORKER_GRACE_S)
        except WorkerGone:
            self._pool.release(None)
            conn.kill()
            return self._worker_lost(ExecStatus.KILLED, start,
                                     "the sandbox worker died during this run; it was replaced")
        except TimeoutError:
            self._pool.release(None)
            conn.kill()
            return self._worker_lost(ExecStatus.TIMEOUT, start,
                                     "the sandbox worker did not stop the snippet in time; it was replaced")
        except BaseException:  # KeyboardInterrupt in the host: never leave a half-read stream behind
            self._pool.release(None)
            conn.kill()
            raise
        if "setup_error" in header or "worker_error" in header:
            self._pool.release(None)
            conn.kill()
            if "setup_error" in header:
                raise SandboxError(f"the {self.backend} sandbox could not set up a snippet: "
                                   f"{header['setup_error']}")
            log.error("sandbox worker %s failed: %s", conn.name, header["worker_error"])
            return self._worker_lost(ExecStatus.KILLED, start, "the sandbox worker failed; it was replaced")
        try:  # the session history is updated before another caller may get this worker
            return self._result(code, timeout_s, header, body, time.monotonic() - start)
        finally:
            self._pool.release(conn)

    def _result(self, code: str, timeout_s: float, header: dict, body: bytes, duration: float) -> ExecResult:
        split = header["stdout_bytes"]
        stdout = body[:split].decode("utf-8", errors="replace")
        stderr = body[split:].decode("utf-8", errors="replace")
        status = classify(header, stderr, self.limits.cpu_time_s)
        exit_code = None if header["stopped_for"] else (
            -header["signal"] if header["signal"] is not None else header["exit_code"])
        if self.session:
            if header["new_session"] and self._history:  # e.g. its worker died while idle
                self._history.clear()
                stderr = _note("this ran in a new session; variables from earlier calls are gone").lstrip("\n") + stderr
            if header["session_lost"]:
                self._history.clear()
                stderr += _note("the session ended; variables from earlier calls are gone")
            else:
                self._history.append((code, timeout_s, status))
        return ExecResult(status=status, stdout=stdout, stderr=stderr, exit_code=exit_code, duration_s=duration)

    def _worker_lost(self, status: ExecStatus, start: float, why: str) -> ExecResult:
        if self.session and self._history:
            self._history.clear()
            why += "; variables from earlier calls are gone"
        return ExecResult(status=status, stdout="", stderr=_note(why).lstrip("\n"), exit_code=None,
                          duration_s=time.monotonic() - start)

    def worker_pids(self) -> list[int]:
        """Host pids of this sandbox's idle warm workers (all of them between runs), for monitoring."""
        return [conn.host_pid for conn in self._pool.idle()]

    @property
    def history(self) -> list[str]:
        """The cells the current session state was built from (empty when not in session mode)."""
        return [code for code, _, _ in self._history]

    def fork(self) -> "WarmSandbox":
        """An independent sandbox with the same configuration; a session is rebuilt by replaying its cells."""
        clone = type(self)(**self._options)
        for code, timeout_s, status in self._history:
            replayed = clone.run(code, timeout_s)
            if replayed.status is not status:
                log.warning("fork(): replaying a cell gave %s instead of %s; the fork's state may differ",
                            replayed.status.value, status.value)
        return clone

    def reset(self) -> None:
        """Forget the session (variables and work-dir files); stateless sandboxes have nothing to reset."""
        if not self.session:
            return
        self._history.clear()
        conn = self._pool.acquire()
        try:
            conn.request({"op": "reset"}, time.monotonic() + _WORKER_GRACE_S)
        except (WorkerGone, TimeoutError):
            self._pool.release(None)
            conn.kill()
            return
        self._pool.release(conn)

    def close(self) -> None:
        """Stop this sandbox's workers; later runs raise SandboxError. Idempotent."""
        _LIVE.discard(self)
        if os.getpid() == self._owner:  # a forked child must not kill its parent's workers
            self._pool.close()

    def __enter__(self) -> "WarmSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _note(text: str) -> str:
    return f"\n[sandbox] {text}\n"
