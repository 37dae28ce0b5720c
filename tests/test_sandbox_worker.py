"""Warm workers on both backends: reuse, replacement of dead workers, pools, sessions and fork,
clean shutdown, and the errors that tell a user what to do."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

import sandboxes.process
from sandboxes import ExecStatus, ProcessSandbox, SandboxError, make_sandbox, probe_isolation
from sandbox_backends import BACKENDS, make, namespace_members, pid_namespace, require

HAS_PID_NS = probe_isolation().pid_namespace


@pytest.fixture(params=BACKENDS)
def backend(request):
    require(request.param)
    return request.param


@pytest.fixture
def box(backend):
    with make(backend) as sandbox:
        yield sandbox


def kill_worker(backend: str, sandbox, pid: int) -> None:
    """Kill a sandbox's worker (host pid ``pid``) from outside, as a crash or the OOM killer would."""
    if backend == "docker":
        sandbox.client.api.kill(_container_of(sandbox, pid))
    else:
        os.kill(pid, signal.SIGKILL)


def _container_of(sandbox, pid: int) -> str:
    for container in sandbox.client.api.containers(filters={"label": "appo-lab.sandbox=1"}):
        if sandbox.client.api.inspect_container(container["Id"])["State"]["Pid"] == pid:
            return container["Id"]
    raise AssertionError(f"no sandbox container has worker pid {pid}")


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still exist"
        time.sleep(0.05)


# --- stateless runs ---------------------------------------------------------------------------


def test_runs_reuse_one_warm_worker_but_share_nothing(box):
    (worker,) = box.worker_pids()
    first = box.run("import builtins, os\nbuiltins.leak = 1\nopen('f', 'w').write('x')\nprint(os.getcwd())")
    second = box.run("import builtins, os\nprint(hasattr(builtins, 'leak'), os.listdir('.'), os.getcwd())")
    assert first.ok and second.ok, (first, second)
    leaked, listing, cwd = second.stdout.split(" ", 2)
    assert leaked == "False" and listing == "['snippet.py']"
    assert cwd.strip() != first.stdout.strip()  # a new work dir every run
    assert box.worker_pids() == [worker]  # ...from the same warm worker


def test_tracebacks_read_the_same_every_run_and_in_every_sandbox(box):
    code = "def f():\n    return {}['missing']\nf()\n"
    first, second = box.run(code), box.run(code)
    with box.fork() as other:
        third = other.run(code)
    assert first.status is ExecStatus.ERROR and "KeyError: 'missing'" in first.stderr
    assert first.stderr == second.stderr == third.stderr
    assert 'File "snippet.py", line 2, in f' in first.stderr


def test_worker_killed_during_a_run_gives_killed_and_is_replaced(backend, box):
    (worker,) = box.worker_pids()
    timer = threading.Timer(1.0, kill_worker, (backend, box, worker))
    timer.start()
    try:
        result = box.run("import time\ntime.sleep(30)", timeout_s=20)
    finally:
        timer.join()
    assert result.status is ExecStatus.KILLED and result.duration_s < 15, result
    assert "the sandbox worker died during this run" in result.stderr
    after = box.run("print('fine')")
    assert after.ok and after.stdout == "fine\n"
    assert box.worker_pids() != [worker]


def test_worker_that_died_while_idle_is_replaced_transparently(backend, box):
    (worker,) = box.worker_pids()
    kill_worker(backend, box, worker)
    wait_gone([worker])
    result = box.run("print('fine')")
    assert result.ok and result.stdout == "fine\n", result


