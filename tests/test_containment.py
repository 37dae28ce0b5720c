"""Containment suite: hostile programs against every backend.

Each program must end with a structured status within its time limit, must not reach anything it
should not (the program prints LEAK when it does), must leave its sandbox exactly as it found it
(the worker alive and unchanged, no process but the worker and its pre-forked child, no files in
/tmp or /dev/shm from earlier runs) and must leave the host responsive. After the suite no process
in any sandbox namespace, no process it started and no container it created may remain.

What the process backend hides (root host, mount namespace): snippets see /usr, /bin, /lib*, a few
/etc files (passwd, group, hosts, nsswitch.conf, localtime, ld.so.cache, ssl, mime.types,
os-release), the interpreter's installation directory, a private /proc, /dev/{null,zero,full,
random,urandom} and private tmpfs /tmp and /dev/shm. Everything else on the host — home
directories, the project, the host's /tmp, /var — does not exist for them. Unlike Docker it has no
cgroup: memory is capped per process (RLIMIT_AS), not for all of a snippet's processes together.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from sandboxes import ExecResult, ExecStatus, SandboxLimits
from sandbox_backends import BACKENDS, docker_problem, make, namespace_members, pid_namespace, require

S = ExecStatus
MARKER = f"appo-containment-{uuid.uuid4().hex}"
SECRET_ENV = "APPO_CONTAINMENT_SECRET"
os.environ[SECRET_ENV] = MARKER  # in the host's environment before any worker starts
LIMITS = SandboxLimits(cpu_time_s=3, memory_mb=256, max_processes=32, max_file_mb=8, max_output_bytes=64 * 1024)
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    expect: frozenset  # acceptable statuses
    check: Callable[[ExecResult], bool] = lambda r: True
    timeout_s: float = TIMEOUT_S
    min_duration_s: float = 0.0  # e.g. a timeout must not fire early


def hostile(name: str, code: str, *statuses: ExecStatus, **kwargs) -> Hostile:
    return Hostile(name, code, frozenset(statuses), **kwargs)


def says(*words: str) -> Callable[[ExecResult], bool]:
    return lambda r: all(w in r.stdout for w in words)


def sleeper(tag: str) -> str:
    """argv (Python source) of a long sleep whose command line carries MARKER."""
    return f'[sys.executable, "-c", "import time; time.sleep(1000)  # {MARKER} {tag}"]'


# Helpers every program may use: try(label, fn) prints DENIED label when fn raises, LEAK label when not.
PRELUDE = '''
import ctypes, os, signal, socket, subprocess, sys, threading, time
def attempt(label, fn):
    try:
        fn()
    except BaseException as exc:
        print("DENIED", label, type(exc).__name__)
    else:
        print("LEAK", label)
'''

HOSTILES = [
    # --- processes ---
    hostile("fork_bomb", "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            S.TIMEOUT, S.KILLED),
    hostile("spawn_bomb", f"while True:\n    subprocess.Popen({sleeper('spawn')})", S.ERROR, S.TIMEOUT,
            check=lambda r: r.status is S.TIMEOUT or "Resource temporarily unavailable" in r.stderr),
    hostile("children_outlive_the_snippet",
            f"subprocess.Popen({sleeper('child')})\nsubprocess.Popen({sleeper('child2')}, start_new_session=True)\n"
            "time.sleep(0.3)\nprint('bye')", S.OK, check=says("bye")),
    hostile("double_fork_daemon", f"""
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, {sleeper('daemon')})
    os._exit(0)
