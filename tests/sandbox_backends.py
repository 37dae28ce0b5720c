"""Sandbox backends for the tests, and the policy when Docker is missing.

Locally a docker test is skipped with the reason; in CI (CI=true, set by .ci/run, which also
starts dockerd and builds the image) it fails, so the Docker backend is always really tested there.
"""
from __future__ import annotations

import functools
import os

from ci_policy import skip_or_fail
from sandboxes import SandboxError, make_sandbox
from sandboxes.base import Sandbox

BACKENDS = ("process", "docker")


@functools.lru_cache(maxsize=None)
def docker_problem() -> str | None:
    """Why the docker backend cannot run here (no engine, no image), or None when it can."""
    from sandboxes.docker_backend import DEFAULT_IMAGE, connect
    try:
        client = connect(timeout_s=10)
    except SandboxError as exc:
        return str(exc)
    image = os.environ.get("APPO_SANDBOX_IMAGE", DEFAULT_IMAGE)
    if not client.api.images(name=image):
        return f"image {image!r} not found; build it with scripts/ci_docker.sh"
    return None


def require(backend: str) -> None:
    """Skip (locally) or fail (in CI) the calling test when ``backend`` cannot run here."""
    problem = docker_problem() if backend == "docker" else None
    if problem:
        skip_or_fail(f"docker backend unavailable: {problem}")


def make(backend: str, **options) -> Sandbox:
    """A sandbox of ``backend`` (after :func:`require`)."""
    require(backend)
    return make_sandbox(backend, **options)


def pid_namespace(pid: int) -> str | None:
    """The PID namespace of a host process (None once it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def namespace_members(namespaces: set[str]) -> set[int]:
    """Host pids of every live process in any of ``namespaces``."""
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and pid_namespace(int(p)) in namespaces}
