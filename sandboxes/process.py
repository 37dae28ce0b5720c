"""The ``process`` backend: each snippet runs in a fresh, locked-down Python interpreter.

A run starts a small *bootstrap* interpreter (as us) which unshares the network and PID
namespaces when available, then forks the snippet process. That process sets the rlimits,
drops to ``nobody`` when we are root (root ignores RLIMIT_NPROC, so the drop is what makes
the process limit real), forbids privilege gain and execs ``python -I -S`` on the snippet.
The bootstrap waits for it and exits the same way, so its status is the snippet's.

Why a bootstrap instead of ``preexec_fn``: it keeps the host's ``Popen`` fork-safe in
multi-threaded programs and gives setup failures a private channel (an error pipe the
snippet cannot write to), so a snippet can never fake a :class:`SandboxError`.

Cleanup: the snippet is PID 1 of its PID namespace, so when it exits or is killed the
kernel kills every process it started, including ones that left its process group. Without
a PID namespace we kill the snippet's process group, which misses processes that called
``setsid()``. On a timeout or an output overflow the host asks the bootstrap (SIGTERM) to
SIGKILL the snippet's group, and SIGKILLs the bootstrap's own group if it does not comply.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping

from sandboxes.base import ExecResult, ExecStatus, SandboxError
from sandboxes.isolation import IsolationReport, probe_isolation
from sandboxes.limits import SandboxLimits

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often to check whether the bootstrap exited while pipes are still open
_STOP_GRACE_S = 2.0  # time the bootstrap gets to kill the snippet before we SIGKILL it
_DRAIN_S = 0.5  # after a normal exit, how long stray pipe holders may keep us reading
_CHUNK = 64 * 1024
_SETUP_ERROR_CAP = 4096
_SYSTEM_PYTHONS_PATH = "/usr/local/bin:/usr/bin:/bin"

# Heuristic for MEMORY: with an address-space limit, Python raises MemoryError (its traceback
# ends in a line starting "MemoryError"); C code reports failed allocations in these words
# before aborting. A bare SIGSEGV/SIGKILL carries no such text and is reported as KILLED.
_MEMORY_FAILURE = re.compile(r"^MemoryError\b|Cannot allocate memory|[Oo]ut of memory|bad_alloc",
                             re.MULTILINE)

# Runs as `python -I -S -c _BOOTSTRAP CONFIG_JSON` (stdlib only). Messages written to the
# error pipe (close-on-exec, so the snippet never holds it) mean the sandbox itself failed.
_BOOTSTRAP = r"""
import ctypes, errno, json, os, resource, signal, sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
cfg = json.loads(sys.argv[1])
err_fd = cfg["err_fd"]
os.set_inheritable(err_fd, False)
libc = ctypes.CDLL(None, use_errno=True)
child = 0


def die(message):
    os.write(err_fd, message.encode("utf-8", "replace"))
    os._exit(125)


def check(rc, what):
    if rc != 0:
        die("%s failed: %s" % (what, os.strerror(ctypes.get_errno())))


def stop(signum, frame):
    # Asked by the host (timeout, output cap): kill the snippet's whole group.
    if not child:  # not forked yet (or we are the child): nothing to kill
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(child, signal.SIGKILL)
        except OSError:
            pass


def run_snippet():
    os.setpgid(0, 0)
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    for name, soft, hard in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        # Changing uid clears the parent-death signal: set it again.
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these; dispositions survive exec
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


try:
    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until `child` is set
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["unshare"]:
        check(libc.unshare(cfg["unshare"]), "unshare")
    child = os.fork()
    if child == 0:
        run_snippet()
except Exception as exc:
    busy = getattr(exc, "errno", None) == errno.EAGAIN
    die("sandbox bootstrap failed: %r%s" % (exc, " (the sandbox user already runs max_processes "
                                                 "processes: too many concurrent runs?)" if busy else ""))

os.close(err_fd)
try:
    os.setpgid(child, child)  # also done by the child; whichever runs first wins the race
except OSError:
    pass
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # exited, but keep its pid reserved
try:
    os.killpg(child, signal.SIGKILL)  # leftovers in its group (without a PID namespace)
except OSError:
    pass