os.wait()
time.sleep(0.3)
print("daemonized")""", S.OK, check=says("daemonized")),
    hostile("thread_outlives_main", "threading.Thread(target=lambda: (time.sleep(0.5), print('LEAK late')), "
            "daemon=True).start()\nprint('main done')", S.OK, check=lambda r: r.stdout == "main done\n"),
    # The worker refuses these (root) or the kernel drops them (signals to a namespace's PID 1);
    # either way the worker must be unchanged afterwards, which every test checks.
    hostile("kill_the_parent", "for pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n        pass\ntime.sleep(0.2)\nprint('still here')", S.OK, check=says("still here")),
    hostile("stop_the_parent", "for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGINT):\n    try:\n"
            "        os.kill(os.getppid(), sig)\n    except OSError:\n        pass\nprint('ok')",
            S.OK, check=says("ok")),  # a stopped worker would hang the next run
    hostile("kill_everything", f"subprocess.Popen({sleeper('victim')})\ntime.sleep(0.2)\n"
            "os.kill(-1, signal.SIGKILL)  # every process we may signal, but not ourselves\nprint('survived')",
            S.OK, check=says("survived")),
    hostile("kill_own_group", "os.killpg(0, signal.SIGKILL)", S.KILLED),
    hostile("forge_the_workers_channels", "for fd in range(3, 64):\n    try:\n        os.write(fd, b'1\\n0')\n"
            "    except OSError:\n        pass\nprint('forged', flush=True)\ntime.sleep(60)",
            S.OK, S.TIMEOUT),  # at most it misreports its own exit; it is killed all the same
    hostile("ptrace_the_parent", "libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.ptrace(16, os.getppid(), 0, 0)\nprint('LEAK ptrace' if rc == 0 else 'DENIED ptrace')",
            S.OK, check=says("DENIED ptrace")),
    hostile("read_parent_memory_and_fds",
            "attempt('parent mem', lambda: open(f'/proc/{os.getppid()}/mem', 'rb').read(1))\n"
            "attempt('parent fds', lambda: os.listdir(f'/proc/{os.getppid()}/fd'))\n"
            "attempt('parent environ', lambda: open(f'/proc/{os.getppid()}/environ').read())",
            S.OK, check=says("DENIED parent mem", "DENIED parent fds", "DENIED parent environ")),
    # --- time ---
    hostile("infinite_loop", "while True:\n    pass", S.TIMEOUT, min_duration_s=1.0),
    hostile("cpu_burn_in_many_threads", "def burn():\n    while True:\n        pass\n"
            "for _ in range(8):\n    threading.Thread(target=burn).start()\nburn()", S.TIMEOUT),
    hostile("sleep_past_the_timeout", "print('sleeping', flush=True)\ntime.sleep(60)", S.TIMEOUT,
            check=lambda r: r.stdout == "sleeping\n", min_duration_s=TIMEOUT_S - 0.5),
    hostile("ignore_every_signal", "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", S.TIMEOUT),
    hostile("close_stdout_and_hang", "os.close(1)\nos.close(2)\ntime.sleep(60)", S.TIMEOUT),
    # --- memory ---
    hostile("memory_bomb", "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", S.MEMORY),
    hostile("one_huge_allocation", "x = bytearray(8 * 1024 ** 3)", S.MEMORY),
    hostile("memory_in_many_processes", """
kids = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        try:
            block = b"x" * (150 * 1024 * 1024)  # touched, not just reserved
            time.sleep(0.5)
        finally:
            os._exit(0)
    kids.append(pid)
print([os.waitpid(k, 0)[1] for k in kids])""", S.OK, S.ERROR, S.KILLED, S.MEMORY),  # docker's cgroup may kill some
    hostile("c_stack_overflow", "sys.setrecursionlimit(10 ** 8)\nx = []\nfor _ in range(10 ** 6):\n    x = [x]\n"
            "repr(x)", S.KILLED, S.ERROR, S.MEMORY),
    hostile("segfault", "ctypes.string_at(0)", S.KILLED),
    hostile("abort", "os.abort()", S.KILLED),
    # --- files and disk ---
    hostile("disk_fill", """
n = 0
try:
    while True:
        with open(f"fill{n}", "wb") as f:
            f.write(b"x" * (4 * 1024 * 1024))
        n += 1
except OSError as exc:
    print("FULL", exc.strerror, n)""", S.OK, check=says("FULL No space left on device")),
    hostile("file_past_the_size_limit", "open('big', 'wb').write(b'x' * (20 * 1024 * 1024))", S.ERROR,
            check=lambda r: "File too large" in r.stderr),
    hostile("many_small_files", """
n = 0
try:
    while True:
        open(f"f{n}", "w").close()
        n += 1
