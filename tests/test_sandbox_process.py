"""The process sandbox: statuses, limits, isolation and that nothing a snippet starts outlives run()."""
from __future__ import annotations

import json
import os
import resource
import socket
import textwrap
import time
import uuid

import pytest

from sandboxes import (ExecStatus, ProcessSandbox, Sandbox, SandboxError, SandboxLimits, make_sandbox,
                       probe_isolation)

# Every long-lived process a test snippet starts carries this in its command line.
MARKER = f"appo-sandbox-test-{uuid.uuid4().hex}"
ISOLATION = probe_isolation()


def processes_matching(text: str) -> list[int]:
    """Host pids whose command line or working directory contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode("utf-8", "replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if text in cmdline or text in cwd:
            found.append(int(entry))
    return found


def sleeper_command(tag: str) -> str:
    """Python source for argv that sleeps forever and is recognisable in /proc by MARKER."""
    return f'[sys.executable, "-c", "import time; time.sleep(1000)  # {MARKER} {tag}"]'


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """After all tests: no process started by any test snippet may still exist."""
    yield
    assert processes_matching(MARKER) == []


@pytest.fixture(scope="module")
def sandbox():
    with ProcessSandbox() as box:
        yield box


def test_isolation_report_is_consistent(sandbox):
    print(f"isolation: {ISOLATION}; snippets run with {sandbox.python}")
    assert sandbox.isolation == ISOLATION
    assert "RLIMIT_AS" in ISOLATION.rlimits and "RLIMIT_NPROC" in ISOLATION.rlimits
    assert (ISOLATION.drop_to_user is not None) == (os.geteuid() == 0)


def test_satisfies_protocol_and_prints_hello(sandbox):
    assert isinstance(sandbox, Sandbox)
    result = sandbox.run("print('hello')", timeout_s=5)
    assert result.status is ExecStatus.OK and result.ok
    assert result.stdout == "hello\n" and result.stderr == ""
    assert result.exit_code == 0 and 0 < result.duration_s < 5


def test_exit_builtin_works_without_site(sandbox):
    assert sandbox.run("print(1)\nexit()", timeout_s=5).status is ExecStatus.OK
    result = sandbox.run("exit(3)", timeout_s=5)
    assert result.status is ExecStatus.ERROR and result.exit_code == 3


def test_exception_is_error_with_traceback(sandbox):
    result = sandbox.run("def f():\n    return 1 / 0\nf()\n", timeout_s=5)
    assert result.status is ExecStatus.ERROR and result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ZeroDivisionError" in result.stderr and "snippet.py" in result.stderr
    assert '"<string>"' not in result.stderr  # the launcher's frame is hidden


def test_syntax_error_is_error(sandbox):
    result = sandbox.run("def f(:\n    pass\n", timeout_s=5)
    assert result.status is ExecStatus.ERROR and "SyntaxError" in result.stderr


def test_infinite_loop_times_out_quickly(sandbox):
    start = time.perf_counter()
    result = sandbox.run("print('before', flush=True)\nwhile True:\n    pass\n", timeout_s=1)
    assert result.status is ExecStatus.TIMEOUT and result.exit_code is None
    assert time.perf_counter() - start < 3 and 1 <= result.duration_s < 3
    assert result.stdout == "before\n"  # output before the kill is kept


def test_children_die_with_a_timed_out_snippet(sandbox):
    lines = [
        "import os, subprocess, sys, time",
        f"subprocess.Popen({sleeper_command('popen')})",
        "if os.fork() == 0:",
        f"    os.execv(sys.executable, {sleeper_command('fork')})",
    ]
    if ISOLATION.pid_namespace:  # only a PID namespace catches processes that leave the group
        lines += [
            "if os.fork() == 0:",
            "    os.setsid()",
            f"    os.execv(sys.executable, {sleeper_command('setsid')})",
        ]
    lines += ["time.sleep(0.3)", "print('started', flush=True)", "while True:", "    pass"]
    result = sandbox.run("\n".join(lines), timeout_s=1.5)
    assert result.status is ExecStatus.TIMEOUT and "started" in result.stdout, result
    assert processes_matching(MARKER) == []


def test_background_child_dies_when_snippet_exits(sandbox):
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen({sleeper_command("background")}, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        print("leaving")
    """)
    result = sandbox.run(code, timeout_s=5)
    assert result.status is ExecStatus.OK and result.stdout == "leaving\n", result
    assert processes_matching(MARKER) == []


@pytest.mark.parametrize("code", [
    "x = bytearray(2 * 1024 ** 3)",
    "x = []\nwhile True:\n    x.append(bytearray(10 ** 6))",
])
def test_memory_hog_is_memory(sandbox, code):
    result = sandbox.run(code, timeout_s=10)
    assert result.status is ExecStatus.MEMORY, result


