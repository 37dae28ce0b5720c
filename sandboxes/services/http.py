"""HTTP helpers shared by the services: JSON error bodies and bounded JSON request parsing."""
from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1_000_000


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A 4xx/5xx answer with a JSON body ``{"error": code, "message": ..., "details"?: ...}``."""
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


async def json_body(request: Request, empty: Any = None) -> Any:
    """The parsed JSON body, ``empty`` for an empty body, or an error response to return as is."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return error_response(413, "body_too_large", f"the body has {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    if not raw.strip():
        if empty is None:
            return error_response(400, "invalid_json", "the request needs a JSON body")
        return empty
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return error_response(400, "invalid_json", f"the body is not valid JSON: {e}")


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    hint = {404: "no such route; see the tool description for the endpoints",
            405: "this route does not accept that method"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, "http_error", f"{exc.status_code} {exc.detail}: {hint}")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal_error", f"the service failed: {type(exc).__name__}: {exc}")


def json_error_handlers() -> dict[Any, Any]:
    """Starlette exception handlers that turn 404/405/500 into JSON bodies."""
    return {HTTPException: _http_exception, Exception: _internal_error}