except OSError as exc:
    print("FULL", exc.strerror, n)""", S.OK, check=says("FULL No space left on device")),
    hostile("fill_dev_shm", "attempt('fill /dev/shm', lambda: open('/dev/shm/x', 'wb').write(b'x' * (64 << 20)))",
            S.OK, check=says("DENIED fill /dev/shm")),
    hostile("leave_files_behind", "os.makedirs('deep/er', exist_ok=True)\nopen('/tmp/left.txt', 'w').write('x')\n"
            "open('/dev/shm/left', 'w').write('x')\nopen('deep/er/f', 'w').write('x')\n"
            "os.chmod('deep/er', 0)\nos.chmod('deep', 0)\nprint('left')", S.OK, check=says("left")),
    hostile("exhaust_file_descriptors", "fds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', 0))\n"
            "except OSError as exc:\n    print('EXHAUSTED', exc.strerror, len(fds))", S.OK,
            check=says("EXHAUSTED Too many open files")),
    hostile("write_outside_the_work_dir", "\n".join(
        f"attempt('write {p}', lambda: open('{p}', 'a').close())"  # append mode: a failure would truncate nothing
        for p in ("/pwned", "/etc/pwned", "/usr/pwned", "/usr/bin/python3", "/root/pwned", "/var/tmp/pwned",
                  "/home/pwned", "/proc/sys/kernel/hostname")), S.OK,
            check=lambda r: "LEAK" not in r.stdout and r.stdout.count("DENIED") == 8),
    # --- host data ---
    hostile("read_host_files", "", S.OK),  # filled in by read_host_files_program() below
    hostile("read_host_environment",
            f"import json\nprint('LEAK env' if '{SECRET_ENV}' in os.environ else 'clean env')\n"
            "for pid in ('1', 'self', str(os.getppid())):\n"
            "    try:\n        data = open(f'/proc/{pid}/environ', 'rb').read()\n    except OSError:\n"
            "        continue\n"
            f"    print('LEAK proc environ' if b'{SECRET_ENV}' in data else 'clean ' + pid)",
            S.OK, check=says("clean env")),
    # --- privileges ---
    hostile("become_root", "attempt('setuid', lambda: os.setuid(0))\nattempt('setgid', lambda: os.setgid(0))\n"
            "attempt('setgroups', lambda: os.setgroups([0]))\nprint('euid', os.geteuid())", S.OK,
            check=lambda r: "LEAK" not in r.stdout and r.stdout.count("DENIED") == 3 and "euid 0" not in r.stdout),
    hostile("no_privileges_left", "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "print('NoNewPrivs', st['NoNewPrivs'].strip(), 'CapEff', st['CapEff'].strip())",
            S.OK, check=says("NoNewPrivs 1 CapEff 0000000000000000")),
    hostile("raise_rlimits", "import resource\n" + "\n".join(
        f"attempt('raise {n}', lambda: resource.setrlimit(resource.{n}, (resource.RLIM_INFINITY,) * 2))"
        for n in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE")), S.OK,
            check=lambda r: "LEAK" not in r.stdout and r.stdout.count("DENIED") == 4),
    hostile("mount_and_reboot", "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('LEAK mount' if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0 else 'DENIED mount')\n"
            "print('LEAK reboot' if libc.reboot(0x89ABCDEF) == 0 else 'DENIED reboot')",  # RB_ENABLE_CAD: harmless
            S.OK, check=says("DENIED mount", "DENIED reboot")),
    hostile("devices", "attempt('/dev/mem', lambda: open('/dev/mem', 'rb').read(1))\n"
            "attempt('/dev/kmsg', lambda: open('/dev/kmsg', 'rb').read(1))", S.OK,
            check=lambda r: "LEAK" not in r.stdout and r.stdout.count("DENIED") == 2),
    # --- network (outside addresses are RFC 5737 TEST-NET and .invalid names: nothing real is contacted) ---
    hostile("tcp_to_a_host_port", "", S.OK),  # filled in by program() with the listening port
    hostile("tcp_out", "attempt('tcp out', lambda: socket.create_connection(('192.0.2.1', 80), timeout=2))",
            S.OK, check=says("DENIED tcp out")),
    hostile("dns_lookup", "attempt('dns', lambda: socket.getaddrinfo('appo-sandbox.invalid', 80))", S.OK,
            check=says("DENIED dns")),
    hostile("udp_out", "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "attempt('udp', lambda: s.sendto(b'x', ('192.0.2.1', 53)))", S.OK, check=says("DENIED udp")),
    hostile("new_user_namespace_then_network", "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('unshare', libc.unshare(0x10000000 | 0x40000000))\n"
            "attempt('tcp out', lambda: socket.create_connection(('192.0.2.1', 80), timeout=2))",
            S.OK, check=says("DENIED tcp out")),
    # --- output ---
    hostile("hundred_megabytes_of_output", "for _ in range(100):\n    sys.stdout.write('x' * 10 ** 6)",
            S.OUTPUT_LIMIT, check=lambda r: 0 < len(r.stdout) <= LIMITS.max_output_bytes),
    hostile("stderr_flood", "while True:\n    sys.stderr.write('e' * 4096)", S.OUTPUT_LIMIT,
            check=lambda r: len(r.stderr) <= LIMITS.max_output_bytes),
    hostile("binary_garbage_on_stdout", "sys.stdout.flush()\nos.write(1, bytes(range(256)) * 100)", S.OK,
            check=lambda r: isinstance(r.stdout, str) and "\ufffd" in r.stdout),
]

READ_HOST_FILES = """
for path in {paths!r}:
    attempt(path, lambda: open(path, "rb").read())