_, status, usage = os.wait4(child, 0)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cfg["cpu_s"]:
        sig = signal.SIGXCPU  # the hard CPU limit's SIGKILL (the snippet ignored SIGXCPU)
    if sig != signal.SIGKILL:
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.WEXITSTATUS(status))
"""

# Runs the snippet file as __main__ under -S, restoring the exit()/quit() builtins that -S
# drops (model code often ends with exit()) and hiding this launcher's frame in tracebacks.
# stdout is line-buffered so what a snippet printed before a timeout kill is not lost
# (about 1 us per printed line).
_LAUNCHER = r"""
import builtins, sys
builtins.exit = builtins.quit = sys.exit
sys.stdout.reconfigure(line_buffering=True)
def _hide_launcher(kind, value, tb, hook=sys.__excepthook__):
    tb = tb and tb.tb_next
    hook(kind, value.with_traceback(tb), tb)
sys.excepthook = _hide_launcher
del _hide_launcher
sys.argv = sys.argv[1:]
__file__ = sys.argv[0]
del builtins, sys
exec(compile(open(__file__, "rb").read(), __file__, "exec"))
"""


class _Capture:
    """Bytes read from one pipe, stored up to ``cap``; anything beyond is counted as overflow."""

    def __init__(self, cap: int):
        self.cap = cap
        self.data = bytearray()
        self.overflow = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        self.data += chunk[:room]
        self.overflow = self.overflow or len(chunk) > room


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the bootstrap has exited, without reaping it (its pid and group stay reserved)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _communicate(proc: subprocess.Popen, err_fd: int, timeout_s: float, cap: int
                 ) -> tuple[_Capture, _Capture, _Capture, ExecStatus | None]:
    """Read stdout, stderr and the error pipe until EOF while enforcing the deadline and output cap.

    Returns the three captures and TIMEOUT/OUTPUT_LIMIT when we had to stop the snippet.
    """
    out, err, setup = _Capture(cap), _Capture(cap), _Capture(_SETUP_ERROR_CAP)
    captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, err_fd: setup}
    deadline = time.perf_counter() + timeout_s
    give_up_at: float | None = None  # set once the snippet is finished or stopped
    stopped_for: ExecStatus | None = None

    def stop(reason: ExecStatus) -> None:
        nonlocal stopped_for, give_up_at
        stopped_for, give_up_at = reason, time.perf_counter() + _STOP_GRACE_S
        os.kill(proc.pid, signal.SIGTERM)  # the bootstrap SIGKILLs the snippet's group

    with selectors.DefaultSelector() as selector:
        for fd in captures:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.perf_counter()
            if give_up_at is None:
                if now >= deadline:
                    stop(ExecStatus.TIMEOUT)
                elif _exited(proc):
                    give_up_at = now + _DRAIN_S
            elif now >= give_up_at:
                break  # something outside our reach still holds a pipe: stop reading
            wait = min(_POLL_S, (give_up_at or deadline) - now)
            for key, _ in selector.select(max(wait, 0.0)):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                capture = captures[key.fd]
                capture.feed(chunk)
                if capture.overflow and capture is not setup and stopped_for is None:
                    stop(ExecStatus.OUTPUT_LIMIT)
    return out, err, setup, stopped_for


def _reap(proc: subprocess.Popen) -> int:
    """Wait for the bootstrap; SIGKILL its process group if it ignores our stop request."""
    try:
        return proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _classify(returncode: int, stderr: str) -> ExecStatus:
    """Map an exit status (negative: killed by that signal) and stderr text to an ExecStatus."""
    if returncode == 0:
        return ExecStatus.OK
    if returncode == -signal.SIGXCPU:
        return ExecStatus.TIMEOUT
    if _MEMORY_FAILURE.search(stderr):
        return ExecStatus.MEMORY
    return ExecStatus.KILLED if returncode < 0 else ExecStatus.ERROR


def _rlimits(limits: SandboxLimits, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, soft, hard) for each rlimit the host supports; hard CPU is one second above soft."""
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