def test_output_flood_is_capped_fast_and_cheap(sandbox):
    cap = sandbox.limits.max_output_bytes
    peak_kib_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    flood = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10 ** 6)\n"  # 100 MB
    result = sandbox.run(flood, timeout_s=20)
    assert result.status is ExecStatus.OUTPUT_LIMIT
    assert 0 < len(result.stdout) <= cap
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib_before < 50 * 1024


def test_stderr_flood_is_capped_too(sandbox):
    result = sandbox.run("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n", timeout_s=10)
    assert result.status is ExecStatus.OUTPUT_LIMIT
    assert len(result.stderr) <= sandbox.limits.max_output_bytes


@pytest.mark.skipif(not ISOLATION.net_namespace,
                    reason="no network namespace on this host: snippets can reach the network")
def test_network_is_unreachable(sandbox):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = textwrap.dedent(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print("CONNECTED")
            except OSError as exc:
                print("CONNECT-FAILED", exc)
        """)
        result = sandbox.run(code, timeout_s=5)
    assert result.status is ExecStatus.OK and result.stdout.startswith("CONNECT-FAILED"), result


def test_host_environment_does_not_leak(sandbox, monkeypatch):
    monkeypatch.setenv("APPO_SECRET_TEST", "x")
    result = sandbox.run("import json, os\nprint(json.dumps(dict(os.environ)))", timeout_s=5)
    env = json.loads(result.stdout)
    assert "APPO_SECRET_TEST" not in env
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "LC_CTYPE"}
    assert set(env) <= allowed


def test_snippet_reads_its_own_files_in_a_fresh_workdir_that_is_removed(sandbox):
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(open('note.txt').read(), os.getcwd())"
    first = sandbox.run(code, timeout_s=5)
    second = sandbox.run("import os\nprint(os.listdir('.'))", timeout_s=5)
    assert first.status is ExecStatus.OK and first.stdout.startswith("hi ")
    assert not os.path.exists(first.stdout.split()[1])
    assert second.stdout.strip() == "['snippet.py']"


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are only dropped when the host runs as root")
def test_root_drops_to_nobody(sandbox):
    result = sandbox.run("import os\nprint(os.getuid(), os.getgid())\nopen('/root/x', 'w')", timeout_s=5)
    assert result.stdout.split() == [str(ISOLATION.drop_uid), str(ISOLATION.drop_gid)]
    assert result.status is ExecStatus.ERROR and "PermissionError" in result.stderr


def test_file_size_limit(sandbox):
    result = sandbox.run("open('big', 'wb').write(b'x' * (20 * 1024 * 1024))", timeout_s=5)
    assert result.status is ExecStatus.ERROR and "File too large" in result.stderr


def test_fork_bomb_is_contained(sandbox):
    code = textwrap.dedent("""
        import os
        print(os.getcwd(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    start = time.perf_counter()
    result = sandbox.run(code, timeout_s=2)
    assert time.perf_counter() - start < 6
    assert result.status is not ExecStatus.OK, result
    workdir = result.stdout.splitlines()[0]
    assert processes_matching(workdir) == []
    assert sandbox.run("print('still fine')", timeout_s=5).stdout == "still fine\n"


def test_cpu_time_limit_is_timeout():
    sandbox = ProcessSandbox(SandboxLimits(cpu_time_s=1))
    result = sandbox.run("while True:\n    pass\n", timeout_s=10)
    assert result.status is ExecStatus.TIMEOUT and result.duration_s < 5, result


def test_run_after_close_raises():
    with make_sandbox() as box:
        assert isinstance(box, ProcessSandbox)
    with pytest.raises(SandboxError, match="closed"):
        box.run("print(1)")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match="process"):
        make_sandbox("nope")


@pytest.mark.parametrize("kwargs", [{"memory_mb": 0}, {"cpu_time_s": 1.5}, {"max_processes": True},
                                    {"max_output_bytes": -1}])
def test_limits_are_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SandboxLimits(**kwargs)


def test_bad_timeout_is_rejected(sandbox):
    with pytest.raises(ValueError, match="timeout_s"):
        sandbox.run("print(1)", timeout_s=0)


def test_limits_may_come_from_a_config_dict():
    box = make_sandbox("process", limits={"max_output_bytes": 10})
    result = box.run("print('x' * 100)", timeout_s=5)
    assert result.status is ExecStatus.OUTPUT_LIMIT and len(result.stdout) <= 10


def test_snippet_cannot_reach_the_setup_error_channel(sandbox):
    result = sandbox.run("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'fake')\n"
                         "    except OSError:\n        pass\nraise SystemExit(125)", timeout_s=5)
    assert result.status is ExecStatus.ERROR and result.exit_code == 125
