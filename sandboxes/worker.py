"""The warm worker: a long-lived, stdlib-only Python process inside a sandbox that runs snippets.

It is started once per sandbox worker slot (``python -s -S -B -X utf8 -c <this file> CONFIG``)
and then serves requests over its stdin/stdout, so an execution costs no interpreter start-up.
Each snippet runs in a fresh forked child with its own rlimits, working directory, environment
and captured stdout/stderr; the worker enforces the wall-clock timeout and the output caps,
then kills every process the snippet left behind. The child for the next snippet is forked and
set up (limits, user, work dir) right after each answer, so the host waits for neither; and a
child that exits normally and left no process behind reports its exit status first, so the
answer does not wait for the kernel to tear down its address space either.

Framing: every message is ``b"<decimal length>\\n" + payload``. Requests (host to worker) are
ASCII JSON, so no byte can look like a terminal escape to a stream in between (Docker's attach
detach keys). Responses are a JSON header line followed by the raw stdout and stderr bytes.

Cleanup: when the worker is PID 1 of its PID namespace (the process backend creates one, a
container is one), ``kill(-1, SIGKILL)`` reaches every other process in the namespace, including
ones that called ``setsid()`` or double-forked, and signals sent to PID 1 from inside the
namespace are dropped by the kernel, so a snippet cannot kill its worker. Otherwise the worker
is a child subreaper and kills its descendants found through ``/proc``.

Session mode (``config["session"]``): one long-lived *session process* keeps the snippet's
globals between calls, like a notebook kernel; processes a cell started are still killed
after it. A timeout, output overflow or crash ends the session; the next call starts a fresh
one and the response says ``session_lost``.

The same file runs on the host only to build frames (:func:`encode_frame`); it imports
nothing outside the standard library.
"""
from __future__ import annotations

import builtins
import ctypes
import fcntl
import gc
import io
import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback
import types

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom")

CHUNK = 64 * 1024
DRAIN_S = 1.0  # after the snippet's processes are killed, how long the pipes may take to reach EOF
SETUP_FAILED = 125
SNIPPET = "snippet.py"

_libc = ctypes.CDLL(None, use_errno=True)


def encode_frame(payload: bytes) -> bytes:
    """One protocol message: the payload's length in ASCII digits, a newline, the payload."""
    return b"%d\n" % len(payload) + payload


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), "prctl(%d)" % option)


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]),
           "mount %s on %s" % (source or fstype, target))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- setting up the worker ------------------------------------------------------------------


def _enter_namespaces(flags: int, keep_fds: tuple) -> None:
    """unshare(2) the namespaces, then fork: the child (PID 1 of the new PID namespace) returns
    and becomes the worker; this process stays as its parent and exits the same way it does."""
    _check(_libc.unshare(flags), "unshare")
    child = os.fork()
    if child == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # our parent is killed: the whole namespace goes
        return
    for fd in keep_fds:  # only the worker may hold the protocol pipes, so EOF means it is gone
        os.close(fd)
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _bind(source: str, target: str, flags: int) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)