def _execute(python: str, code: str, timeout_s: float, limits: SandboxLimits,
             report: IsolationReport) -> ExecResult:
    """Run ``code`` once in a fresh working directory that is removed afterwards."""
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    try:
        script = os.path.join(workdir, "snippet.py")
        with open(script, "w", encoding="utf-8", errors="surrogatepass") as f:  # bad text: SyntaxError
            f.write(code)
        if report.drop_uid is not None:
            for path in (workdir, script):
                os.chown(path, report.drop_uid, report.drop_gid)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
        err_r, err_w = os.pipe()
        config = {
            "err_fd": err_w,
            "unshare": report.unshare_flags,
            "rlimits": _rlimits(limits, report.rlimits),
            "cpu_s": limits.cpu_time_s,
            "uid": report.drop_uid,
            "gid": report.drop_gid,
            "argv": [python, "-I", "-S", "-B", "-X", "utf8", "-c", _LAUNCHER, script],
            "env": env,
        }
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-B", "-c", _BOOTSTRAP, json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=workdir, env=env, start_new_session=True, pass_fds=(err_w,),
            )
        except OSError as exc:
            os.close(err_r)
            raise SandboxError(f"cannot start the sandbox interpreter {python!r}: {exc}; "
                               "pass python= an executable Python 3 path") from exc
        finally:
            os.close(err_w)
        with proc, open(err_r, "rb", buffering=0):
            try:
                out, err, setup, stopped_for = _communicate(proc, err_r, timeout_s, limits.max_output_bytes)
            except BaseException:  # e.g. KeyboardInterrupt in the host: never leave the snippet running
                os.kill(proc.pid, signal.SIGTERM)
                _reap(proc)
                raise
            returncode = _reap(proc)
        duration = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if setup.data:
        reason = setup.data.decode("utf-8", "replace")
        raise SandboxError(f"the process sandbox could not be set up: {reason}")
    stdout = out.data.decode("utf-8", errors="replace")
    stderr = err.data.decode("utf-8", errors="replace")
    status = stopped_for or _classify(returncode, stderr)
    return ExecResult(status=status, stdout=stdout, stderr=stderr,
                      exit_code=None if stopped_for else returncode, duration_s=duration)


@functools.lru_cache(maxsize=None)
def _resolve_python(requested: str | None) -> str:
    """The interpreter snippets run with, checked by running one: ``requested`` or a default.

    The default is sys.executable, or a system python3 when the sandbox user cannot run it:
    after dropping to ``nobody``, an interpreter installed under a private home (pyenv in
    /root, say) cannot be executed.
    """
    fallback = shutil.which("python3", path=_SYSTEM_PYTHONS_PATH)
    candidates = [requested] if requested else list(dict.fromkeys(p for p in (sys.executable, fallback) if p))
    report = probe_isolation()
    failures = []
    for python in candidates:
        try:
            result = _execute(python, "import json, select, subprocess", 30.0, SandboxLimits(), report)
        except SandboxError as exc:
            failures.append(f"{python}: {exc}")
            continue
        if result.ok:
            if failures:
                log.warning("snippets run with %s: %s", python, "; ".join(failures))
            return python
        failures.append(f"{python}: {result.status.value}: {result.stderr.strip()[-300:]}")
    user = report.drop_to_user or "the current user"
    raise SandboxError(f"no Python interpreter usable by {user} for sandboxed snippets ("
                       + "; ".join(failures) + "). Pass python= an interpreter whose installation "
                       f"{user} can read and execute (for example /usr/bin/python3).")


class ProcessSandbox:
    """Runs each snippet in its own locked-down interpreter process (see the module docstring)."""

    def __init__(self, limits: SandboxLimits | Mapping[str, int] = SandboxLimits(),
                 python: str | None = None):
        """Check the backend works here; ``limits`` may be a config dict, ``python=None`` picks a default."""
        self.limits = limits if isinstance(limits, SandboxLimits) else SandboxLimits(**limits)
        self.python = _resolve_python(python)
        self._closed = False

    @property
    def isolation(self) -> IsolationReport:
        """What isolation the snippets actually get on this host."""
        return probe_isolation()

    def run(self, code: str, timeout_s: float = 10.0) -> ExecResult:
        """Execute ``code`` as a script; the snippet's failures come back as statuses, never exceptions."""
        if self._closed:
            raise SandboxError("run() on a closed ProcessSandbox; create a new one")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return _execute(self.python, code, timeout_s, self.limits, probe_isolation())

    def close(self) -> None:
        """Refuse further runs; every run already cleans up after itself."""
        self._closed = True

    def __enter__(self) -> "ProcessSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
