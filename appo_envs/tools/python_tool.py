"""The ``python`` tool: runs the agent's code in a sandbox and shows it stdout/stderr."""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from sandboxes import ExecResult, ExecStatus, Sandbox, make_sandbox, sandbox_factory

from appo_envs.tools.base import ToolOutput


def format_exec_result(result: ExecResult, timeout_s: float) -> str:
    """What the agent reads: stdout, stderr and a line explaining any abnormal end."""
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("stderr:\n" + result.stderr.rstrip("\n"))
    reason = {
        ExecStatus.TIMEOUT: f"Execution stopped: time limit of {timeout_s:g} s exceeded.",
        ExecStatus.MEMORY: "Execution stopped: memory limit exceeded.",
        ExecStatus.KILLED: "Execution stopped: the process was killed.",
        ExecStatus.OUTPUT_LIMIT: "Execution stopped: output limit exceeded (output above is cut).",
    }.get(result.status)
    if reason:
        parts.append(reason)
    if result.status is ExecStatus.ERROR and result.exit_code is not None and not result.stderr:
        parts.append(f"Process exited with code {result.exit_code}.")
    return "\n".join(parts) if parts else "(no output)"


class _SharedSandboxes:
    """Stateless sandboxes shared by every PythonTool of this process with the same backend and options.

    Runs in a stateless sandbox cannot see each other, so tools (and their forks, which branching
    rollouts make by the thousand) share one pool of warm workers instead of starting their own.
    Keyed by pid too: a forked child process must not talk to its parent's workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, list] = {}  # key -> [sandbox, number of tools holding it]

    @staticmethod
    def _key(backend: str, options: dict[str, Any]) -> tuple:
        return os.getpid(), backend, json.dumps(options, sort_keys=True, default=repr)

    def acquire(self, backend: str, options: dict[str, Any]) -> Sandbox:
        key = self._key(backend, options)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [make_sandbox(backend, **options), 0]
            entry[1] += 1
            return entry[0]

    def release(self, backend: str, options: dict[str, Any]) -> None:
        key = self._key(backend, options)
        with self._lock:
            entry = self._entries[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._entries[key]
                entry[0].close()


_SHARED = _SharedSandboxes()


class PythonTool:
    """Executes Python source in a sandbox created lazily from ``backend`` and ``sandbox_options``.

    Stateless by default (tools with equal settings share warm workers, so ``close()`` — also an
    injected sandbox death — drops this tool's share; the workers stop with the last one). With
    ``sandbox_options={"session": True}`` variables persist between calls like a notebook:
    ``reset`` empties the session, ``fork`` rebuilds it by replaying the cells, and ``close()``
    kills its worker.

    The env clock is charged ``nominal_latency_s`` per run (``timeout_s`` on a timeout), not
    the measured wall time, so that episodes replay identically on any machine.
    """

    name = "python"
    handles_faults = False  # the env renders injected errors for this tool (faults/apply.py); HTTP tools make them real
    description = ("Run Python 3 code (standard library only) in an isolated sandbox with no network "
                   "and no state between calls. Print what you want to see; stdout and stderr are returned.")
    session_description = ("Run Python 3 code (standard library only) in an isolated sandbox with no network. "
                           "Variables, functions and files persist between calls, like a notebook. "
                           "Print what you want to see; stdout and stderr are returned.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to execute"}},
        "required": ["code"],
    }

    def __init__(self, backend: str = "process", sandbox_options: dict[str, Any] | None = None,
                 nominal_latency_s: float = 0.05):
        sandbox_factory(backend)  # an unknown backend fails at construction, not at the first call
        self.backend = backend
        self.sandbox_options = dict(sandbox_options or {})
        self.nominal_latency_s = nominal_latency_s
        self.session = bool(self.sandbox_options.get("session", False))
        if self.session:
            self.description = self.session_description
        self._sandbox: Sandbox | None = None

    def _get_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = (make_sandbox(self.backend, **self.sandbox_options) if self.session
                             else _SHARED.acquire(self.backend, self.sandbox_options))
        return self._sandbox

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        result = self._get_sandbox().run(arguments["code"], timeout_s=timeout_s)
        clock = timeout_s if result.status is ExecStatus.TIMEOUT else self.nominal_latency_s
        return ToolOutput(result.status.value, format_exec_result(result, timeout_s), clock_s=clock)

    def reset(self, seed: int) -> None:
        """A new episode starts with an empty session (stateless: nothing to reset)."""
        if self.session and self._sandbox is not None:
            self._sandbox.reset()

    def fork(self) -> "PythonTool":
        """A tool in the same state: a session is rebuilt by replaying its cells in a new sandbox."""
        tool = PythonTool(self.backend, self.sandbox_options, self.nominal_latency_s)
        if self.session and self._sandbox is not None:
            tool._sandbox = self._sandbox.fork()
        return tool

    def close(self) -> None:
        if self._sandbox is not None:
            if self.session:
                self._sandbox.close()
            else:
                _SHARED.release(self.backend, self.sandbox_options)
            self._sandbox = None

