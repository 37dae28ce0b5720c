"""Detect which OS isolation features this host grants us, by trying them once in a child."""
from __future__ import annotations

import functools
import json
import os
import pwd
import resource
import subprocess
import sys
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NOBODY = "nobody"
_NOBODY_FALLBACK_ID = 65534

# Limits the process backend sets on each snippet, in the order it sets them.
RLIMIT_NAMES = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")

# Runs in a child interpreter: each attempt forks, unshares there (never in the prober) and
# reports success through the exit status; the PID attempt also forks once inside the new namespace.
_PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
base, net, pid, mnt = (int(a) for a in sys.argv[1:])

def works(flags, fork_inside):
    child = os.fork()
    if child == 0:
        ok = libc.unshare(flags) == 0
        if ok and fork_inside:
            inner = os.fork()
            if inner == 0:
                os._exit(0)
            ok = os.waitpid(inner, 0)[1] == 0
        os._exit(0 if ok else 1)
    return os.waitpid(child, 0)[1] == 0

print(json.dumps({"net": works(base | net, False), "pid": works(base | pid, True),
                  "mnt": works(base | mnt, False)}))
"""


@dataclass(frozen=True)
class IsolationReport:
    """What the process backend can enforce on this host, so callers can state what is contained."""

    net_namespace: bool  # snippets get an empty network namespace (no interfaces up, not even loopback)
    pid_namespace: bool  # snippets get their own PID namespace: killing its init kills every descendant
    mount_namespace: bool  # snippets see only system directories (read-only) and a private tmpfs /tmp
    user_namespace: bool  # the namespaces above needed an unprivileged user namespace (not root)
    drop_to_user: str | None  # user snippets run as when we are root, else None (they run as us)
    drop_uid: int | None
    drop_gid: int | None
    rlimits: tuple[str, ...]  # resource limits set on every snippet

    @property
    def unshare_flags(self) -> int:
        """The clone flags to pass to unshare(2) in the snippet's bootstrap (0: none available)."""
        flags = ((CLONE_NEWNET if self.net_namespace else 0) | (CLONE_NEWPID if self.pid_namespace else 0)
                 | (CLONE_NEWNS if self.mount_namespace else 0))
        return (flags | CLONE_NEWUSER) if flags and self.user_namespace else flags


def _try_namespaces(base_flags: int) -> tuple[bool, bool, bool]:
    """Whether (network, pid, mount) namespaces can be created with ``base_flags`` added, tried in a child."""
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, str(base_flags), str(CLONE_NEWNET), str(CLONE_NEWPID),
             str(CLONE_NEWNS)],
            capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
        )
        found = json.loads(proc.stdout)
        return bool(found["net"]), bool(found["pid"]), bool(found["mnt"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return False, False, False


def _nobody_ids() -> tuple[int, int]:
    """uid and gid of ``nobody``; 65534 when the passwd database has no such user."""
    try:
        entry = pwd.getpwnam(NOBODY)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return _NOBODY_FALLBACK_ID, _NOBODY_FALLBACK_ID


@functools.lru_cache(maxsize=None)
def probe_isolation() -> IsolationReport:
    """Try namespaces once (cached for the process) and report what snippets will get here."""
    is_root = os.geteuid() == 0
    net, pid, mnt = _try_namespaces(0 if is_root else CLONE_NEWUSER)
    uid, gid = _nobody_ids() if is_root else (None, None)
    return IsolationReport(
        net_namespace=net,
        pid_namespace=pid,
        # The private root is built by mounting as real root; an unprivileged user namespace
        # would also need uid/gid maps for that, which the worker does not write.
        mount_namespace=is_root and mnt and pid,
        user_namespace=not is_root and (net or pid),
        drop_to_user=NOBODY if is_root else None,
        drop_uid=uid,
        drop_gid=gid,
        rlimits=tuple(name for name in RLIMIT_NAMES if hasattr(resource, name)),
    )
