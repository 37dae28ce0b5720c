"""Resource limits applied to every sandboxed execution, independent of the backend."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run caps on CPU, memory, processes, files and captured output; validated on creation."""

    cpu_time_s: int = 10  # CPU seconds per process (the wall-clock limit is run()'s timeout_s)
    memory_mb: int = 512  # address space (virtual memory) per process
    max_processes: int = 64  # processes and threads the sandbox user may own at once
    max_file_mb: int = 16  # largest file a snippet may write
    max_open_files: int = 64  # file descriptors per process
    max_output_bytes: int = 64 * 1024  # captured bytes per stream (stdout, stderr)

    def __post_init__(self) -> None:
        """Reject values that are not integers or too small for a Python interpreter to start."""
        minimums = {
            "cpu_time_s": 1,
            "memory_mb": 64,  # the interpreter alone maps tens of MB
            "max_processes": 1,
            "max_file_mb": 0,
            "max_open_files": 16,  # stdio plus what the interpreter opens at start-up
            "max_output_bytes": 1,
        }
        for field in fields(self):
            value = getattr(self, field.name)
            minimum = minimums[field.name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SandboxLimits.{field.name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"SandboxLimits.{field.name} must be >= {minimum}, got {value}")
