"""Benchmark the loopback services over real HTTP and print a table.

Measures, in one run and against baselines from the same run:

- search latency p50/p99 (one client, one query per request, 20k-document corpus), against
  the same BM25 search called in-process (the cost of HTTP) and ``GET /health`` (the HTTP
  stack's floor);
- search throughput with ``--clients`` concurrent clients (threads, one keep-alive
  connection each; target >= 1,000 queries/s with 16 clients);
- API p50/p99 for a read (``GET /customers/{id}``) and a write (``POST .../credits`` with
  an idempotency key).

Each service runs in its own process (``python -m sandboxes.services``), as it would at a
URL, so the load generator and the server do not share an interpreter lock. Usage::

    python scripts/bench_services.py [--requests 2000] [--clients 16] [--per-client 400] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appo_envs.tasks.api import generate_fixture  # noqa: E402
from appo_envs.tools import ApiAdmin  # noqa: E402
from appo_envs.tools.http_transport import make_client  # noqa: E402
from sandboxes.corpus import load_corpus  # noqa: E402
from sandboxes.services import ServiceHandle, connect  # noqa: E402
from sandboxes.services.search import BM25Index  # noqa: E402

SEARCH_P50_TARGET_MS = 2.0
THROUGHPUT_TARGET_QPS = 1_000.0


def start_service(kind: str) -> tuple[subprocess.Popen, ServiceHandle]:
    """``python -m sandboxes.services <kind>`` in a child process, health-checked."""
    proc = subprocess.Popen([sys.executable, "-m", "sandboxes.services", kind], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = proc.stdout.readline().split()[1]
    key = proc.stdout.readline().split()[1] if kind == "api" else None
    return proc, connect(kind, url, key, timeout_s=60)


def timed(fn: Callable[[int], object], n: int, warmup: int = 50) -> np.ndarray:
    """Seconds per call of ``fn(i)`` for i in 0..n-1, after ``warmup`` untimed calls (i = n, n+1, ...)."""
    for i in range(n, n + warmup):
        fn(i)
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - t
    return out


def row(name: str, seconds: np.ndarray, baseline: np.ndarray | None = None, qps: float | None = None) -> dict:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    ratio = float(np.median(seconds) / np.median(baseline)) if baseline is not None else None
    return {"name": name, "n": int(seconds.size), "p50_ms": float(p50), "p99_ms": float(p99), "qps": qps,
            "x_baseline": ratio}


def bench_search(url: str, titles: list[str], n: int, clients: int, per_client: int) -> list[dict]:
    index = BM25Index(load_corpus())
    inproc = timed(lambda i: index.search(titles[i % len(titles)], 3), n)
    rows = [row("search in-process (baseline)", inproc)]
    with make_client(url, 30.0, faults=False) as c:
        health = timed(lambda i: c.get("/health").raise_for_status(), n)

        def one_query(i: int) -> None:
            r = c.post("/retrieve", json={"queries": [titles[i % len(titles)]], "topk": 3})
            r.raise_for_status()

        single = timed(one_query, n)
    rows += [row("GET /health over HTTP (baseline)", health),
             row("search over HTTP, 1 client", single, inproc),
             row("search over HTTP vs /health", single, health)]

    barrier = threading.Barrier(clients)

    def client(k: int) -> np.ndarray:
        lat = np.empty(per_client)
        with make_client(url, 30.0, faults=False) as c:
            c.get("/health")  # open the connection before the clock starts
            barrier.wait()
            for i in range(per_client):
                t = time.perf_counter()
                c.post("/retrieve", json={"queries": [titles[(k * per_client + i) % len(titles)]], "topk": 3}
                       ).raise_for_status()
                lat[i] = time.perf_counter() - t
        return lat

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lats = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    under_load = np.concatenate(lats)
    rows.append(row(f"search over HTTP, {clients} clients", under_load, single, qps=under_load.size / elapsed))
    return rows


def bench_api(service: ServiceHandle, n: int) -> list[dict]:
    admin = ApiAdmin(service)
    fixture = generate_fixture(np.random.default_rng(0))
    sid, token = admin.create(fixture)
    cid = fixture["customers"][0]["id"]
    with make_client(service.url, 30.0, headers={"Authorization": f"Bearer {token}"}, faults=False) as c:
        health = timed(lambda i: c.get("/health").raise_for_status(), n)
        read = timed(lambda i: c.get(f"/customers/{cid}").raise_for_status(), n)
        write = timed(lambda i: c.post(f"/customers/{cid}/credits", json={"amount_cents": 1, "reason": "bench"},
                                       headers={"Idempotency-Key": f"k{i}"}).raise_for_status(), n)
    assert len(admin.snapshot(sid)["credits"]) == n + 50  # every timed and warm-up write applied once
    admin.delete(sid)
    admin.close()
    return [row("api GET /health (baseline)", health), row("api read GET /customers/{id}", read, health),
            row("api write POST /customers/{id}/credits", write, health)]


def print_table(rows: list[dict]) -> None:
    print(f"{'measurement':<42} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'queries/s':>10} {'x baseline':>10}")
    for r in rows:
        qps = f"{r['qps']:.0f}" if r["qps"] is not None else "-"
        ratio = f"{r['x_baseline']:.2f}" if r["x_baseline"] is not None else "-"
        print(f"{r['name']:<42} {r['n']:>6} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {qps:>10} {ratio:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per latency measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the throughput run")
    parser.add_argument("--per-client", type=int, default=400, help="requests per client in the throughput run")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    titles = [d["title"] for d in load_corpus().docs]
    titles = [titles[i] for i in np.random.default_rng(0).permutation(len(titles))]
    procs = []
    try:
        search_proc, search = start_service("search")
        procs.append(search_proc)
        api_proc, api = start_service("api")
        procs.append(api_proc)
        rows = bench_search(search.url, titles, args.requests, args.clients, args.per_client)
        rows += bench_api(api, args.requests)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=15)

    print(f"services over HTTP on 127.0.0.1, {os.cpu_count()} CPUs, corpus {len(titles)} documents")
    print_table(rows)
    single = next(r for r in rows if r["name"] == "search over HTTP, 1 client")
    loaded = next(r for r in rows if r["qps"] is not None)
    print(f"search p50 {single['p50_ms']:.3f} ms (target <= {SEARCH_P50_TARGET_MS} ms: "
          f"{'met' if single['p50_ms'] <= SEARCH_P50_TARGET_MS else 'NOT met'}); "
          f"{args.clients}-client throughput {loaded['qps']:.0f} queries/s (target >= {THROUGHPUT_TARGET_QPS:.0f}: "
          f"{'met' if loaded['qps'] >= THROUGHPUT_TARGET_QPS else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