def _build_root(plan: dict) -> None:
    """Replace our filesystem view by a small tmpfs holding only ``plan["binds"]`` (read-only),
    a few device nodes, a fresh /proc and writable size-limited tmpfs /tmp and /dev/shm.

    The new root's own directories are root-owned 0755, so a snippet (dropped to nobody)
    gets EACCES anywhere outside /tmp and /dev/shm."""
    stage = plan["stage"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    prefix = os.path.realpath(sys.base_prefix)  # this interpreter's stdlib, wherever it lives
    binds = list(plan["binds"])
    if not any(prefix == b or prefix.startswith(b.rstrip("/") + "/") for b in binds):
        binds.append(prefix)
    for path in binds:
        if not os.path.lexists(path):
            continue
        target = stage + path
        if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
        else:
            _bind(path, target, MS_NOSUID | MS_NODEV)
    for name in DEVICES:
        _bind("/dev/" + name, stage + "/dev/" + name, MS_NOSUID)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, stage + "/dev/" + name)
    scratch = "size=%dm,nr_inodes=%d,mode=1777" % (plan["workdir_mb"], plan["max_inodes"])
    for path in ("/tmp", "/dev/shm", "/proc"):
        os.makedirs(stage + path)
    _mount("tmpfs", stage + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, scratch)
    _mount("tmpfs", stage + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777")
    os.chdir(stage)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError("pivot_root: unknown syscall number on %s" % os.uname().machine)
    _check(_libc.syscall(number, b".", b"."), "pivot_root")  # the old root is stacked under "."
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _take_protocol_fds() -> tuple:
    """Move the protocol pipes off fds 0/1 (which children will reuse) and park 0-2 on /dev/null."""
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return ctl_in, ctl_out


# --- one snippet process ----------------------------------------------------------------------


def _become_snippet(cfg: dict, fds: dict, cpu_limit: bool, workdir: str) -> None:
    """In a freshly forked child: wire stdio to ``fds`` (target fd -> source fd), close everything
    else, set limits, drop privileges and enter ``workdir``."""
    moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 3 + max(fds)) for target, source in fds.items()}
    for target, source in moved.items():  # sources are now above every target: no clobbering
        os.dup2(source, target)
    os.closerange(max(fds) + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.setsid()
    for name, soft, hard in cfg["rlimits"]:
        if name != "RLIMIT_CPU" or cpu_limit:
            resource.setrlimit(getattr(resource, name), (soft, hard))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    # We inherit the worker's "not dumpable", which makes /proc/self root-owned; a snippet should
    # own its /proc entries like any process (the worker stays protected: it is not dumpable).
    _prctl(PR_SET_DUMPABLE, 1)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # under memory pressure the kernel kills the snippet, not its worker
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(cfg["env"], HOME=workdir, TMPDIR=workdir)
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), "utf-8",
                                                   "surrogateescape", line_buffering=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", closefd=False), "utf-8",
                                                   "backslashreplace", line_buffering=True)
    builtins.exit = builtins.quit = sys.exit  # -S drops them; model code often ends with exit()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C semantics, as in any interpreter


def _fresh_main(path: str | None) -> dict:
    """A new ``__main__`` module (and argv) for the snippet; ``path`` is None in a session."""
    module = types.ModuleType("__main__")
    if path is not None:
        module.__file__ = path
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = [path or ""]
    return module.__dict__


def _execute(source: bytes, filename: str, namespace: dict) -> int:
    """Compile and run like ``python file``: the exit status, tracebacks printed without our frame."""
    try:
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 -- what the interpreter's top level would print
        tb = exc.__traceback__.tb_next  # hide this frame
        if sys.excepthook is sys.__excepthook__:  # the traceback module finds cells' source lines too
            traceback.print_exception(type(exc), exc.with_traceback(tb), tb)
        else:
            sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    return 0


def _flush() -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            return 120  # what the interpreter returns when flushing stdout fails at exit
    return 0


