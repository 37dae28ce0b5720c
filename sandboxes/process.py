"""The ``process`` backend: snippets run in forked children of a warm worker in its own namespaces.

Start-up (once per worker): a bootstrap interpreter (as us) unshares the network, PID and —
when we are root — mount namespaces, and forks the worker, which is PID 1 of the new PID
namespace. As root the worker then replaces its filesystem view by a read-only tmpfs holding
only the system directories (``/usr``, ``/lib*``, a few ``/etc`` files), the interpreter's own
installation, a fresh ``/proc``, a few device nodes and a size-limited tmpfs ``/tmp``, so host
files (home directories, the project, the host's /tmp) do not exist for snippets.

Per snippet (see sandboxes/worker.py): the worker forks a child that sets the rlimits, drops to
``nobody`` when we are root (root ignores RLIMIT_NPROC, so the drop is what makes the process
limit real), forbids privilege gain and runs the code in a fresh work dir, /tmp/work. The
worker enforces the timeout and output caps and then kills every other process in its PID
namespace, so nothing a snippet starts outlives its run, whatever it did (``setsid()``,
double forks). Snippets cannot signal the worker: it is root and PID 1 of its namespace.
Without a PID namespace (unprivileged, no user namespaces) the worker is a child subreaper and
kills the snippet's descendants instead.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Mapping

from sandboxes.base import SandboxError
from sandboxes.isolation import IsolationReport, probe_isolation
from sandboxes.limits import SandboxLimits
from sandboxes.warm import (MAX_INODES, WORKER_ENV, WORKER_FLAGS, WORKER_SOURCE, WarmSandbox, WorkerConnection,
                            snippet_rlimits, wait_readable, worker_config)

_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 2.0

# What snippets see of the host's filesystem (read-only) when a mount namespace is available.
# Missing paths are skipped; symlinks (/bin -> usr/bin) are recreated as symlinks.
SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime",
    "/etc/ld.so.cache", "/etc/ssl", "/etc/mime.types", "/etc/os-release",
)


class _PipeChannel:
    """The worker's stdin/stdout pipes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._in, self._out = proc.stdin.fileno(), proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._in, view):]

    def read(self, deadline: float) -> bytes:
        wait_readable(self._out, deadline)
        return os.read(self._out, 256 * 1024)

    def readable(self) -> bool:
        return bool(select.select([self._out], [], [], 0)[0])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.stdout.close()


def _stop(proc: subprocess.Popen) -> None:
    """Wait briefly for the bootstrap to exit after EOF, then SIGKILL its group (the worker dies with it)."""
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _only_child(pid: int) -> int:
    """The bootstrap's one child: the worker, as the host sees it."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    if len(children) != 1:
        raise SandboxError(f"sandbox bootstrap (pid {pid}) has {len(children)} children, expected its worker alone")
    return children[0]


class ProcessSandbox(WarmSandbox):
    """Runs snippets in forked children of warm, namespaced workers (see the module docstring)."""

    backend = "process"

    def __init__(self, limits: SandboxLimits | Mapping[str, int] = SandboxLimits(), python: str | None = None,
                 pool_size: int = 1, session: bool = False, workdir_mb: int = 64):
        """``limits`` may be a config dict; ``python`` is the interpreter workers run (default: ours);
        ``workdir_mb`` sizes the tmpfs /tmp snippets write to (with a mount namespace)."""
        if isinstance(workdir_mb, bool) or not isinstance(workdir_mb, int) or workdir_mb < 1:
            raise ValueError(f"workdir_mb must be an int >= 1, got {workdir_mb!r}")
        self.python = os.path.realpath(python or sys.executable)  # a venv's python: its base interpreter
        if not os.access(self.python, os.X_OK):
            raise SandboxError(f"cannot run the sandbox interpreter {self.python!r}; "
                               "pass python= an executable Python 3 path")
        self.workdir_mb = workdir_mb
        super().__init__(limits, pool_size, session,
                         dict(limits=limits, python=python, pool_size=pool_size, session=session,
                              workdir_mb=workdir_mb))

    @property
    def isolation(self) -> IsolationReport:
        """What isolation the snippets actually get on this host."""
        return probe_isolation()

    def _spawn(self) -> WorkerConnection:
        report = probe_isolation()
        stage = tempfile.mkdtemp(prefix="appo-sandbox-root-") if report.mount_namespace else None
        root = None if stage is None else {"stage": stage, "binds": list(SYSTEM_PATHS),
                                           "workdir_mb": self.workdir_mb, "max_inodes": MAX_INODES}
        scratch = None
        if stage is None:  # no private /tmp: work dirs go below a private host directory, never /tmp itself
            scratch = tempfile.mkdtemp(prefix="appo-sandbox-")
            if report.drop_uid is not None:
                os.chown(scratch, report.drop_uid, report.drop_gid)
        config = worker_config(self.limits, session=self.session, rlimits=snippet_rlimits(self.limits, report.rlimits),
                               unshare=report.unshare_flags, root=root, uid=report.drop_uid, gid=report.drop_gid,
                               **({} if scratch is None else {"scratch": (scratch,)}))
        try:
            proc = subprocess.Popen(
                [self.python, *WORKER_FLAGS, "-c", WORKER_SOURCE, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd="/", env=dict(WORKER_ENV, PATH="/usr/bin:/bin"), start_new_session=True,
            )
        except OSError as exc:
            for path in (stage, scratch):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            raise SandboxError(f"cannot start the sandbox interpreter {self.python!r}: {exc}; "
                               "pass python= an executable Python 3 path") from exc

        def kill() -> None:
            _stop(proc)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

        conn = WorkerConnection(_PipeChannel(proc), kill, f"pid {proc.pid}")
        try:
            conn.handshake(_START_TIMEOUT_S)
        finally:
            if stage is not None:
                os.rmdir(stage)  # only the worker's namespace still has a mount there
        try:
            conn.host_pid = _only_child(proc.pid) if report.unshare_flags else proc.pid
        except BaseException:
            conn.kill()
            raise
        return conn
