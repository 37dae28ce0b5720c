"""The ``api`` tool: REST calls to the shop API service inside the episode's own session.

:class:`ApiAdmin` manages sessions (create from a fixture, fork, snapshot, delete) with the
service's admin key; :class:`ApiTool` holds one session and sends the agent's requests
with that session's bearer token, so the agent can reach only its own episode's data.
"""
from __future__ import annotations

import os
import re
import weakref
from typing import Any

import httpx

from sandboxes.services import ServiceHandle

from appo_envs.tools.base import ToolOutput
from appo_envs.tools.http_transport import call_service, describe_response, make_client

METHODS = ("GET", "POST", "PATCH", "DELETE")
MAX_PATH_CHARS = 500
_SAFE_PATH = re.compile(r"^/(?!/)[^\s\\#\x00-\x1f\x7f]*$")
_SAFE_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")

API_GUIDE = ("Endpoints: GET /customers?email=<email> | ?name=<part>; GET /customers/{id}; "
             "PATCH /customers/{id} {address?, email?}; POST /customers/{id}/credits {amount_cents, reason}; "
             "GET /products?name=<part>; GET /products/{id}; GET /orders?customer_id=<id>[&status=<status>]; "
             "GET /orders/{id}; POST /orders {customer_id, items: [{product_id, quantity}], shipping_address?}; "
             "PATCH /orders/{id} {shipping_address}; POST /orders/{id}/cancel {reason?}; "
             "POST /orders/{id}/refunds {amount_cents, method: original|store_credit, reason}. "
             "Amounts are integer cents. Writes accept an idempotency_key: retrying a write with the same key "
             "never applies it twice.")


class ApiAdmin:
    """Session management on an API service (never exposed to the agent); ``close`` can be followed by more use."""

    def __init__(self, service: ServiceHandle, timeout_s: float = 10.0):
        if not service.admin_key:
            raise ValueError("the API service handle has no admin key; pass api_admin_key with api_url")
        self.service, self.timeout_s = service, timeout_s
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """The admin HTTP client, opened on first use (again after ``close``, as when a closed env is reset)."""
        if self._client is None:
            headers = {"X-Admin-Key": self.service.admin_key}
            self._client = make_client(self.service.url, self.timeout_s, headers=headers, faults=False)
        return self._client

    def _ok(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 300:
            raise RuntimeError(f"the API service at {self.service.url} refused to {what}: "
                               f"{describe_response(response)} {response.text[:300]}")
        return response

    def create(self, fixture: dict[str, Any]) -> tuple[str, str]:
        """A new session holding ``fixture``: (session id, token)."""
        r = self._ok(self.client.post("/admin/sessions", json={"fixture": fixture}), "create a session")
        return r.json()["session_id"], r.json()["token"]

    def fork(self, session_id: str) -> tuple[str, str]:
        """A new session with a copy of ``session_id``'s data: (session id, token)."""
        r = self._ok(self.client.post(f"/admin/sessions/{session_id}/fork"), "fork a session")
        return r.json()["session_id"], r.json()["token"]

    def snapshot(self, session_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every data table of the session, rows ordered by primary key."""
        return self._ok(self.client.get(f"/admin/sessions/{session_id}/snapshot"), "snapshot a session").json()["tables"]

    def delete(self, session_id: str) -> None:
        self._ok(self.client.delete(f"/admin/sessions/{session_id}"), "delete a session")

    def request(self, token: str, method: str, path: str, body: Any = None,
                idempotency_key: str | None = None) -> httpx.Response:
        """A fault-free agent-style request in the session of ``token`` (gold outcomes, tests)."""
        headers = {"Authorization": f"Bearer {token}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self.client.request(method, path, json=body, headers=headers)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _delete_quietly(admin: ApiAdmin, session_id: str, owner_pid: int) -> None:
    """Free a session when its tool is closed, rebound or garbage-collected (if the service is still there)."""
    if os.getpid() != owner_pid:  # a forked child exiting must not free its parent's sessions
        return
    try:
        admin.delete(session_id)
    except (httpx.HTTPError, RuntimeError):
        pass  # the service is gone (interpreter exit) or already dropped the session: nothing left to free


class ApiTool:
    """Sends the agent's REST requests to its episode's session; faults are acted out by the HTTP transport."""

    name = "api"
    description = "Call the shop's REST API (JSON). " + API_GUIDE
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": list(METHODS)},
            "path": {"type": "string", "description": "path and query string, e.g. /orders?customer_id=C-1042"},
            "body": {"type": "object", "description": "JSON body of a POST or PATCH"},
            "idempotency_key": {"type": "string", "description": "any unique string per intended write"},
        },
        "required": ["method", "path"],
    }
    handles_faults = True

    def __init__(self, service: ServiceHandle, nominal_latency_s: float = 0.05):
        self.service, self.nominal_latency_s = service, nominal_latency_s
        self.admin = ApiAdmin(service)
        self.session_id: str | None = None
        self._client: httpx.Client | None = None
        self._finalizer: weakref.finalize | None = None

    def open_session(self, fixture: dict[str, Any]) -> None:
        """Replace the current session (if any) by a new one holding ``fixture``."""
        self._bind(*self.admin.create(fixture))

    def _bind(self, session_id: str, token: str) -> None:
        self._drop_session()
        self.session_id = session_id
        self._finalizer = weakref.finalize(self, _delete_quietly, self.admin, session_id, os.getpid())
        if self._client is None:
            self._client = make_client(self.service.url, timeout_s=10.0)
        self._client.headers["Authorization"] = f"Bearer {token}"

    def _drop_session(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # deletes the session now, once
            self._finalizer = None
        self.session_id = None

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """The session's data now."""
        if self.session_id is None:
            raise RuntimeError("the api tool has no session; the env opens one on reset()")
        return self.admin.snapshot(self.session_id)

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        if self._client is None or self.session_id is None:
            return ToolOutput("error", "The API has no open session; reset the environment.", clock_s=0.0)
        method, path = arguments["method"], arguments["path"]
        if len(path) > MAX_PATH_CHARS or not _SAFE_PATH.match(path):
            return ToolOutput("error", f"Invalid call: path must start with a single '/', have no spaces, backslashes "
                              f"or '#', and at most {MAX_PATH_CHARS} characters, e.g. /orders/O-1042.", clock_s=0.0)
        body = arguments.get("body")
        if body is not None and method in ("GET", "DELETE"):
            return ToolOutput("error", f"Invalid call: {method} takes no body.", clock_s=0.0)
        headers = {}
        if "idempotency_key" in arguments:
            if not _SAFE_KEY.match(arguments["idempotency_key"]):
                return ToolOutput("error", "Invalid call: idempotency_key must be 1..200 printable ASCII characters "
                                  "without spaces.", clock_s=0.0)
            headers["Idempotency-Key"] = arguments["idempotency_key"]
        return call_service(self._client, method, path, fault=fault, timeout_s=timeout_s,
                            latency_s=self.nominal_latency_s, json=body, headers=headers,
                            render_ok=lambda r: f"{describe_response(r)}\n{r.text}")

    def reset(self, seed: int) -> None:
        """The session is opened by the env's task generator (it needs the fixture), not here."""

    def fork(self) -> "ApiTool":
        """A tool bound to a new session holding a copy of this session's data (and idempotency records)."""
        clone = ApiTool(self.service, self.nominal_latency_s)
        if self.session_id is not None:
            clone._bind(*self.admin.fork(self.session_id))
        return clone

    def close(self) -> None:
        self._drop_session()
        if self._client is not None:
            self._client.close()
            self._client = None
        self.admin.close()
