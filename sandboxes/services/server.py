"""Run a service: in a background thread of this process (embedded) or reached at a URL.

``embedded(kind)`` starts one shared server per service kind and process on an ephemeral
127.0.0.1 port the first time it is asked for, waits until ``GET /health`` answers, and
shuts it down at interpreter exit (or on :func:`shutdown_embedded`). ``connect(kind,
url=...)`` health-checks a service that runs elsewhere instead.
"""
from __future__ import annotations

import atexit
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import uvicorn

from sandboxes.services.api import create_api_app
from sandboxes.services.search import create_search_app

HEALTH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServiceHandle:
    """Where a service is, and the admin key its session management needs (None if it has none)."""

    kind: str
    url: str
    admin_key: str | None = None
    health: dict[str, Any] = field(default_factory=dict, compare=False)  # its GET /health when first checked


@dataclass(frozen=True)
class ServiceSpec:
    """How to build a service's ASGI app; ``admin_key`` is passed only to services with session management."""

    factory: Callable[..., Any]
    uses_admin_key: bool

    def build(self, admin_key: str | None) -> Any:
        return self.factory(admin_key) if self.uses_admin_key else self.factory()


SERVICES: dict[str, ServiceSpec] = {"search": ServiceSpec(create_search_app, False),
                                    "api": ServiceSpec(create_api_app, True)}


def _check_kind(kind: str) -> None:
    if kind not in SERVICES:
        raise ValueError(f"unknown service {kind!r}; services: {sorted(SERVICES)}")


def wait_healthy(url: str, kind: str, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
    """Poll ``GET {url}/health`` until it reports ``kind``; return its body, or raise saying what to do."""
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                r = client.get(f"{url}/health")
                if r.status_code == 200 and r.json().get("service") == kind:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError) as e:
                last = e
            time.sleep(0.05)
    raise RuntimeError(f"the {kind} service at {url} is not healthy after {timeout_s:g} s ({last}); start it with "
                       f"`python -m sandboxes.services {kind} --port <port>` or leave its URL unset to use an embedded one")


def listening_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:``port`` (0: any free port) for uvicorn to serve on.

    The protocol must be IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets
    whose ``proto`` says TCP, and without it every response waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def uvicorn_server(app: Any) -> uvicorn.Server:
    """A quiet uvicorn server for ``app`` (no access log, no lifespan, bounded graceful shutdown)."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                         timeout_graceful_shutdown=2, backlog=1024))


class ServerThread:
    """A uvicorn server for one ASGI app on 127.0.0.1, served from a daemon thread."""

    def __init__(self, app: Any, kind: str, port: int = 0):
        self.kind = kind
        self._sock = listening_socket(port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn_server(app)
        self.thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                       name=f"appo-{kind}-service", daemon=True)

    def start(self) -> dict[str, Any]:
        """Serve in the background; return the first ``GET /health`` body."""
        self.thread.start()
        try:
            return wait_healthy(self.url, self.kind)
        except RuntimeError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving, join the thread and release the port."""
        self._server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        self._sock.close()
        if self.thread.is_alive():
            raise RuntimeError(f"the embedded {self.kind} service did not stop within {timeout_s:g} s")


_lock = threading.Lock()
_embedded: dict[str, tuple[ServerThread, ServiceHandle]] = {}
_owner_pid = os.getpid()


def embedded(kind: str) -> ServiceHandle:
    """The embedded server of ``kind`` in this process, started on first use."""
    global _owner_pid
    _check_kind(kind)
    with _lock:
        if _owner_pid != os.getpid():  # a forked child does not own its parent's servers
            _embedded.clear()
            _owner_pid = os.getpid()
        if kind not in _embedded:
            admin_key = secrets.token_urlsafe(24) if SERVICES[kind].uses_admin_key else None
            app = SERVICES[kind].build(admin_key)
            server = ServerThread(app, kind)
            health = server.start()
            _embedded[kind] = (server, ServiceHandle(kind, server.url, admin_key, health))
        return _embedded[kind][1]


def embedded_threads() -> list[threading.Thread]:
    """Threads of the embedded servers that are running now (for leak checks)."""
    with _lock:
        return [s.thread for s, _ in _embedded.values() if s.thread.is_alive()]


def shutdown_embedded() -> None:
    """Stop every embedded server of this process; the next use starts fresh ones."""
    with _lock:
        servers = [s for s, _ in _embedded.values()] if _owner_pid == os.getpid() else []
        _embedded.clear()
    for server in servers:
        server.stop()


atexit.register(shutdown_embedded)


def connect(kind: str, url: str | None = None, admin_key: str | None = None, timeout_s: float = 5.0) -> ServiceHandle:
    """The service of ``kind``: at ``url`` (health-checked for up to ``timeout_s``) if given, else the embedded one."""
    _check_kind(kind)
    if url is None:
        return embedded(kind)
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{kind} service URL must start with http:// or https://, got {url!r}")
    if SERVICES[kind].uses_admin_key and not admin_key:
        raise ValueError(f"a {kind} service given by URL also needs its admin key ({kind}_admin_key=..., printed by "
                         f"`python -m sandboxes.services {kind}`)")
    return ServiceHandle(kind, url, admin_key, wait_healthy(url, kind, timeout_s))
