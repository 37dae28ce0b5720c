"""Latency per execution of a small snippet: the usual ways of running untrusted code vs. our backends.

    python scripts/bench_sandbox.py [--runs 300] [--json results.json]

Measured in one run, interleaved round-robin (one call of each method in turn), so every method
sees the same machine load:
  * baselines: a fresh ``python -c`` subprocess; ``docker exec`` (CLI) into a warm container;
  * ours: the process and docker backends (stateless warm workers, and session mode), the process
    backend also on /usr/bin/python3 (the default is the interpreter running this script);
  * the docker worker reached through an ``exec -i`` stream instead of the container's attached
    stdin (the transport the docker backend does not use; measured to justify that choice).
Prints p50/p90/p99 and each method's p50 relative to the two baselines. Docker rows are skipped,
with the reason, when no engine or image is available.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandboxes import SandboxError, make_sandbox  # noqa: E402

SNIPPET = "print(sum(range(1000)))"
SYSTEM_PYTHON = "/usr/bin/python3"
EXPECTED = "499500\n"


def fresh_python() -> tuple[Callable[[], str], Callable[[], None]]:
    python = os.path.realpath(sys.executable)
    return (lambda: subprocess.run([python, "-c", SNIPPET], capture_output=True, text=True).stdout), lambda: None


def warm_container(image: str) -> str:
    """A running container of the sandbox image (no network) to exec into."""
    return subprocess.run(["docker", "run", "-d", "--rm", "--network", "none", image, "python3", "-c",
                           "import time; time.sleep(10 ** 6)"], capture_output=True, text=True, check=True
                          ).stdout.strip()


def docker_exec_cli(image: str) -> tuple[Callable[[], str], Callable[[], None]]:
    container = warm_container(image)
    run = lambda: subprocess.run(["docker", "exec", container, "python3", "-c", SNIPPET],  # noqa: E731
                                 capture_output=True, text=True).stdout
    return run, lambda: subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def backend(name: str, **options) -> tuple[Callable[[], str], Callable[[], None]]:
    sandbox = make_sandbox(name, **options)
    return (lambda: sandbox.run(SNIPPET, timeout_s=10).stdout), sandbox.close


def docker_exec_stream(image: str) -> tuple[Callable[[], str], Callable[[], None]]:
    """Our worker started by ``docker exec -i`` in a warm container, spoken to over the exec socket."""
    from sandboxes.docker_backend import _AttachChannel, connect
    from sandboxes.isolation import RLIMIT_NAMES
    from sandboxes.limits import SandboxLimits
    from sandboxes.warm import WORKER_FLAGS, WORKER_SOURCE, WorkerConnection, snippet_rlimits, worker_config

    client = connect()
    container = warm_container(image)
    limits = SandboxLimits()
    config = worker_config(limits, session=False,
                           rlimits=snippet_rlimits(limits, tuple(n for n in RLIMIT_NAMES if n != "RLIMIT_NPROC")))
    config["scratch"] = config["scratch"][:1]  # this plain container has no private /dev/shm to empty
    exec_id = client.api.exec_create(container, ["python3", *WORKER_FLAGS, "-c", WORKER_SOURCE, json.dumps(config)],
                                     stdin=True, stdout=True, stderr=False)["Id"]
    sock = client.api.exec_start(exec_id, socket=True)
    conn = WorkerConnection(_AttachChannel(sock), lambda: subprocess.run(["docker", "rm", "-f", container],
                                                                         capture_output=True), "exec stream")
    conn.handshake(60)

    def run() -> str:
        header, body = conn.request({"code": SNIPPET, "timeout_s": 10.0}, time.monotonic() + 20)
        return body[:header["stdout_bytes"]].decode()

    return run, conn.kill


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def machine_load() -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        pressure = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pressure = "n/a"
    return f"loadavg {load} on {os.cpu_count()} CPUs; cpu pressure: {pressure}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="calls per method (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per method first")
    parser.add_argument("--image", default=os.environ.get("APPO_SANDBOX_IMAGE", "appo-sandbox:local"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    candidates: list[tuple[str, Callable[[], tuple]]] = [
        ("fresh `python -c` subprocess", fresh_python),
        ("`docker exec` CLI, warm container", lambda: docker_exec_cli(args.image)),
        ("process backend (warm)", lambda: backend("process")),
        # The interpreter's build matters (a --enable-shared, non-PGO build forks and runs slower):
        (f"process backend, {SYSTEM_PYTHON}", lambda: backend("process", python=SYSTEM_PYTHON)),
        ("process backend, session", lambda: backend("process", session=True)),
        ("docker backend (warm, attach)", lambda: backend("docker", image=args.image)),
        ("docker backend, session", lambda: backend("docker", image=args.image, session=True)),
        ("docker worker via exec stream", lambda: docker_exec_stream(args.image)),
    ]
    methods: dict[str, tuple[Callable[[], str], Callable[[], None]]] = {}
    try:
        for name, setup in candidates:
            try:
                methods[name] = setup()
            except (SandboxError, subprocess.CalledProcessError, FileNotFoundError) as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr)
        for name, (run, _) in methods.items():
            for _ in range(args.warmup):
                out = run()
                assert out == EXPECTED, f"{name} printed {out!r}"
        print(f"before: {machine_load()}")
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.runs):
            for name, (run, _) in methods.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        print(f"after:  {machine_load()}")
    finally:
        for _, close in methods.values():
            close()

    rows = {name: sorted(ts) for name, ts in times.items()}
    p50 = {name: percentile(ts, 0.5) for name, ts in rows.items()}
    base_fresh = p50.get("fresh `python -c` subprocess")
    base_exec = p50.get("`docker exec` CLI, warm container")
    print(f"\n`{SNIPPET}`, {args.runs} calls per method, interleaved; times in ms\n")
    print(f"| {'method':<32} | {'p50':>7} | {'p90':>7} | {'p99':>7} | {'p50 / python -c':>16} | "
          f"{'p50 / docker exec':>17} |")
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 18}|{'-' * 19}|")
    for name, ts in rows.items():
        ratio = lambda base: f"{p50[name] / base:.3f}" if base else "n/a"  # noqa: E731
        print(f"| {name:<32} | {p50[name] * 1e3:7.2f} | {percentile(ts, 0.9) * 1e3:7.2f} | "
              f"{percentile(ts, 0.99) * 1e3:7.2f} | {ratio(base_fresh):>16} | {ratio(base_exec):>17} |")
    if args.json:
        args.json.write_text(json.dumps({name: {"p50_ms": p50[name] * 1e3, "p90_ms": percentile(ts, 0.9) * 1e3,
                                                "p99_ms": percentile(ts, 0.99) * 1e3} for name, ts in rows.items()},
                                        indent=2))


if __name__ == "__main__":
    main()
