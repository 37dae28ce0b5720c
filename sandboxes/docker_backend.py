"""The ``docker`` backend: snippets run in forked children of a warm worker that is a container's PID 1.

Each warm worker is one container from the Dockerfile's ``sandbox`` image (``APPO_SANDBOX_IMAGE``,
default ``appo-sandbox:local``; build it with scripts/ci_docker.sh): no network
(``network_mode="none"``), read-only root filesystem, a size-limited tmpfs ``/tmp`` as the only
writable place, user 10001, every capability dropped, ``no-new-privileges``, and memory, CPU and
PID limits. The worker program is sent on the container's command line, so the image never
goes stale. We talk to it over the container's attached stdin/stdout (measured: the attach
stream answers faster than an exec session, and it keeps the worker PID 1, which snippets
cannot signal).

Nothing outlives its owner: every container carries ``appo-lab.*`` labels naming the owning
host and process; containers are removed on ``close()`` and at interpreter exit; the attach
stream is the container's stdin with ``StdinOnce``, so if the owner dies without cleaning up,
the worker reads EOF, exits and the engine removes the container (``auto_remove``); and
:func:`reap_orphans` (run whenever a DockerSandbox is created) removes labelled containers whose
owner process is gone.
"""
from __future__ import annotations

import json
import os
import select
import socket
import time
from typing import Any, Mapping

from sandboxes.base import SandboxError
from sandboxes.isolation import RLIMIT_NAMES
from sandboxes.limits import SandboxLimits
from sandboxes.warm import (MAX_INODES, WORKER_ENV, WORKER_FLAGS, WORKER_SOURCE, WarmSandbox, WorkerConnection,
                            snippet_rlimits, wait_readable, worker_config)

DEFAULT_IMAGE = "appo-sandbox:local"
SANDBOX_UID = 10001  # the image's unprivileged user (see Dockerfile)
LABEL = "appo-lab.sandbox"
OWNER_HOST, OWNER_PID, OWNER_START = "appo-lab.owner-host", "appo-lab.owner-pid", "appo-lab.owner-start"
_WORKER_MEMORY_MB = 64  # the worker interpreter itself, beyond what snippets may use
_WORKER_PIDS = 4  # the worker and its pre-forked child, beyond the snippets' max_processes
_START_TIMEOUT_S = 60.0
_REMOVE_TIMEOUT_S = 20.0
_HEADER = 8  # Docker's stream multiplexing: 1 byte stream id, 3 zero bytes, 4 bytes big-endian size
_ENGINE_HINT = ("start dockerd (scripts/ci_docker.sh does, as root) or set DOCKER_HOST to a reachable "
                "engine, or use the process backend (sandbox='process')")


def _process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of ``pid``, which tells a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {LABEL: "1", OWNER_HOST: socket.gethostname(), OWNER_PID: str(pid),
            OWNER_START: _process_start(pid) or ""}


def connect(timeout_s: float = 30.0) -> Any:
    """A docker SDK client for the engine at DOCKER_HOST (or the default socket); SandboxError if none answers."""
    try:
        import docker
    except ImportError as exc:
        raise SandboxError(f"the docker backend needs the docker SDK (pip install docker): {exc}") from exc
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise SandboxError(f"no Docker engine reachable at {where}: {exc}; {_ENGINE_HINT}") from None
    return client


def reap_orphans(client: Any) -> list[str]:
    """Remove this host's labelled sandbox containers whose owner process no longer exists; their ids."""
    import docker
    host = socket.gethostname()
    removed = []
    for container in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = container.get("Labels") or {}
        if labels.get(OWNER_HOST) != host:
            continue  # another machine's: we cannot tell whether its owner lives
        pid = labels.get(OWNER_PID, "")
        if pid.isdigit() and _process_start(int(pid)) == labels.get(OWNER_START):
            continue
        try:
            client.api.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # 409: the engine is already removing it
            if exc.status_code != 409:
                raise
        removed.append(container["Id"])
    return removed


class _AttachChannel:
    """A container's attached stdin/stdout: requests in, de-multiplexed stdout frames out."""

    def __init__(self, sock: Any):
        # The SDK returns a read-only socket.SocketIO over the engine's hijacked HTTP connection;
        # writing to the container's stdin needs the socket under it (the SDK documents ``_sock``).
        self._io = sock
        self.sock = sock._sock
        self.fd = self.sock.fileno()
        self._raw = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, deadline: float) -> bytes:
        while True:
            payload = self._next_payload()
            if payload is not None:
                return payload
            wait_readable(self.fd, deadline)
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                return b""
            self._raw += chunk

    def _next_payload(self) -> bytes | None:
        """The next complete stdout chunk in the buffer (stderr chunks are skipped)."""
        while len(self._raw) >= _HEADER:
            size = int.from_bytes(self._raw[4:_HEADER], "big")
            if len(self._raw) < _HEADER + size:
                return None
            stream = self._raw[0]
            payload = bytes(self._raw[_HEADER:_HEADER + size])
            del self._raw[:_HEADER + size]
            if stream == 1:
                return payload
        return None

    def readable(self) -> bool:
        return bool(self._raw) or bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        self._io.close()
        self.sock.close()


