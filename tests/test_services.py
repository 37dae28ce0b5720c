"""The loopback services over real HTTP: contracts, isolation, faults, URL mode, load and clean shutdown."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, unquote

import gymnasium as gym
import httpx
import numpy as np
import pytest

import appo_envs  # noqa: F401
from appo_envs.agents import run_episode, scripted_agent_for
from appo_envs.faults import CallFault
from appo_envs.faults.errors import TRANSPORT_ERROR_KINDS
from appo_envs.tasks.api import generate_fixture
from appo_envs.tools import FAULT_BEHAVIOURS, ApiAdmin
from appo_envs.tools.http_transport import make_client, request_with_fault
from sandboxes.corpus import load_corpus
from sandboxes.services import ServerThread, connect, embedded
from sandboxes.services.api import create_api_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def search():
    return embedded("search")


@pytest.fixture(scope="module")
def api():
    return embedded("api")


@pytest.fixture
def client():
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def admin(api):
    a = ApiAdmin(api)
    yield a
    a.close()


# --- search service ------------------------------------------------------------------------

def test_search_contract_finds_every_sampled_entity_first(search, client):
    corpus = load_corpus()
    titles = [d["title"] for d in corpus.docs[::500]]
    r = client.post(f"{search.url}/retrieve", json={"queries": titles, "topk": 3, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == len(titles)
    for title, hits in zip(titles, result):
        assert len(hits) == 3
        assert hits[0]["document"]["contents"].split("\n")[0] == f'"{title}"'
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
    plain = client.post(f"{search.url}/retrieve", json={"queries": [titles[0]], "topk": 2}).json()["result"][0]
    assert set(plain[0]) == {"id", "contents"}
    health = client.get(f"{search.url}/health").json()
    assert health["documents"] == len(corpus.docs) == 20_000 and health["corpus"] == corpus.fingerprint


@pytest.mark.parametrize("body, code", [
    ({"queries": []}, 422), ({"queries": "x"}, 422), ({"queries": ["x"], "topk": 0}, 422),
    ({"queries": ["x"], "topk": True}, 422), ({"queries": ["x"], "return_scores": "yes"}, 422),
    ({"queries": ["x"], "extra": 1}, 422), ([1, 2], 422),
])
def test_search_rejects_bad_bodies_with_json_4xx(search, client, body, code):
    r = client.post(f"{search.url}/retrieve", json=body)
    assert r.status_code == code and r.json()["error"] and r.json()["message"]


def test_search_json_errors_for_bad_json_route_and_method(search, client):
    assert client.post(f"{search.url}/retrieve", content=b"{nope").json()["error"] == "invalid_json"
    assert client.get(f"{search.url}/nowhere").status_code == 404
    r = client.get(f"{search.url}/retrieve")
    assert r.status_code == 405 and "message" in r.json()


def test_search_unknown_words_give_no_documents(search, client):
    r = client.post(f"{search.url}/retrieve", json={"queries": ["zzqqxx", "", "the of and"]})
    assert r.json()["result"] == [[], [], []]


# --- API service ---------------------------------------------------------------------------

def _fixture(seed: int) -> dict:
    return generate_fixture(np.random.default_rng(seed))


def test_api_requires_the_session_token_and_the_admin_key(api, admin, client):
    sid, token = admin.create(_fixture(0))
    cid = _fixture(0)["customers"][0]["id"]
    assert client.get(f"{api.url}/customers/{cid}").status_code == 401
    assert client.get(f"{api.url}/customers/{cid}", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get(f"{api.url}/customers/{cid}", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json()["id"] == cid
    assert client.get(f"{api.url}/admin/sessions/{sid}/snapshot").status_code == 401
    assert client.get(f"{api.url}/admin/sessions/{sid}/snapshot", headers={"X-Admin-Key": token}).status_code == 401
    admin.delete(sid)
    assert client.get(f"{api.url}/customers/{cid}", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_api_validation_errors_are_clear_json(api, admin):
    fixture = _fixture(1)
    sid, token = admin.create(fixture)
    cid, pid = fixture["customers"][0]["id"], fixture["products"][0]["id"]
    cases = [
        ("POST", "/orders", {"customer_id": cid}, 422, "items"),
        ("POST", "/orders", {"customer_id": cid, "items": [{"product_id": pid, "quantity": 0}]}, 422, "quantity"),
        ("POST", "/orders", {"customer_id": cid, "items": [{"product_id": pid, "quantity": 10**6}]}, 422, "quantity"),
        ("POST", "/orders", {"customer_id": "C-0", "items": []}, 404, "no customer"),
        ("PATCH", f"/customers/{cid}", {"tier": "gold"}, 422, "unknown field"),
        ("PATCH", f"/customers/{cid}", {}, 422, "nothing to change"),
        ("POST", f"/customers/{cid}/credits", {"amount_cents": -5, "reason": "x"}, 422, "amount_cents"),
        ("POST", f"/customers/{cid}/credits", {"amount_cents": "5", "reason": "x"}, 422, "integer"),
        ("GET", "/orders", None, 422, "customer_id"),
        ("GET", "/orders/not-an-id", None, 404, "ids look like"),
        ("DELETE", f"/orders/{fixture['orders'][0]['id']}", None, 405, "method"),
    ]
    for method, path, body, status, words in cases:
        r = admin.request(token, method, path, body)
        assert r.status_code == status, (method, path, r.text)
        assert words in r.json()["message"], (method, path, r.text)
    assert admin.snapshot(sid) == _snapshot_of(admin, fixture)
    admin.delete(sid)


def _snapshot_of(admin: ApiAdmin, fixture: dict) -> dict:
    sid, _ = admin.create(fixture)
    try:
        return admin.snapshot(sid)
    finally:
        admin.delete(sid)


def test_api_writes_are_transactional_and_idempotent(api, admin):
    fixture = _fixture(2)
    sid, token = admin.create(fixture)
    cid = fixture["customers"][0]["id"]
    in_stock = next(p for p in fixture["products"] if p["stock"] > 0)
    empty = {"id": "P-999999", "name": "Nothing", "price_cents": 100, "stock": 0}
    fixture2 = {**fixture, "products": fixture["products"] + [empty]}
    sid2, token2 = admin.create(fixture2)
    before = admin.snapshot(sid2)
    # The second item is out of stock: the whole order is refused and the first item's stock is untouched.
    r = admin.request(token2, "POST", "/orders", {"customer_id": cid, "items": [
        {"product_id": in_stock["id"], "quantity": 1}, {"product_id": empty["id"], "quantity": 1}]})
    assert r.status_code == 409 and r.json()["error"] == "out_of_stock"
    assert admin.snapshot(sid2) == before

    body = {"customer_id": cid, "items": [{"product_id": in_stock["id"], "quantity": 1}]}
    first = admin.request(token, "POST", "/orders", body, idempotency_key="k-1")
    again = admin.request(token, "POST", "/orders", body, idempotency_key="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = admin.request(token, "POST", "/orders", {**body, "shipping_address": "elsewhere"}, idempotency_key="k-1")
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    tables = admin.snapshot(sid)
    assert len(tables["orders"]) == len(fixture["orders"]) + 1
    stock = next(p for p in tables["products"] if p["id"] == in_stock["id"])["stock"]
    assert stock == in_stock["stock"] - 1
    admin.delete(sid)
    admin.delete(sid2)


def test_api_fork_copies_data_and_idempotency_records(api, admin):
    fixture = _fixture(3)
    sid, token = admin.create(fixture)
    cid = fixture["customers"][0]["id"]
    admin.request(token, "POST", f"/customers/{cid}/credits", {"amount_cents": 100, "reason": "a"}, idempotency_key="c")
    fsid, ftoken = admin.fork(sid)
    assert ftoken != token and fsid != sid
    assert admin.snapshot(fsid) == admin.snapshot(sid)
    replay = admin.request(ftoken, "POST", f"/customers/{cid}/credits", {"amount_cents": 100, "reason": "a"},
                           idempotency_key="c")
    assert replay.headers.get("idempotent-replayed") == "true"
    admin.request(ftoken, "POST", f"/customers/{cid}/credits", {"amount_cents": 7, "reason": "b"})
    assert len(admin.snapshot(fsid)["credits"]) == 2 and len(admin.snapshot(sid)["credits"]) == 1
    admin.delete(sid)
    admin.delete(fsid)


def test_api_session_limit_is_a_clear_503():
    app = create_api_app("k" * 20, max_sessions=2)
    server = ServerThread(app, "api")
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers={"X-Admin-Key": "k" * 20}, trust_env=False) as c:
            assert [c.post("/admin/sessions", json={}).status_code for _ in range(3)] == [201, 201, 503]
            assert "close finished" in c.post("/admin/sessions", json={}).json()["message"]
    finally:
        server.stop()


def _victim_markers(fixture: dict) -> list[str]:
    return [c["email"] for c in fixture["customers"]] + [c["address"] for c in fixture["customers"]]


def test_isolation_1000_cross_session_attempts_all_fail(api, admin, client):
    victim_fx, attacker_fx = _fixture(10), _fixture(11)
    v_sid, v_token = admin.create(victim_fx)
    a_sid, a_token = admin.create(attacker_fx)
    v_before, a_before = admin.snapshot(v_sid), admin.snapshot(a_sid)
    own_ids = {r["id"] for t in ("customers", "orders", "products") for r in attacker_fx[t]}
    victim_ids = {t: [r["id"] for r in victim_fx[t] if r["id"] not in own_ids] for t in ("customers", "orders", "products")}
    attacker_text = json.dumps(attacker_fx)
    markers = [m for m in _victim_markers(victim_fx) if m not in attacker_text] + [v_token, v_sid]
    rng = np.random.default_rng(0)

    def pick(table: str) -> str:
        ids = victim_ids[table]
        return ids[int(rng.integers(len(ids)))]

    def forged_token() -> dict[str, str]:
        options = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer " + v_token[:-1] + "x"},
                   {"Authorization": v_token}, {"Authorization": "Basic " + v_token},
                   {"Authorization": f"Bearer {v_token[::-1]}"}, {"X-Admin-Key": v_token},
                   {"Authorization": f"Bearer {a_token[:10]}"}]
        return options[int(rng.integers(len(options)))]

    def attempt(i: int) -> tuple[str, str, dict, dict | None, bool]:
        """(method, path, headers, body, whether a 200 read of the attacker's own data is acceptable)."""
        kind = i % 4
        cid, oid, pid = pick("customers"), pick("orders"), pick("products")
        writes = [("PATCH", f"/customers/{cid}", {"address": "stolen"}),
                  ("POST", f"/customers/{cid}/credits", {"amount_cents": 999, "reason": "x"}),
                  ("POST", f"/orders/{oid}/cancel", {}),
                  ("PATCH", f"/orders/{oid}", {"shipping_address": "stolen"}),
                  ("POST", f"/orders/{oid}/refunds", {"amount_cents": 1, "method": "store_credit", "reason": "x"}),
                  ("POST", "/orders", {"customer_id": cid, "items": [{"product_id": pid, "quantity": 1}]})]
        reads = [("GET", f"/customers/{cid}", None), ("GET", f"/orders/{oid}", None),
                 ("GET", f"/orders?customer_id={cid}", None), ("GET", f"/products/{pid}", None)]
        if kind == 0:  # another session's token, or none, or a mangled one
            method, path, body = (writes + reads)[int(rng.integers(len(writes) + len(reads)))]
            return method, path, forged_token(), body, False
        if kind == 1:  # the attacker's own token on ids that exist only in the victim's session
            method, path, body = (writes + reads)[int(rng.integers(len(writes) + len(reads)))]
            return method, path, {"Authorization": f"Bearer {a_token}"}, body, False
        if kind == 2:  # path tricks towards the victim's session or the admin routes
            tricks = [f"/admin/sessions/{v_sid}/snapshot", f"/orders/../admin/sessions/{v_sid}/snapshot",
                      f"/orders/%2e%2e/admin/sessions/{v_sid}/snapshot", f"/customers/{cid}%2F..%2F..%2Fadmin",
                      f"//admin/sessions/{v_sid}", f"/customers/{cid}/../../admin/sessions", f"/{v_sid}/customers/{cid}",
                      f"/sessions/{v_sid}/orders/{oid}", f"/customers/{cid}?token={v_token}"]
            path = tricks[int(rng.integers(len(tricks)))]
            method = ["GET", "POST", "DELETE"][int(rng.integers(3))]
            return method, path, {"Authorization": f"Bearer {a_token}"}, None, False
        # query tricks: SQL-ish filters may only ever return the attacker's own rows
        values = ["' OR 1=1 --", "%", "_", "*", cid, victim_fx["customers"][0]["email"], "\" OR \"\"=\"",
                  f"{cid}' UNION SELECT * FROM customers --"]
        value = values[int(rng.integers(len(values)))]
        route = ["customers?email=", "customers?name=", "orders?customer_id=", "products?name="][int(rng.integers(4))]
        return "GET", f"/{route}{quote(value, safe='')}", {"Authorization": f"Bearer {a_token}"}, None, True

    results = []
    for i in range(1000):
        method, path, headers, body, read_ok = attempt(i)
        r = client.request(method, f"{api.url}{path}", headers=headers, json=body)
        results.append(r.status_code)
        leaked = [m for m in markers if m in r.text and m not in unquote(path)]  # echoing the request is no leak
        assert not leaked, (method, path, r.status_code, leaked)
        if not read_ok:
            assert 400 <= r.status_code < 500, (method, path, headers, r.status_code, r.text)
    assert len(results) == 1000 and {401, 404, 405}.issubset(results)
    assert admin.snapshot(v_sid) == v_before and admin.snapshot(a_sid) == a_before
    admin.delete(v_sid)
    admin.delete(a_sid)


# --- fault transport --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Fault:
    error: str | None
    retry_after_s: float | None = None


def test_fault_transport_acts_out_every_transport_error_kind(api, admin):
    fixture = _fixture(4)
    sid, token = admin.create(fixture)
    cid = fixture["customers"][0]["id"]
    client = make_client(api.url, 5.0, headers={"Authorization": f"Bearer {token}"})

    def credit(fault, key):
        return request_with_fault(client, "POST", f"/customers/{cid}/credits", fault, 5.0,
                                  json={"amount_cents": 5, "reason": "t"}, headers={"Idempotency-Key": key})

    def n_credits() -> int:
        return len(admin.snapshot(sid)["credits"])

    assert credit(_Fault("http_5xx"), "a").status_code == 503 and n_credits() == 0
    assert credit(_Fault("exception"), "b").status_code == 500 and n_credits() == 0
    limited = credit(_Fault("http_429", retry_after_s=3.0), "c")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3" and n_credits() == 0
    with pytest.raises(httpx.ReadError, match="reset"):
        credit(_Fault("connection_reset"), "d")
    assert n_credits() == 0
    with pytest.raises(httpx.ReadTimeout):  # the service applied it; only the response was lost
        credit(_Fault("timeout"), "e")
    assert n_credits() == 1
    with pytest.raises(httpx.RemoteProtocolError, match="received .* bytes, expected"):
        credit(_Fault("truncated_body"), "f")
    assert n_credits() == 2
    assert credit(None, "e").headers["idempotent-replayed"] == "true" and n_credits() == 2  # a retry never re-applies
    assert set(FAULT_BEHAVIOURS) == set(TRANSPORT_ERROR_KINDS)
    with pytest.raises(ValueError, match="cannot act out"):
        request_with_fault(client, "GET", "/health", CallFault(error="sandbox_death", latency_s=0.0), 5.0)
    client.close()
    admin.delete(sid)


# --- services at a URL ----------------------------------------------------------------------

class _ServiceProcess:
    """``python -m sandboxes.services <kind>`` in a child process; stopped with SIGTERM."""

    def __init__(self, kind: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "sandboxes.services", kind], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        self.url = self.proc.stdout.readline().split()[1]
        self.admin_key = self.proc.stdout.readline().split()[1] if kind == "api" else None
        self.port = int(self.url.rsplit(":", 1)[1])
        self.handle = connect(kind, self.url, self.admin_key, timeout_s=30)

    def stop(self) -> None:
        self.proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status says what stopped it
        assert self.proc.wait(timeout=15) == -signal.SIGTERM
        assert not _port_open(self.port)


@pytest.fixture(scope="module")
def remote():
    services = {kind: _ServiceProcess(kind) for kind in ("search", "api")}
    yield services
    for s in services.values():
        s.stop()


def test_envs_use_services_given_by_url(remote):
    s, a = remote["search"], remote["api"]
    kwargs = {"appo/Search-v0": {"search_url": s.url}, "appo/API-v0": {"api_url": a.url, "api_admin_key": a.admin_key},
              "appo/Mixed-v0": {"search_url": s.url, "api_url": a.url, "api_admin_key": a.admin_key}}
    for env_id, kw in kwargs.items():
        env = gym.make(env_id, **kw)
        try:
            assert run_episode(env, scripted_agent_for(env_id), seed=1).success
            urls = {tool.service.url for tool in env.unwrapped.tools.values() if hasattr(tool, "service")}
            assert urls and urls <= {s.url, a.url}
        finally:
            env.close()
    assert httpx.get(f"{a.url}/health", trust_env=False).json()["sessions"] == 0  # closed envs freed their sessions


def test_bad_service_configuration_says_what_to_do(remote):
    with pytest.raises(ValueError, match="admin key"):
        gym.make("appo/API-v0", api_url=remote["api"].url)
    with pytest.raises(ValueError, match="http://"):
        connect("search", "127.0.0.1:1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    with pytest.raises(RuntimeError, match="python -m sandboxes.services search"):
        connect("search", f"http://127.0.0.1:{free_port}", timeout_s=0.3)
    with pytest.raises(RuntimeError, match="not healthy"):  # an API service is not a search service
        connect("search", remote["api"].url, timeout_s=0.3)
    with pytest.raises(ValueError, match="unknown service"):
        connect("mail")


# --- load -------------------------------------------------------------------------------------

CLIENTS, REQUESTS = 64, 200


def _run_clients(work) -> list[list[int]]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(work, range(CLIENTS)))


@pytest.mark.slow
def test_load_search_64_clients_x_200_requests(remote):
    url = remote["search"].url
    titles = [d["title"] for d in load_corpus().docs[::7]]

    def work(i: int) -> list[int]:
        codes = []
        with make_client(url, 30.0, faults=False) as c:
            for j in range(REQUESTS):
                title = titles[(i * REQUESTS + j) % len(titles)]
                r = c.post("/retrieve", json={"queries": [title], "topk": 3})
                hit = r.status_code == 200 and r.json()["result"][0][0]["contents"].startswith(f'"{title}"')
                codes.append(r.status_code if hit else -r.status_code)
        return codes

    codes = [c for per_client in _run_clients(work) for c in per_client]
    assert len(codes) == CLIENTS * REQUESTS
    assert codes.count(200) == CLIENTS * REQUESTS


@pytest.mark.slow
def test_load_api_64_clients_x_200_requests(remote):
    service = remote["api"].handle
    admin = ApiAdmin(service)
    fixtures = [_fixture(100 + i) for i in range(CLIENTS)]
    sessions = [admin.create(f) for f in fixtures]

    def work(i: int) -> list[int]:
        _, token = sessions[i]
        customer = fixtures[i]["customers"][0]
        codes = []
        with make_client(service.url, 30.0, headers={"Authorization": f"Bearer {token}"}, faults=False) as c:
            for j in range(REQUESTS):
                if j % 5 == 0:
                    r = c.post(f"/customers/{customer['id']}/credits", json={"amount_cents": 1, "reason": "load"},
                               headers={"Idempotency-Key": f"k{j}"})
                elif j % 5 == 1:
                    r = c.patch(f"/customers/{customer['id']}", json={"address": f"{j} Load Street"})
                elif j % 5 == 2:
                    r = c.get("/orders", params={"customer_id": customer["id"]})
                else:
                    r = c.get(f"/customers/{customer['id']}")
                codes.append(r.status_code)
        return codes

    codes = [c for per_client in _run_clients(work) for c in per_client]
    assert len(codes) == CLIENTS * REQUESTS
    assert sorted(set(codes)) == [200, 201]
    for (sid, _), fixture in zip(sessions, fixtures):
        tables = admin.snapshot(sid)
        assert len(tables["credits"]) == REQUESTS // 5  # every write applied exactly once, in its own session
        customer = next(c for c in tables["customers"] if c["id"] == fixture["customers"][0]["id"])
        assert customer["credit_cents"] == fixture["customers"][0]["credit_cents"] + REQUESTS // 5
        admin.delete(sid)
    admin.close()


# --- nothing left running ---------------------------------------------------------------------

def test_server_thread_stop_releases_thread_and_port():
    server = ServerThread(create_api_app("k" * 20), "api")
    server.start()
    assert server.thread.is_alive() and _port_open(server.port)
    server.stop()
    assert not server.thread.is_alive() and not _port_open(server.port)


CHILD = textwrap.dedent("""
    import json, os, sys, threading
    import gymnasium as gym
    import appo_envs
    from appo_envs.agents import run_episode, scripted_agent_for
    from sandboxes.services import embedded, embedded_threads, shutdown_embedded

    def children():
        return [c for t in os.listdir("/proc/self/task")
                for c in open(f"/proc/self/task/{t}/children").read().split()]

    for env_id in ["appo/Search-v0", "appo/API-v0", "appo/Mixed-v0"]:
        env = gym.make(env_id)
        assert run_episode(env, scripted_agent_for(env_id), seed=0).success, env_id
        env.close()
    ports = [int(embedded(k).url.rsplit(":", 1)[1]) for k in ("search", "api")]
    assert len(embedded_threads()) == 2
    shutdown_embedded()
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(json.dumps({"ports": ports, "threads": extra, "children": children()}), flush=True)
    # Started again and left for the interpreter's exit to stop:
    ports.append(int(embedded("api").url.rsplit(":", 1)[1]))
    print(json.dumps({"ports": ports}), flush=True)
""")


def test_embedded_services_leave_no_threads_processes_or_ports():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    after_shutdown, at_exit = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert after_shutdown["threads"] == [] and after_shutdown["children"] == []
    for port in at_exit["ports"]:
        assert not _port_open(port)