def test_concurrent_runs_get_their_own_workers_which_stay_warm(backend):
    with make(backend, pool_size=1) as sandbox:
        results = []

        def work():  # the sandbox shares the host's wall clock: each run reports when it ran
            results.append(sandbox.run("import time\nstart = time.time()\ntime.sleep(2)\n"
                                       "print(start, time.time())", timeout_s=30))

        def three_at_once():
            threads = [threading.Thread(target=work) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        three_at_once()
        assert all(r.ok for r in results), results
        spans = [tuple(map(float, r.stdout.split())) for r in results]
        assert max(s for s, _ in spans) < min(e for _, e in spans)  # all three ran at the same time
        warm = sorted(sandbox.worker_pids())
        assert len(warm) == 3  # as many as ran at once stay warm, beyond pool_size
        three_at_once()
        assert sorted(sandbox.worker_pids()) == warm  # the second round started no worker


def test_close_stops_every_worker_and_refuses_runs(backend):
    sandbox = make(backend)
    pids = sandbox.worker_pids()
    namespaces = {pid_namespace(p) for p in pids}
    sandbox.close()
    wait_gone(pids)
    assert namespace_members(namespaces) == set()
    with pytest.raises(SandboxError, match="closed"):
        sandbox.run("print(1)")


def test_bad_options_are_rejected(backend):
    require(backend)
    with pytest.raises(ValueError, match="pool_size"):
        make_sandbox(backend, pool_size=0)
    with pytest.raises(ValueError, match="workdir_mb"):
        make_sandbox(backend, workdir_mb=0)
    with pytest.raises(ValueError, match="memory_mb"):
        make_sandbox(backend, limits={"memory_mb": 1})


# --- sessions -------------------------------------------------------------------------------


@pytest.fixture
def session(backend):
    with make(backend, session=True) as sandbox:
        yield sandbox


def test_session_keeps_variables_functions_and_files(session):
    assert session.run("x = 41\ndef inc(v):\n    return v + 1\nopen('notes.txt', 'w').write('kept')").ok
    result = session.run("print(inc(x), open('notes.txt').read())")
    assert result.ok and result.stdout == "42 kept\n", result
    assert session.history == ["x = 41\ndef inc(v):\n    return v + 1\nopen('notes.txt', 'w').write('kept')",
                               "print(inc(x), open('notes.txt').read())"]


def test_session_error_keeps_state_and_shows_the_cell_source(session):
    session.run("x = 1")
    failed = session.run("x = 2\nraise ValueError('boom')")
    assert failed.status is ExecStatus.ERROR and 'File "<cell 2>", line 2' in failed.stderr
    assert "raise ValueError('boom')" in failed.stderr  # the source line, like a notebook
    assert session.run("print(x)").stdout == "2\n"


def test_session_kills_what_a_cell_left_running(session):
    started = session.run(textwrap.dedent("""
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
    """))
    assert started.ok, started
    assert session.run("print(p.wait(timeout=5))").stdout == f"{-signal.SIGKILL}\n"


def test_session_timeout_ends_the_session_and_says_so(session):
    session.run("x = 1")
    timed_out = session.run("while True:\n    pass", timeout_s=1)
    assert timed_out.status is ExecStatus.TIMEOUT and "the session ended" in timed_out.stderr
    assert session.history == []
    after = session.run("print('x' in globals())")
    assert after.ok and after.stdout == "False\n"


def test_session_whose_worker_died_while_idle_says_so(backend, session):
    session.run("x = 1")
    (worker,) = session.worker_pids()
    kill_worker(backend, session, worker)
    wait_gone([worker])
    result = session.run("print('x' in globals())")
    assert result.stdout == "False\n" and "variables from earlier calls are gone" in result.stderr
    assert session.history == ["print('x' in globals())"]


def test_session_fork_replays_cells_into_an_independent_sandbox(session):
    session.run("import random\nrandom.seed(7)\nnums = [random.random() for _ in range(3)]\n"
                "open('data.txt', 'w').write(str(nums))")
    with session.fork() as clone:
        assert clone.history == session.history
        clone.run("nums.append('only in the fork')")
        same = "print(nums[:3] == eval(open('data.txt').read()), len(nums))"
        assert clone.run(same).stdout == "True 4\n"
        assert session.run(same).stdout == "True 3\n"


def test_session_reset_empties_it(session):
    session.run("x = 1\nopen('f', 'w').write('x')")
    session.reset()
    code = "import os\nprint('x' in globals(), os.listdir('.'))"
    assert session.run(code).stdout == "False []\n" and session.history == [code]


# --- process backend specifics ----------------------------------------------------------------


def test_process_interpreter_that_cannot_serve_is_a_clear_error():
    with pytest.raises(SandboxError, match="did not start|could not set up"):
        ProcessSandbox(python="/bin/true")
    with pytest.raises(SandboxError, match="pass python="):
        ProcessSandbox(python="/nonexistent/python3")


@pytest.mark.skipif(not HAS_PID_NS, reason="needs a PID namespace on this host")
def test_process_without_mount_namespace_uses_a_private_host_dir(monkeypatch):
    """Hosts without a mount namespace: work dirs live in a private directory, never /tmp itself."""
    report = dataclasses.replace(probe_isolation(), mount_namespace=False)
    monkeypatch.setattr(sandboxes.process, "probe_isolation", lambda: report)
    with tempfile.NamedTemporaryFile(prefix="appo-sentinel-") as sentinel:
        with ProcessSandbox() as sandbox:
            result = sandbox.run("import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())")
            assert result.ok, result
            private = os.path.dirname(result.stdout.strip())
            assert private.startswith(tempfile.gettempdir() + "/appo-sandbox-")
            assert os.path.exists(sentinel.name)  # cleaning up after a run left the host's /tmp alone
        assert not os.path.exists(private)


# --- docker backend specifics -------------------------------------------------------------------


def test_docker_without_an_engine_says_what_to_do(monkeypatch):
    from sandboxes.docker_backend import DockerSandbox
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="start dockerd .* or set DOCKER_HOST"):
        DockerSandbox()


