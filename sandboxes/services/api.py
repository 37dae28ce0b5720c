"""The API service: the shop domain (:mod:`sandboxes.services.shop`) over REST with per-episode sessions.

Every session has its own in-memory SQLite database and its own bearer token; a request
is served from the database of the session its token names, so one session can never see
or change another's data. Writes (POST/PATCH) accept an ``Idempotency-Key`` header: a
repeated key with the same request replays the first success (header
``Idempotent-Replayed: true``) instead of applying the write twice; the same key with a
different request is refused (422). Errors are JSON ``{"error", "message"}`` with a 4xx status.

Endpoints (``Authorization: Bearer <token>``)::

    GET   /customers?email=|name=      GET /customers/{id}      PATCH /customers/{id} {address?, email?}
    POST  /customers/{id}/credits {amount_cents, reason}
    GET   /products?name=              GET /products/{id}
    GET   /orders?customer_id=[&status=]                         GET /orders/{id}
    POST  /orders {customer_id, items: [{product_id, quantity}], shipping_address?}
    PATCH /orders/{id} {shipping_address}      POST /orders/{id}/cancel {reason?}
    POST  /orders/{id}/refunds {amount_cents, method: original|store_credit, reason}

Session management (``X-Admin-Key: <admin key>``), used by environments, never by agents::

    POST /admin/sessions {fixture}       POST /admin/sessions/{sid}/fork
    GET  /admin/sessions/{sid}/snapshot  DELETE /admin/sessions/{sid}
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandboxes.services import shop
from sandboxes.services.http import error_response, json_body, json_error_handlers

MAX_IDEMPOTENCY_KEY = 200
DEFAULT_MAX_SESSIONS = 4_096


@dataclass
class Session:
    """One episode's shop: its database and the token that opens it."""

    session_id: str
    token: str
    conn: sqlite3.Connection


class SessionStore:
    """Sessions by id and by token; all access happens on the server's event-loop thread."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._by_id: dict[str, Session] = {}
        self._by_token: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, conn: sqlite3.Connection) -> Session:
        if len(self._by_id) >= self.max_sessions:
            conn.close()
            raise shop.ShopError(503, "too_many_sessions", f"{self.max_sessions} sessions are open; close finished "
                                 "environments (they delete their sessions) or start the service with more")
        s = Session(session_id="s" + secrets.token_hex(8), token=secrets.token_urlsafe(24), conn=conn)
        self._by_id[s.session_id] = s
        self._by_token[s.token] = s
        return s

    def get(self, session_id: str) -> Session:
        s = self._by_id.get(session_id)
        if s is None:
            raise shop.ShopError(404, "not_found", f"no session {session_id!r}")
        return s

    def by_token(self, token: str) -> Session | None:
        return self._by_token.get(token)

    def remove(self, session_id: str) -> None:
        s = self.get(session_id)
        del self._by_id[session_id], self._by_token[s.token]
        s.conn.close()


# An agent-facing operation: (conn, path params, query params, body) -> response body.
Operation = Callable[[sqlite3.Connection, dict[str, str], dict[str, str], dict[str, Any]], dict[str, Any]]

# (method, path, operation, status on success); writes are the non-GET routes.
ROUTES: list[tuple[str, str, Operation, int]] = [
    ("GET", "/customers", lambda c, p, q, b: shop.find_customers(c, q), 200),
    ("GET", "/customers/{id}", lambda c, p, q, b: shop.get_customer(c, p["id"]), 200),
    ("PATCH", "/customers/{id}", lambda c, p, q, b: shop.update_customer(c, p["id"], b), 200),
    ("POST", "/customers/{id}/credits", lambda c, p, q, b: shop.add_credit(c, p["id"], b), 201),
    ("GET", "/products", lambda c, p, q, b: shop.find_products(c, q), 200),
    ("GET", "/products/{id}", lambda c, p, q, b: shop.get_product(c, p["id"]), 200),
    ("GET", "/orders", lambda c, p, q, b: shop.find_orders(c, q), 200),
    ("GET", "/orders/{id}", lambda c, p, q, b: shop.get_order(c, p["id"]), 200),
    ("POST", "/orders", lambda c, p, q, b: shop.create_order(c, b), 201),
    ("PATCH", "/orders/{id}", lambda c, p, q, b: shop.update_order(c, p["id"], b), 200),
    ("POST", "/orders/{id}/cancel", lambda c, p, q, b: shop.cancel_order(c, p["id"], b), 200),
    ("POST", "/orders/{id}/refunds", lambda c, p, q, b: shop.refund_order(c, p["id"], b), 201),
]


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _fingerprint(request: Request, body: Any) -> str:
    canon = json.dumps([request.method, request.url.path, dict(sorted(request.query_params.items())), body],
                       sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _dumps(data: Any) -> str:
    """JSON as Starlette's JSONResponse writes it, so replayed and fresh answers look alike."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _shop_response(e: shop.ShopError) -> JSONResponse:
    return error_response(e.status, e.code, e.message, e.details)