def _finish(code: int, done_fd: int) -> None:
    """Exit like the interpreter (wait for non-daemon threads, run atexit hooks, flush), telling the
    worker the exit status first, so that it need not wait for this process's teardown."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit
    atexit._run_exitfuncs()
    code = _flush() or code
    try:
        _write_all(done_fd, encode_frame(b"%d" % code))
    finally:
        os._exit(code)


def _prefault() -> None:
    """Run a throwaway snippet through compile, exec and print (writing nothing), so the pages a
    typical snippet touches are copied from the worker now, while the host is not waiting."""
    sink = io.StringIO()
    exec(compile("print(sum(range(1000)), [i * i for i in range(100)], {'k': 'v'}, file=sink)", "<prefault>",
                 "exec", dont_inherit=True), {"__builtins__": builtins, "sink": sink})
    for stream in (sys.stdout, sys.stderr):
        stream.write("")
        stream.flush()


def _snippet_child(cfg: dict, workdir: str, code_r: int, out_w: int, err_w: int, setup_w: int,
                   done_w: int) -> None:
    """A pre-forked snippet process: set everything up, then wait for the source on ``code_r``."""
    try:
        _become_snippet(cfg, {0: os.open(os.devnull, os.O_RDONLY), 1: out_w, 2: err_w, 3: setup_w,
                              4: code_r, 5: done_w}, True, workdir)
        os.set_inheritable(5, False)  # programs the snippet starts do not get it
        path = os.path.join(workdir, SNIPPET)
        namespace = _fresh_main(path)
        _prefault()
        with os.fdopen(4, "rb") as requests:
            source = _read_frame(requests)
        if source is None:  # the worker is shutting down
            os._exit(0)
        with open(path, "wb") as f:
            f.write(source)
    except BaseException as exc:  # noqa: BLE001 -- reported on the private channel, never by the snippet
        os.write(3, ("snippet setup failed: %r" % (exc,)).encode("utf-8", "replace"))
        os._exit(SETUP_FAILED)
    os.close(3)  # from here on the snippet runs; it can no longer reach the setup channel
    # Tracebacks name the file relative to the (unique) work dir, so they read the same every run.
    _finish(_execute(source, SNIPPET, namespace), 5)


def _session_child(cfg: dict, workdir: str, cell_r: int, done_w: int, out_w: int, err_w: int,
                   setup_w: int) -> None:
    """The session process: run each cell it is sent in one persistent ``__main__`` namespace."""
    try:
        _become_snippet(cfg, {0: os.open(os.devnull, os.O_RDONLY), 1: out_w, 2: err_w,
                              3: cell_r, 4: done_w, 5: setup_w}, False, workdir)
        namespace = _fresh_main(None)
        requests = os.fdopen(3, "rb")
        import linecache
    except BaseException as exc:  # noqa: BLE001 -- reported on the private channel, never by a cell
        os.write(5, ("session setup failed: %r" % (exc,)).encode("utf-8", "replace"))
        os._exit(SETUP_FAILED)
    os.close(5)
    cell = 0
    while True:
        request = _read_frame(requests)
        if request is None:
            os._exit(0)
        cell += 1
        filename = "<cell %d>" % cell
        source = json.loads(request)["code"]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        code = _execute(source.encode("utf-8", "surrogatepass"), filename, namespace)
        code = _flush() or code
        _write_all(4, encode_frame(b"%d" % code))


# --- the worker ---------------------------------------------------------------------------


def _read_frame(stream) -> bytes | None:
    """A frame from a blocking binary stream; None at a clean EOF."""
    header = stream.readline()
    if not header:
        return None
    payload = stream.read(int(header))
    if len(payload) != int(header):
        raise EOFError("truncated frame")
    return payload


def _pipes(n: int) -> list:
    return [os.pipe() for _ in range(n)]


def _fork(child_main, child_ends: tuple, output_ends: tuple) -> int:
    """Fork a child that runs ``child_main`` and never returns; here, close the child's pipe ends
    and make the output readers non-blocking. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            child_main()
        finally:
            os._exit(SETUP_FAILED)
    for fd in child_ends:
        os.close(fd)
    for fd in output_ends:
        os.set_blocking(fd, False)
    return pid


class _Capture:
    """Bytes read from one pipe, kept up to ``cap``; more sets ``overflow``."""

    def __init__(self, cap: int):
        self.cap, self.data, self.overflow = cap, bytearray(), False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        self.data += chunk[:room]
        self.overflow = self.overflow or len(chunk) > room


class _Prepared:
    """A pre-forked snippet process waiting for its source, and the worker's ends of its pipes."""

    def __init__(self, pid: int, code_w: int, out_r: int, err_r: int, setup_r: int, done_r: int):
        self.pid, self.code_w, self.out_r, self.err_r, self.setup_r = pid, code_w, out_r, err_r, setup_r
        self.done_r = done_r
        self.pidfd = os.pidfd_open(pid)

    def close(self) -> None:
        for fd in (self.code_w, self.out_r, self.err_r, self.setup_r, self.done_r, self.pidfd):
            if fd >= 0:
                os.close(fd)


class _Session:
    """The worker's handle on a live session process."""

    def __init__(self, pid: int, cell_w: int, done_r: int, out_r: int, err_r: int):
        self.pid, self.cell_w, self.done_r, self.out_r, self.err_r = pid, cell_w, done_r, out_r, err_r
        self.pidfd = os.pidfd_open(pid)

    def close(self) -> None:
        for fd in (self.cell_w, self.done_r, self.out_r, self.err_r, self.pidfd):
            os.close(fd)