"""


@pytest.fixture(scope="module")
def host_secret_file():
    """A world-readable file in the host's temp dir holding MARKER: no sandbox may read it."""
    with tempfile.NamedTemporaryFile("w", prefix="appo-containment-", suffix=".txt") as f:
        f.write(MARKER)
        f.flush()
        os.chmod(f.name, 0o644)
        yield f.name


@pytest.fixture(scope="module")
def host_server():
    """A TCP server on the host's loopback: no sandbox may connect to it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def program(h: Hostile, secret_file: str, port: int) -> Hostile:
    """The hostile program with the host-specific parts (paths, port) filled in."""
    if h.name == "read_host_files":
        paths = [secret_file, os.path.abspath(__file__), "/etc/shadow", os.path.expanduser("~/.bash_history")]
        return Hostile(h.name, READ_HOST_FILES.format(paths=paths), h.expect,
                       lambda r: "LEAK" not in r.stdout and r.stdout.count("DENIED") == len(paths))
    if h.name == "tcp_to_a_host_port":
        code = f"attempt('tcp to host', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2))"
        return Hostile(h.name, code, h.expect, says("DENIED tcp to host"))
    return h


# --- bookkeeping: what the suite started, so that it can prove none of it remains ------------------

NAMESPACES: set[str] = set()


def marker_processes() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if MARKER.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def settled_members(worker: int) -> set[int]:
    """The processes in the worker's namespace once it has pre-forked its next child (two samples agree)."""
    ns = pid_namespace(worker)
    previous, deadline = None, time.monotonic() + 5
    while time.monotonic() < deadline:
        members = namespace_members({ns})
        if members == previous and len(members) >= 2:
            return members
        previous = members
        time.sleep(0.2)
    return previous


@pytest.fixture(scope="module", autouse=True)
def nothing_the_suite_started_remains():
    """After every sandbox of the suite is closed: no process in their namespaces, none carrying
    MARKER anywhere, no container owned by this process."""
    yield
    NAMESPACES.discard(None)
    assert NAMESPACES, "the suite recorded no sandbox namespaces"
    deadline = time.monotonic() + 10
    while namespace_members(NAMESPACES) or marker_processes():
        assert time.monotonic() < deadline, (namespace_members(NAMESPACES), marker_processes())
        time.sleep(0.1)
    if docker_problem() is None:
        from sandboxes.docker_backend import OWNER_PID, connect
        assert connect().api.containers(all=True, filters={"label": f"{OWNER_PID}={os.getpid()}"}) == []


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    require(request.param)
    box = make(request.param, limits=LIMITS)
    NAMESPACES.update(pid_namespace(p) for p in box.worker_pids())
    yield box
    box.close()


@pytest.mark.parametrize("h", HOSTILES, ids=[h.name for h in HOSTILES])
def test_hostile_program_is_contained(sandbox, h, host_secret_file, host_server):
    h = program(h, host_secret_file, host_server)
    (worker,) = sandbox.worker_pids()
    start = time.monotonic()
    result = sandbox.run(PRELUDE + h.code, timeout_s=h.timeout_s)
    elapsed = time.monotonic() - start
    print(f"{h.name}: {result.status.value} in {elapsed:.2f}s; stdout {result.stdout[:300]!r}; "
          f"stderr {result.stderr[-300:]!r}")
    assert result.status in h.expect, result
    assert h.min_duration_s <= elapsed < h.timeout_s + 5, elapsed
    assert "LEAK" not in result.stdout and h.check(result), result
    # The sandbox is as before: the same worker, nothing else in its namespace but its pre-forked
    # child, nothing left anywhere on the host by the program, no files left for the next run.
    assert sandbox.worker_pids() == [worker]
    assert len(settled_members(worker)) == 2
    assert marker_processes() == []
    probe_start = time.monotonic()
    probe = sandbox.run("import os\nprint(sorted(os.listdir('/tmp')) == [os.path.basename(os.getcwd())], "
                        "os.listdir('/dev/shm'))", timeout_s=10)
    assert probe.ok and probe.stdout == "True []\n", probe
    assert time.monotonic() - probe_start < 5  # the host is responsive


def test_suite_is_big_enough():
    assert len(HOSTILES) >= 25 and len({h.name for h in HOSTILES}) == len(HOSTILES)
