"""Thousands of executions leave nothing behind: processes, file descriptors, containers and the
worker's memory return to where they started (slow; run in CI)."""
from __future__ import annotations

import functools
import os
import time

import pytest

from sandboxes import ExecStatus
from sandbox_backends import make, namespace_members, pid_namespace

# Mostly the benchmark snippet, with errors, output floods and background processes mixed in.
MIX = [
    ("print(sum(range(1000)))", ExecStatus.OK),
    ("raise ValueError('x')", ExecStatus.ERROR),
    ("print(sum(range(1000)))", ExecStatus.OK),
    ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])", ExecStatus.OK),
    ("print(sum(range(1000)))", ExecStatus.OK),
    ("import sys\nsys.stdout.write('x' * 10 ** 6)", ExecStatus.OUTPUT_LIMIT),
    ("open('f', 'wb').write(b'x' * 10 ** 6)", ExecStatus.OK),
]


def descendants(root: int) -> set[int]:
    """Host pids below ``root`` (our own child processes: process-backend bootstraps and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@functools.lru_cache(maxsize=None)
def docker_client():
    from sandboxes.docker_backend import connect
    return connect()


def own_containers() -> int:
    from sandboxes.docker_backend import OWNER_PID
    return len(docker_client().api.containers(all=True, filters={"label": f"{OWNER_PID}={os.getpid()}"}))


def snapshot(backend: str, worker: int) -> dict[str, int]:
    """Counts once they are stable (the worker pre-forks its next child just after answering)."""
    def counts() -> dict[str, int]:
        return {
            "our processes": len(descendants(os.getpid())),
            "processes in the sandbox": len(namespace_members({pid_namespace(worker)})),
            "our open fds": len(os.listdir("/proc/self/fd")),
            "containers": own_containers() if backend == "docker" else 0,
        }
    previous, current = None, counts()
    for _ in range(50):
        if current == previous:
            break
        time.sleep(0.1)
        previous, current = current, counts()
    return current


@pytest.mark.slow
@pytest.mark.parametrize("backend,runs", [("process", 5000), ("docker", 1000)])
def test_many_executions_leak_nothing(backend, runs):
    if backend == "docker":
        own_containers()  # opens the test's own engine connection before the baseline count
    fds_before = len(os.listdir("/proc/self/fd"))
    sandbox = make(backend)
    for code, _ in MIX * 10:  # warm up: imports, allocator arenas, the docker client's pool
        sandbox.run(code, timeout_s=10)
    (worker,) = sandbox.worker_pids()
    start, rss_start = snapshot(backend, worker), rss_kib(worker)
    for i in range(runs):
        code, expected = MIX[i % len(MIX)]
        result = sandbox.run(code, timeout_s=10)
        assert result.status is expected, (i, result)
    end, rss_end = snapshot(backend, worker), rss_kib(worker)
    print(f"{backend}: {runs} runs; start {start}, end {end}; worker RSS {rss_start} -> {rss_end} KiB")
    assert sandbox.worker_pids() == [worker]  # one warm worker served every run
    assert end == start
    assert rss_end < 1.1 * rss_start
    sandbox.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    if backend == "docker":
        assert own_containers() == 0
