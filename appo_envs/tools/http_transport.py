"""HTTP for tools: an httpx transport that makes an injected fault happen as real HTTP behaviour.

The env decides each call's fault (:class:`appo_envs.faults.CallFault`); an HTTP tool
attaches it to its request (``extensions={FAULT_EXTENSION: fault}``) and
:class:`FaultTransport` acts it out below the client, so the tool sees exactly what a
real failure gives it — a status code with a JSON body, a ``Retry-After`` header, or the
exception httpx raises:

- ``http_5xx``: 503 Service Unavailable; the request never reaches the service.
- ``exception``: 500 Internal Server Error; the request never reaches the service.
- ``http_429``: 429 Too Many Requests with ``Retry-After`` (the fault's ``retry_after_s``,
  else 2 s); never reaches the service.
- ``connection_reset``: ``httpx.ReadError`` (errno 104); never reaches the service.
- ``timeout``: the service handles the request, then ``httpx.ReadTimeout``: the response
  is lost, so a write may have been applied (what idempotency keys are for).
- ``truncated_body``: the service handles the request and answers; the body stops halfway
  and httpx raises ``RemoteProtocolError`` while reading it.
"""
from __future__ import annotations

import socket
import ssl
from functools import lru_cache
from typing import Any, Callable, Iterator

import httpx

from appo_envs.tools.base import ToolOutput

FAULT_EXTENSION = "appo_fault"
RETRY_AFTER_S = 2
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no Nagle delay between headers and body


def _json_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": code, "message": message})


class _TruncatedStream(httpx.SyncByteStream):
    """Yields the first part of a body, then fails like a peer that closed the connection early."""

    def __init__(self, body: bytes, request: httpx.Request):
        self._body, self._request = body, request

    def __iter__(self) -> Iterator[bytes]:
        cut = len(self._body) // 2
        yield self._body[:cut]
        raise httpx.RemoteProtocolError(f"peer closed connection without sending complete message body: "
                                        f"received {cut} bytes, expected {len(self._body)}", request=self._request)


def _service_unavailable(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    return _json_response(503, "service_unavailable", "the service is temporarily unavailable; retry later")


def _internal_error(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    return _json_response(500, "internal_error", "the service failed while handling the request")


def _rate_limited(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    retry_after = getattr(fault, "retry_after_s", None) or RETRY_AFTER_S
    seconds = f"{retry_after:g}"
    return _json_response(429, "rate_limited", f"too many requests; retry after {seconds} s",
                          headers={"Retry-After": seconds})


def _connection_reset(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)


def _response_lost(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    response = inner.handle_request(request)
    response.read()
    response.close()
    raise httpx.ReadTimeout("timed out waiting for the response", request=request)


def _truncated_body(inner: httpx.BaseTransport, request: httpx.Request, fault: Any) -> httpx.Response:
    response = inner.handle_request(request)
    body = response.read()
    response.close()
    return httpx.Response(response.status_code, headers=response.headers, stream=_TruncatedStream(body, request))


# fault kind -> how the transport acts it out (every error kind an HTTP tool must make real)
FAULT_BEHAVIOURS: dict[str, Callable[[httpx.BaseTransport, httpx.Request, Any], httpx.Response]] = {
    "http_5xx": _service_unavailable,
    "exception": _internal_error,
    "http_429": _rate_limited,
    "connection_reset": _connection_reset,
    "timeout": _response_lost,
    "truncated_body": _truncated_body,
}


class FaultTransport(httpx.BaseTransport):
    """Passes requests to a real transport, acting out the fault a request carries (if any)."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = request.extensions.pop(FAULT_EXTENSION, None)
        kind = getattr(fault, "error", None)
        if kind is None:
            return self.inner.handle_request(request)
        try:
            behaviour = FAULT_BEHAVIOURS[kind]
        except KeyError:
            raise ValueError(f"the HTTP transport cannot act out fault kind {kind!r}; it knows "
                             f"{sorted(FAULT_BEHAVIOURS)}") from None
        return behaviour(self.inner, request, fault)

    def close(self) -> None:
        self.inner.close()


def make_client(base_url: str, timeout_s: float, headers: dict[str, str] | None = None,
                faults: bool = True) -> httpx.Client:
    """An httpx client for a loopback service (no proxy from the environment, no Nagle delay).

    With ``faults`` its transport is a :class:`FaultTransport`; without, requests go straight through.
    """
    inner = httpx.HTTPTransport(socket_options=_NODELAY, verify=_tls_context())
    transport = FaultTransport(inner) if faults else inner
    return httpx.Client(base_url=base_url, transport=transport, timeout=timeout_s, headers=headers, trust_env=False)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One default TLS context for every client: building one loads the CA store (~40 ms)."""
    return ssl.create_default_context()


def describe_http_error(error: httpx.HTTPError) -> tuple[str, str]:
    """(tool status, text for the agent) for a request that got no complete response."""
    status = "timeout" if isinstance(error, httpx.TimeoutException) else "error"
    return status, f"{type(error).__name__}: {error}; you may retry."


def describe_response(response: httpx.Response) -> str:
    """The first line an agent sees for a response: status, reason and any Retry-After."""
    line = f"HTTP {response.status_code} {response.reason_phrase}"
    if "retry-after" in response.headers:
        line += f" (Retry-After: {response.headers['retry-after']} s)"
    return line


def request_with_fault(client: httpx.Client, method: str, url: str, fault: Any, timeout_s: float,
                       **kwargs: Any) -> httpx.Response:
    """Send one request through ``client``, carrying ``fault`` (or None) for the transport."""
    extensions = {FAULT_EXTENSION: fault} if fault is not None else None
    return client.request(method, url, timeout=timeout_s, extensions=extensions, **kwargs)


def call_service(client: httpx.Client, method: str, url: str, *, fault: Any, timeout_s: float, latency_s: float,
                 render_ok: Callable[[httpx.Response], str], **kwargs: Any) -> ToolOutput:
    """One tool call over HTTP: 2xx -> ``render_ok``; other statuses and transport errors -> what the agent sees.

    The env clock is charged ``latency_s`` per call, not the measured wall time, so an
    episode replays identically on any machine; a real timeout charges ``timeout_s`` (the
    env itself charges the wait of an injected one).
    """
    try:
        response = request_with_fault(client, method, url, fault, timeout_s, **kwargs)
    except httpx.HTTPError as e:
        status, text = describe_http_error(e)
        real_timeout = status == "timeout" and fault is None
        return ToolOutput(status, text, clock_s=timeout_s if real_timeout else latency_s)
    except (httpx.InvalidURL, UnicodeEncodeError) as e:  # the agent's path or header cannot be sent at all
        return ToolOutput("error", f"Invalid request, not sent: {e}", clock_s=0.0)
    if response.is_success:
        return ToolOutput("ok", render_ok(response), clock_s=latency_s)
    return ToolOutput("error", f"{describe_response(response)}\n{response.text}", clock_s=latency_s)
