"""The ``python`` tool: runs the agent's code in a sandbox and shows it stdout/stderr."""
from __future__ import annotations

from typing import Any

from sandboxes import ExecResult, ExecStatus, Sandbox, make_sandbox

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

class PythonTool:
    """Executes Python source in a sandbox created lazily from ``backend`` and ``sandbox_options``.

    The env clock is charged ``nominal_latency_s`` per run (``timeout_s`` on a timeout), not
    the measured wall time, so that episodes replay identically on any machine.
    """

    name = "python"
    description = ("Run Python 3 code (standard library only) in an isolated sandbox with no network "
                   "and no state between calls. Print what you want to see; stdout and stderr are returned.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to execute"}},
        "required": ["code"],
    }

    def __init__(self, backend: str = "process", sandbox_options: dict[str, Any] | None = None,
                 nominal_latency_s: float = 0.05):
        self.backend = backend
        self.sandbox_options = dict(sandbox_options or {})
        self.nominal_latency_s = nominal_latency_s
        self._sandbox: Sandbox | None = None

    def _get_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = make_sandbox(self.backend, **self.sandbox_options)
        return self._sandbox

    handles_faults = False

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        result = self._get_sandbox().run(arguments["code"], timeout_s=timeout_s)
        clock = timeout_s if result.status is ExecStatus.TIMEOUT else self.nominal_latency_s
        return ToolOutput(result.status.value, format_exec_result(result, timeout_s), clock_s=clock)

    def reset(self, seed: int) -> None:
        """Stateless between calls: nothing to reset."""

    def fork(self) -> "PythonTool":
        return PythonTool(self.backend, self.sandbox_options, self.nominal_latency_s)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