def _agent_endpoint(store: SessionStore, op: Operation, ok_status: int, write: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        token = _bearer(request)
        session = store.by_token(token) if token else None
        if session is None:
            return error_response(401, "unauthorized", "missing or invalid bearer token: send 'Authorization: Bearer "
                                  "<token>' with the token of your session", headers={"WWW-Authenticate": "Bearer"})
        body: Any = {}
        if write:
            body = await json_body(request, empty={})
            if isinstance(body, JSONResponse):
                return body
            if not isinstance(body, dict):
                return error_response(422, "validation_error", "the body must be a JSON object")
        query = dict(request.query_params)
        key = request.headers.get("idempotency-key")
        if key is not None and not (write and 0 < len(key) <= MAX_IDEMPOTENCY_KEY):
            return error_response(422, "validation_error", f"Idempotency-Key is for POST/PATCH and must have "
                                  f"1..{MAX_IDEMPOTENCY_KEY} characters")
        conn = session.conn
        try:
            if not write:
                return JSONResponse(op(conn, request.path_params, query, body), status_code=ok_status)
            with shop.transaction(conn):
                if key is not None:
                    fp = _fingerprint(request, body)
                    row = conn.execute("SELECT fingerprint, status, body FROM idempotency WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        if row["fingerprint"] != fp:
                            raise shop.ShopError(422, "idempotency_key_reused", f"Idempotency-Key {key!r} was used for a "
                                                 "different request; use a new key for a new write")
                        return Response(row["body"], status_code=row["status"], media_type="application/json",
                                        headers={"Idempotent-Replayed": "true"})
                result = _dumps(op(conn, request.path_params, query, body))
                if key is not None:
                    conn.execute("INSERT INTO idempotency VALUES (?,?,?,?)", (key, fp, ok_status, result))
            return Response(result, status_code=ok_status, media_type="application/json")
        except shop.ShopError as e:
            return _shop_response(e)

    return endpoint


def create_api_app(admin_key: str, max_sessions: int = DEFAULT_MAX_SESSIONS) -> Starlette:
    """The API service as an ASGI app; ``admin_key`` guards session management."""
    if len(admin_key) < 16:
        raise ValueError("admin_key must have at least 16 characters (use secrets.token_urlsafe())")
    store = SessionStore(max_sessions)

    def admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not hmac.compare_digest(request.headers.get("x-admin-key", "").encode(), admin_key.encode()):
                return error_response(401, "unauthorized", "session management needs the service's X-Admin-Key")
            try:
                return await handler(request)
            except shop.ShopError as e:
                return _shop_response(e)
        return guarded

    def opened(session: Session) -> JSONResponse:
        return JSONResponse({"session_id": session.session_id, "token": session.token}, status_code=201)

    async def create_session(request: Request) -> Response:
        body = await json_body(request, empty={})
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict) or set(body) - {"fixture"}:
            return error_response(422, "validation_error", 'the body must be {"fixture": {table: rows}}')
        conn = shop.connect()
        try:
            shop.load_fixture(conn, body.get("fixture", {}))
        except shop.ShopError:
            conn.close()
            raise
        return opened(store.add(conn))

    async def fork_session(request: Request) -> Response:
        return opened(store.add(shop.copy_database(store.get(request.path_params["sid"]).conn)))

    async def snapshot(request: Request) -> Response:
        return JSONResponse({"tables": shop.snapshot(store.get(request.path_params["sid"]).conn)})

    async def delete_session(request: Request) -> Response:
        store.remove(request.path_params["sid"])
        return Response(status_code=204)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "api", "sessions": len(store)})

    routes = [Route(path, _agent_endpoint(store, op, status, method != "GET"), methods=[method])
              for method, path, op, status in ROUTES]
    routes += [
        Route("/admin/sessions", admin(create_session), methods=["POST"]),
        Route("/admin/sessions/{sid}/fork", admin(fork_session), methods=["POST"]),
        Route("/admin/sessions/{sid}/snapshot", admin(snapshot), methods=["GET"]),
        Route("/admin/sessions/{sid}", admin(delete_session), methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers=json_error_handlers())
