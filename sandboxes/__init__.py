"""Isolated execution of untrusted, model-written Python code, behind a small backend registry."""
from __future__ import annotations

from typing import Any, Callable

from sandboxes.base import ExecResult, ExecStatus, Sandbox, SandboxError
from sandboxes.isolation import IsolationReport, probe_isolation
from sandboxes.limits import SandboxLimits
from sandboxes.process import ProcessSandbox


def _docker_sandbox(**kwargs: Any) -> Sandbox:
    """The docker backend, imported on first use (it loads the docker SDK)."""
    from sandboxes.docker_backend import DockerSandbox
    return DockerSandbox(**kwargs)


# Backend name -> factory taking the backend's keyword options.
SANDBOX_BACKENDS: dict[str, Callable[..., Sandbox]] = {"process": ProcessSandbox, "docker": _docker_sandbox}


def sandbox_factory(backend: str) -> Callable[..., Sandbox]:
    """The factory registered as ``backend``; ValueError listing the known names otherwise."""
    try:
        return SANDBOX_BACKENDS[backend]
    except KeyError:
        known = ", ".join(sorted(SANDBOX_BACKENDS))
        raise ValueError(f"unknown sandbox backend {backend!r}; known backends: {known}") from None


def make_sandbox(backend: str = "process", **kwargs: Any) -> Sandbox:
    """Create a sandbox by backend name, so configs can choose one with a string."""
    return sandbox_factory(backend)(**kwargs)


__all__ = [
    "ExecResult", "ExecStatus", "IsolationReport", "ProcessSandbox", "SANDBOX_BACKENDS", "Sandbox",
    "SandboxError", "SandboxLimits", "make_sandbox", "probe_isolation", "sandbox_factory",
]