class DockerSandbox(WarmSandbox):
    """Runs snippets in forked children of warm workers, one per locked-down container (see the module docstring)."""

    backend = "docker"

    def __init__(self, limits: SandboxLimits | Mapping[str, int] = SandboxLimits(), image: str | None = None,
                 pool_size: int = 1, session: bool = False, workdir_mb: int = 64, cpus: float = 1.0):
        """``image`` defaults to $APPO_SANDBOX_IMAGE or appo-sandbox:local; ``workdir_mb`` sizes the tmpfs
        /tmp; ``cpus`` caps each container's CPU share."""
        if isinstance(workdir_mb, bool) or not isinstance(workdir_mb, int) or workdir_mb < 1:
            raise ValueError(f"workdir_mb must be an int >= 1, got {workdir_mb!r}")
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
            raise ValueError(f"cpus must be a number > 0, got {cpus!r}")
        import docker
        self.image = image or os.environ.get("APPO_SANDBOX_IMAGE", DEFAULT_IMAGE)
        self.workdir_mb, self.cpus = workdir_mb, float(cpus)
        self.client = connect()
        try:
            self.client.api.inspect_image(self.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(f"Docker image {self.image!r} not found; build it with scripts/ci_docker.sh "
                               f"(offline) or `docker build --target sandbox -t {self.image} .`") from None
        reap_orphans(self.client)
        super().__init__(limits, pool_size, session,
                         dict(limits=limits, image=image, pool_size=pool_size, session=session,
                              workdir_mb=workdir_mb, cpus=cpus))

    def _spawn(self) -> WorkerConnection:
        import docker
        api = self.client.api
        limits = self.limits
        rlimits = snippet_rlimits(limits, tuple(n for n in RLIMIT_NAMES if n != "RLIMIT_NPROC"))
        # RLIMIT_NPROC counts the uid's processes in every container on the host; pids_limit is per container.
        config = worker_config(limits, session=self.session, rlimits=rlimits)
        memory = f"{limits.memory_mb + self.workdir_mb + _WORKER_MEMORY_MB}m"  # tmpfs pages count too
        host_config = api.create_host_config(
            network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.workdir_mb}m,nr_inodes={MAX_INODES},mode=1777"},
            shm_size="1m", ipc_mode="private", mem_limit=memory, memswap_limit=memory,
            nano_cpus=int(self.cpus * 1e9), pids_limit=limits.max_processes + _WORKER_PIDS,
            ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)], auto_remove=True, init=False,
        )
        try:
            container = api.create_container(
                self.image, command=["python3", *WORKER_FLAGS, "-c", WORKER_SOURCE, json.dumps(config)],
                user=f"{SANDBOX_UID}:{SANDBOX_UID}", environment=dict(WORKER_ENV), working_dir="/tmp",
                hostname="sandbox", labels=_owner_labels(), host_config=host_config,
                stdin_open=True, detach=False, tty=False,  # detach=False: StdinOnce (see module docstring)
            )["Id"]
        except docker.errors.APIError as exc:
            raise SandboxError(f"the Docker engine refused a sandbox container from {self.image!r}: {exc}") from exc
        try:
            sock = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stream": 1})
            api.start(container)
        except BaseException as exc:
            self._remove(container)
            if isinstance(exc, docker.errors.APIError):
                raise SandboxError(f"a sandbox container from {self.image!r} did not start: {exc}") from exc
            raise
        pid = api.inspect_container(container)["State"]["Pid"] or None
        conn = WorkerConnection(_AttachChannel(sock), lambda: self._remove(container),
                                f"container {container[:12]}", host_pid=pid)
        conn.handshake(_START_TIMEOUT_S)
        return conn

    def close(self) -> None:
        """Remove this sandbox's containers, then close the engine connection."""
        super().close()
        if os.getpid() == self._owner:
            self.client.close()

    def _remove(self, container: str) -> None:
        """Force-remove a container and wait until the engine no longer lists it."""
        import docker
        api = self.client.api
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        while True:
            try:
                api.remove_container(container, force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:  # 409: auto-remove under way
                    raise
            time.sleep(0.05)
