"""A loopback fault proxy (asyncio) that puts a fault profile's faults on real sockets.

For systems tests: run services behind ``FaultProxy`` and point clients at ``proxy.url``.
Faults are decided exactly as in the envs — call *k* (the k-th request in ``http`` mode,
the k-th connection in ``tcp`` mode) gets ``FaultInjector.for_call(tool, k)`` of the
profile keyed by ``seed`` — so a run's faults are reproducible (Toxiproxy's random toxics
are not), and ``proxy.log`` records them in the env's event format. The proxy always
works in real time: latency is slept, not charged to a clock.

``paths`` (http mode) limits faults to requests whose path starts with one of the given
prefixes (say ``("/retrieve",)``), so health checks and admin calls neither fail nor
shift the call numbering.

Toxics: latency (every latency model, with correlation), bandwidth cap and slicing
(``ToolFaults.network``), reset (RST), timeout (the proxy goes silent for ``timeout_s``
then closes), truncated body; in ``http`` mode also 503/500/429 (``Retry-After``, from
the error mix or from the token bucket on the wall clock), corrupted bodies and hostile
content in bodies, and "write committed but response lost" (forwarded, answer withheld).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from appo_envs.faults import CallFault, FaultInjector, TokenBucket, corrupt, inject, resolve_profile
from appo_envs.faults.corruption import CorruptionContext
from appo_envs.faults.draws import stream_key

_MODES = ("http", "tcp")
# error kind -> the HTTP status the proxy answers with itself (no upstream contact)
_HTTP_ANSWERS = {"http_5xx": (503, "Service Unavailable"), "exception": (500, "Internal Server Error"),
                 "http_429": (429, "Too Many Requests")}
_SOCKET_ERRORS = {"timeout", "connection_reset", "truncated_body"}
_MODE_ERRORS = {"http": _SOCKET_ERRORS | set(_HTTP_ANSWERS), "tcp": _SOCKET_ERRORS}
_CHUNK = 64 * 1024


class FaultProxy:
    """Proxy ``127.0.0.1:<port>`` -> ``upstream`` with the faults of ``profile[tool]``, seeded by ``seed``."""

    def __init__(self, upstream: tuple[str, int] | str, faults: Any = "flaky", seed: int = 0, tool: str = "proxy",
                 mode: str = "http", port: int = 0, paths: tuple[str, ...] | None = None):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        host, _, up_port = upstream.rpartition(":") if isinstance(upstream, str) else (upstream[0], "", upstream[1])
        self.upstream = (host or "127.0.0.1", int(up_port))
        self.profile = resolve_profile(faults)
        # The env's key derivation: seed s and tool T give the faults the env gives call k of T.
        _, fault_ss, user_ss = np.random.SeedSequence(seed).spawn(3)
        self.injector = FaultInjector(self.profile, stream_key(fault_ss), stream_key(user_ss))
        self.spec = self.injector.spec(tool)
        unsupported = self.spec.error_kinds_possible - _MODE_ERRORS[mode]
        if unsupported:
            raise ValueError(f"{mode} mode cannot inject {sorted(unsupported)}; it supports {sorted(_MODE_ERRORS[mode])}"
                             + (" (use mode='http' for HTTP statuses)" if mode == "tcp" else ""))
        if paths is not None and mode != "http":
            raise ValueError("paths filters HTTP requests; it needs mode='http'")
        self.tool, self.mode, self.port = tool, mode, port
        self.paths = tuple(paths) if paths is not None else None  # only these path prefixes are calls; others pass clean
        self.log: list[dict[str, Any]] = []
        self._calls = 0
        self._bucket = TokenBucket(self.spec.rate_limit, time.monotonic()) if self.spec.rate_limit else None
        self._earlier: list[tuple[int, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle (a background thread runs the event loop) -------------------------------

    def start(self) -> "FaultProxy":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except OSError as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise RuntimeError(f"fault proxy could not listen on 127.0.0.1:{self.port}: {failure[0]}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- per call ------------------------------------------------------------------------------

    def _next_fault(self) -> tuple[int, CallFault]:
        k = self._calls
        self._calls += 1
        fault = self.injector.for_call(self.tool, k)
        if self._bucket is not None:
            admitted, retry_after = self._bucket.admit(time.monotonic())
            if not admitted:
                fault = replace(fault, error="http_429", source="rate_limit", retry_after_s=retry_after,
                                corruption=None, hostile=None)
        return k, fault

    def _record(self, kind: str, k: int, **extra: Any) -> None:
        self.log.append({"kind": kind, "tool": self.tool, "call_index": k, **extra})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "tcp":
                await self._tcp_connection(reader, writer)
            else:
                while await self._http_exchange(reader, writer):
                    pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # stop() with a keep-alive connection open: end quietly (3.11's streams print a cancelled handler)
        finally:
            writer.close()

    async def _delay(self, k: int, fault: CallFault) -> None:
        if fault.latency_s > 0 and fault.error != "timeout":
            self._record("latency", k, latency_s=fault.latency_s)
            await asyncio.sleep(fault.latency_s)

    async def _go_silent(self) -> None:
        """The timeout toxic: no data at all for ``timeout_s``, then the connection is closed."""
        await asyncio.sleep(self.spec.timeout_s)

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
        writer.transport.abort()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data`` downstream under the bandwidth cap and slicing toxics."""
        net = self.spec.network
        size = net.slice_bytes or _CHUNK
        for i in range(0, len(data), size):
            piece = data[i: i + size]
            writer.write(piece)
            await writer.drain()
            pause = (len(piece) / net.bandwidth_bytes_per_s if net.bandwidth_bytes_per_s else 0.0) + net.slice_delay_s
            if pause > 0 and i + size < len(data):
                await asyncio.sleep(pause)

    # --- tcp mode: one call per connection ---------------------------------------------------------

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        k, fault = self._next_fault()
        if fault.error is not None:
            self._record(fault.error, k, source=fault.source)
        if fault.error == "connection_reset":
            await reader.read(1)
            self._reset(writer)
            return
        if fault.error == "timeout":
            await self._go_silent()
            return
        await self._delay(k, fault)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        truncate = fault.error == "truncated_body"

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            while data := await src.read(_CHUNK):
                if downstream and truncate:  # the first half of the first reply, then the connection drops
                    await self._send(dst, data[: max(1, len(data) // 2)])
                    break
                await (self._send(dst, data) if downstream else _write(dst, data))
            dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        finally:
            up_writer.close()

    # --- http mode: one call per request ------------------------------------------------------------

    async def _http_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; return whether the connection stays open for another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        headers = _parse_headers(head)
        body = await _read_body(reader, headers, is_response=False)
        # Upstream gets one connection per request and is asked to close it, so a body without
        # a length still ends; the client's own keep-alive is kept on our side.
        request = _with_connection_close(head) + body
        bodiless = head.startswith(b"HEAD ")
        keep_alive = headers.get("connection", "").lower() != "close"
        if self.paths is not None and not _request_path(head).startswith(self.paths):
            status_line, resp_headers, body = await self._forward(request, bodiless)
            await self._send(writer, _response_bytes(status_line[0], status_line[1], resp_headers, body))
            return keep_alive
        k, fault = self._next_fault()
        if fault.error is not None:
            self._record(fault.error, k, source=fault.source,
                         **({"retry_after_s": fault.retry_after_s} if fault.retry_after_s is not None else {}))
        if fault.error == "connection_reset":
            self._reset(writer)
            return False
        if fault.error == "timeout":
            await self._go_silent()
            return False
        await self._delay(k, fault)
        if fault.error in _HTTP_ANSWERS:
            code, reason = _HTTP_ANSWERS[fault.error]
            extra = [("Content-Type", "application/json")]
            if fault.error == "http_429":
                extra.append(("Retry-After", str(int(fault.retry_after_s))))
            body = f'{{"error": "{reason}"}}'.encode()
            await self._send(writer, _response_bytes(code, reason, extra, body))
            return keep_alive

        try:
            status_line, resp_headers, body = await self._forward(request, bodiless)
        except OSError as e:
            message = f'{{"error": "bad_gateway", "message": "upstream {self.upstream[0]}:{self.upstream[1]}: {e}"}}'
            await self._send(writer, _response_bytes(502, "Bad Gateway", [("Content-Type", "application/json")],
                                                     message.encode()))
            return False
        if fault.error == "truncated_body":
            whole = _response_bytes(status_line[0], status_line[1], resp_headers, body)
            await self._send(writer, whole[: len(whole) - max(1, len(body) // 2)])
            return False
        if fault.error is None and status_line[0] < 400:
            body, withheld = self._content_faults(k, fault, body)
            if withheld:
                await self._go_silent()
                return False
        await self._send(writer, _response_bytes(status_line[0], status_line[1], resp_headers, body))
        return keep_alive

    async def _forward(self, request: bytes, bodiless: bool) -> tuple[tuple[int, str], list[tuple[str, str]], bytes]:
        """Send one request upstream; (status code and reason, headers to keep, decoded body)."""
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(request)
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            first = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            code = int(first[1])
            headers = _parse_headers(head)
            no_body = bodiless or code in (204, 304) or 100 <= code < 200
            body = b"" if no_body else _dechunk(await _read_body(up_reader, headers, is_response=True), headers)
        finally:
            up_writer.close()
        dropped = ("content-length", "transfer-encoding", "connection")
        kept = [(n, v) for n, v in _header_lines(head) if n.lower() not in dropped]
        return (code, first[2] if len(first) > 2 else ""), kept, body

    def _content_faults(self, k: int, fault: CallFault, body: bytes) -> tuple[bytes, bool]:
        """Hostile content and corruption of a response body; True when the response is withheld."""
        text = body.decode("utf-8", "replace")
        if fault.hostile is not None:
            text, where = inject(text, fault.hostile, fault.hostile_u)
            self._record("hostile", k, template=fault.hostile.template, canary=fault.hostile.canary, **where)
        if fault.corruption is not None:
            bad = corrupt(text, fault.corruption, fault.corruption_u, CorruptionContext(self._earlier, self.spec.timeout_s))
            if bad is not None:
                self._record(fault.corruption, k, **bad.detail)
                if fault.corruption == "write_lost":
                    return b"", True
                text = bad.content
        self._earlier.append((k, "ok", body.decode("utf-8", "replace")))
        return text.encode(), False


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def _header_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines if ":" in line)]


def _request_path(head: bytes) -> str:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode("latin-1") if len(parts) > 1 else ""


def _with_connection_close(head: bytes) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
    return ("\r\n".join(kept + ["Connection: close", "", ""])).encode("latin-1")


def _parse_headers(head: bytes) -> dict[str, str]:
    return {n.lower(): v for n, v in _header_lines(head)}


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], is_response: bool) -> bytes:
    """The raw body bytes (chunk framing kept) as framed by the headers."""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            raw += size_line + await reader.readexactly(size + 2)
            if size == 0:
                return raw
    return await reader.read() if is_response else b""


def _dechunk(raw: bytes, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return raw
    out, pos = b"", 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += raw[end + 2: end + 2 + size]
        pos = end + 2 + size + 2


def _response_bytes(code: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason}"] + [f"{n}: {v}" for n, v in headers] + [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