def test_docker_missing_image_says_how_to_build_it():
    require("docker")
    with pytest.raises(SandboxError, match="ci_docker.sh"):
        make_sandbox("docker", image="appo-no-such-image:never")


def test_docker_containers_are_labelled_locked_down_and_removed_on_close():
    from sandboxes.docker_backend import LABEL, OWNER_PID
    sandbox = make("docker", pool_size=2)
    api = sandbox.client.api
    mine = api.containers(filters={"label": [f"{LABEL}=1", f"{OWNER_PID}={os.getpid()}"]})
    assert len(mine) >= 2
    host = api.inspect_container(mine[0]["Id"])["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["Memory"] > 0 and host["PidsLimit"] > 0
    assert api.inspect_container(mine[0]["Id"])["Config"]["User"] == "10001:10001"
    sandbox.close()
    assert api.containers(all=True, filters={"label": f"{OWNER_PID}={os.getpid()}"}) == []


def test_docker_reaper_removes_containers_of_dead_owners():
    from sandboxes.docker_backend import OWNER_PID, connect, reap_orphans
    require("docker")
    client = connect()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    labels = {"appo-lab.sandbox": "1", "appo-lab.owner-host": os.uname().nodename,
              "appo-lab.owner-pid": dead, "appo-lab.owner-start": "0"}
    image = os.environ.get("APPO_SANDBOX_IMAGE", "appo-sandbox:local")
    orphan = client.api.create_container(image, command=["true"], labels=labels)["Id"]
    assert orphan in reap_orphans(client)
    assert client.api.containers(all=True, filters={"label": f"{OWNER_PID}={dead}"}) == []


def test_docker_owner_killed_with_sigkill_leaves_no_container():
    """Nothing runs the owner's cleanup; closing its attach stream stops and removes the container."""
    from sandboxes.docker_backend import OWNER_PID, connect
    require("docker")
    owner = subprocess.Popen(
        [sys.executable, "-c", "from sandboxes import make_sandbox\nimport sys, time\n"
                               "box = make_sandbox('docker')\nprint('up', flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert owner.stdout.readline() == "up\n"
    finally:
        owner.kill()
        owner.wait()
    api = connect().api
    deadline = time.monotonic() + 30
    while api.containers(all=True, filters={"label": f"{OWNER_PID}={owner.pid}"}):
        assert time.monotonic() < deadline, "the dead owner's container is still there"
        time.sleep(0.2)