class Worker:
    """Serves run requests read from ``ctl_in``, one at a time, answering on ``ctl_out``."""

    def __init__(self, cfg: dict, ctl_in: int, ctl_out: int):
        self.cfg, self.ctl_out = cfg, ctl_out
        self.requests = os.fdopen(ctl_in, "rb")
        self.pid1 = os.getpid() == 1
        self.session: _Session | None = None
        self.prepared: _Prepared | None = None
        self.exiting: _Prepared | None = None  # answered for, not yet reaped
        self.runs = 0
        if not self.pid1:  # orphans of snippets come back to us instead of to the host's init
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_DUMPABLE, 0)  # snippets (maybe our uid) cannot ptrace us or open /proc/<us>/fd
        # As a namespace's PID 1 we get only signals we handle; Python handles SIGINT, so drop that.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        gc.freeze()  # a collection in a child must not touch (and so copy) every page we share with it

    def serve(self) -> None:
        """Answer requests until stdin closes. In stateless mode the next snippet process is forked
        and set up right after each answer, so neither cost is paid while the host waits."""
        stateless = not self.cfg["session"]
        if stateless:
            self.prepared = self._prepare()
        self._send({"ready": True, "pid1": self.pid1, "python": sys.version.split()[0]})
        while True:
            request = _read_frame(self.requests)
            if request is None:
                break
            message = json.loads(request)
            if message.get("op") == "reset":
                header, body = self._end_session(), b""
            elif stateless:
                header, body = self._run_snippet(message["code"], float(message["timeout_s"]))
            else:
                header, body = self._run_cell(message["code"], float(message["timeout_s"]))
            self._send(header, body)
            if self.exiting is not None:
                self._sweep(keep=())
                self.exiting.close()
                self.exiting = None
            if stateless:
                self.prepared = self._prepare()
        self._sweep(keep=())
        self._wipe()

    def _send(self, header: dict, body: bytes = b"") -> None:
        _write_all(self.ctl_out, encode_frame(json.dumps(header).encode() + b"\n" + body))

    # -- stateless snippets --

    def _prepare(self) -> _Prepared:
        """Fork the next snippet process in a fresh work dir; it sets itself up and waits for code."""
        workdir = self._fresh_workdir()
        (code_r, code_w), (out_r, out_w), (err_r, err_w), (setup_r, setup_w), (done_r, done_w) = _pipes(5)
        pid = _fork(lambda: _snippet_child(self.cfg, workdir, code_r, out_w, err_w, setup_w, done_w),
                    child_ends=(code_r, out_w, err_w, setup_w, done_w), output_ends=(out_r, err_r))
        return _Prepared(pid, code_w, out_r, err_r, setup_r, done_r)

    def _run_snippet(self, code: str, timeout_s: float) -> tuple:
        start = time.monotonic()
        child, self.prepared = self.prepared, None
        try:  # undecodable text is sent as is and becomes a SyntaxError, as in a file
            _write_all(child.code_w, encode_frame(code.encode("utf-8", "surrogatepass")))
        except BrokenPipeError:
            pass  # it died while setting up: the setup channel says why
        os.close(child.code_w)
        child.code_w = -1
        out, err = _Capture(self.cfg["max_output_bytes"]), _Capture(self.cfg["max_output_bytes"])
        captures = {child.out_r: out, child.err_r: err}
        ended, exit_code = self._collect(captures, child.pidfd, child.done_r, start + timeout_s)
        if ended == "done" and self.pid1 and _alone(child.pid):
            # It reported its exit status and left no other process: answer now; it is reaped (and
            # its pipes closed) right after the answer, while its address space is torn down.
            for fd, capture in captures.items():
                _read_available(fd, capture)
            self.exiting = child
            return self._result(out, err, time.monotonic() - start, exit_code=exit_code)
        reaped = self._sweep(keep=())
        self._drain(captures)
        duration = time.monotonic() - start
        setup_error = os.read(child.setup_r, 4096)
        child.close()
        if setup_error:
            return {"setup_error": setup_error.decode("utf-8", "replace")}, b""
        status, usage = reaped[child.pid]
        stopped_for = ended if ended in ("timeout", "output_limit") else None
        cpu_s = usage.ru_utime + usage.ru_stime
        if ended == "done":  # our sweep may have caught it exiting: what it reported is its status
            return self._result(out, err, duration, exit_code=exit_code, cpu_s=cpu_s)
        return self._result(out, err, duration, stopped_for=stopped_for, status=status, cpu_s=cpu_s)

    @staticmethod
    def _result(out: _Capture, err: _Capture, duration: float, *, stopped_for: str | None = None,
                status: int | None = None, exit_code: int | None = None, cpu_s: float | None = None,
                **extra) -> tuple:
        """The response: a header (how it ended: reported ``exit_code`` or wait ``status``) and the output."""
        signum = None
        if status is not None:
            exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        header = {"stopped_for": stopped_for, "exit_code": exit_code, "signal": signum, "cpu_s": cpu_s,
                  "duration_s": duration, "stdout_bytes": len(out.data), **extra}
        return header, bytes(out.data) + bytes(err.data)

    def _collect(self, captures: dict, pidfd: int, done_fd: int, deadline: float) -> tuple:
        """Read the captures until the process reports its exit code on ``done_fd`` ("done", code), it
        exits ("exited"), the deadline passes ("timeout") or a capture overflows ("output_limit").

        The snippet can write to ``done_fd`` too: a report that is not one frame holding an integer
        is ignored (the process's exit then ends the run), and a forged one only misstates its own
        exit code, since the worker still kills every process before the next run."""
        done = _Capture(64)
        poller = select.poll()
        for fd in (*captures, pidfd, done_fd):
            poller.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", None
            for fd, _ in poller.poll(left * 1000):
                if fd == pidfd:
                    return "exited", None
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:  # (non-blocking pipes) nothing after all
                    continue
                if fd == done_fd:
                    if not chunk:
                        poller.unregister(fd)
                        continue
                    done.feed(chunk)
                    try:
                        payload = _complete_frame(done.data)
                        if payload is not None:
                            return "done", int(payload)
                    except ValueError:
                        poller.unregister(fd)
                    continue
                if not chunk:
                    poller.unregister(fd)
                    continue
                captures[fd].feed(chunk)
                if captures[fd].overflow:
                    return "output_limit", None

    def _drain(self, captures: dict) -> None:
        """Read what the (now dead) writers left in the pipes, up to EOF or DRAIN_S."""
        deadline = time.monotonic() + DRAIN_S
        open_fds = set(captures)
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], max(deadline - time.monotonic(), 0))
            for fd in ready:
                chunk = os.read(fd, CHUNK)
                if chunk:
                    captures[fd].feed(chunk)
                else:
                    open_fds.discard(fd)

    # -- session cells --

    def _start_session(self) -> str:
        """Fork the session process; the setup error it reported, or "" once it is ready for cells."""
        workdir = self._fresh_workdir()
        (cell_r, cell_w), (done_r, done_w), (out_r, out_w), (err_r, err_w), (setup_r, setup_w) = _pipes(5)
        pid = _fork(lambda: _session_child(self.cfg, workdir, cell_r, done_w, out_w, err_w, setup_w),
                    child_ends=(cell_r, done_w, out_w, err_w, setup_w), output_ends=(out_r, err_r))
        self.session = _Session(pid, cell_w, done_r, out_r, err_r)
        with open(setup_r, "rb") as setup:  # EOF once the child closed it: set up, or failed
            return setup.read().decode("utf-8", "replace")

    def _end_session(self) -> dict:
        """Kill the session process and everything else; files in the work dir go too."""
        self._sweep(keep=())
        if self.prepared is not None:
            self.prepared.close()
            self.prepared = None
        if self.session is not None:
            self.session.close()
            self.session = None
        self._wipe()
        return {"reset": True}

    def _run_cell(self, code: str, timeout_s: float) -> tuple:
        fresh = self.session is None
        if fresh:
            setup_error = self._start_session()
            if setup_error:
                self._end_session()
                return {"setup_error": setup_error}, b""
        session = self.session
        start = time.monotonic()
        try:
            _write_all(session.cell_w, encode_frame(json.dumps({"code": code}).encode()))
        except BrokenPipeError:
            pass  # the session process is gone: _collect sees it exit
        out, err = _Capture(self.cfg["max_output_bytes"]), _Capture(self.cfg["max_output_bytes"])
        captures = {session.out_r: out, session.err_r: err}
        ended, exit_code = self._collect(captures, session.pidfd, session.done_r, start + timeout_s)
        if ended == "done":
            self._sweep(keep=(session.pid,))  # the cell's background processes, not the session
            for fd, capture in captures.items():
                _read_available(fd, capture)
            return self._result(out, err, time.monotonic() - start, exit_code=exit_code,
                                session_lost=False, new_session=fresh)
        reaped = self._sweep(keep=())
        for fd, capture in captures.items():
            _read_available(fd, capture)
        status = reaped.get(session.pid, (None,))[0]
        session.close()
        self.session = None
        self._wipe()
        stopped_for = ended if ended in ("timeout", "output_limit") else None
        return self._result(out, err, time.monotonic() - start, stopped_for=stopped_for, status=status,
                            session_lost=True, new_session=fresh)

    # -- processes and files --

    def _sweep(self, keep: tuple) -> dict:
        """SIGKILL every process in our namespace (or below us) except ``keep`` and reap them:
        ``{pid: (wait status, rusage)}`` of the direct children reaped."""
        reaped = {}
        if self.pid1 and not keep:
            while True:
                try:
                    os.kill(-1, signal.SIGKILL)  # every process in the namespace but us
                except ProcessLookupError:
                    pass
                try:
                    pid, status, usage = os.wait4(-1, 0)
                except ChildProcessError:
                    return reaped
                reaped[pid] = (status, usage)
        while True:
            victims = _descendants(os.getpid(), keep)
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            progressed = False
            while True:
                try:
                    pid, status, usage = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                reaped[pid], progressed = (status, usage), True
            if not victims:
                return reaped
            if not progressed:
                time.sleep(0.0005)

    def _fresh_workdir(self) -> str:
        """Empty the scratch areas and create the next run's work dir: a path no other run (of any
        worker) uses, so a run's processes can be told apart by their working directory."""
        self._wipe()
        self.runs += 1
        path = os.path.join(self.cfg["workdir_base"], "%s-%08d" % (self.cfg["token"], self.runs))
        os.mkdir(path, 0o700)
        if self.cfg["uid"] is not None:
            os.chown(path, self.cfg["uid"], self.cfg["gid"])
        return path

    def _wipe(self) -> None:
        """Remove everything snippets may have written (the scratch areas' contents)."""
        for area in self.cfg["scratch"]:
            for name in os.listdir(area):
                path = os.path.join(area, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    _remove_tree(path)
                else:
                    os.unlink(path)


def _remove_tree(path: str) -> None:
    """rmtree that also removes directories a snippet made unreadable (chmod 000) when we are not root."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        os.chmod(path, 0o700)
        for root, dirs, _ in os.walk(path):  # top-down: each directory is opened up before it is entered
            for name in dirs:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        shutil.rmtree(path)


def _complete_frame(data: bytearray) -> bytes | None:
    """The payload when ``data`` holds one whole frame, else None."""
    newline = data.find(b"\n")
    if newline < 0:
        return None
    size = int(data[:newline])
    payload = bytes(data[newline + 1:newline + 1 + size])
    return payload if len(payload) == size else None


def _alone(pid: int) -> bool:
    """Whether ``pid`` is the only process in our PID namespace besides us (PID 1)."""
    return all(entry in ("1", str(pid)) for entry in os.listdir("/proc") if entry.isdigit())


def _read_available(fd: int, capture: _Capture) -> None:
    """Read a non-blocking pipe until it is empty."""
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            return
        capture.feed(chunk)


def _descendants(root: int, keep: tuple) -> list:
    """Live (non-zombie) processes below ``root`` according to /proc, except those in ``keep``."""
    children: dict = {}
    state = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
        state[int(entry)] = fields[0]
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if pid not in keep and state.get(pid) != b"Z":
            found.append(pid)
    return found


def main(argv: list) -> None:
    cfg = json.loads(argv[1])
    ctl_in, ctl_out = _take_protocol_fds()
    if "" in sys.path:
        sys.path.remove("")  # -c puts the working directory first; snippets must not shadow the stdlib
    try:
        if cfg["unshare"]:
            _enter_namespaces(cfg["unshare"], (ctl_in, ctl_out))
        if cfg["root"]:
            _build_root(cfg["root"])
        worker = Worker(cfg, ctl_in, ctl_out)
    except BaseException as exc:  # noqa: BLE001 -- the host turns this into a SandboxError
        _write_all(ctl_out, encode_frame(json.dumps({"ready": False, "error": repr(exc)}).encode()
                                         + b"\n"))
        os._exit(SETUP_FAILED)
    try:
        worker.serve()
    except BaseException:  # noqa: BLE001 -- a worker bug: tell the host, then leave nothing behind
        worker._send({"worker_error": traceback.format_exc()})
        worker._sweep(keep=())
        raise


if __name__ == "__main__":
    main(sys.argv)
