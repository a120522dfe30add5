"""The API's error shape: every 4xx/5xx is JSON `{"error": code, "detail": sentence}`.

Handlers raise `ApiError`; `error_middleware` turns it, aiohttp's own HTTP errors (404 route,
405, 413 over client_max_size) and any unexpected exception into that shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server_stub.logs import kv

log = logging.getLogger("server_stub.http")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, a stable code for programs, a sentence for people."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.detail, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and the like are answers, not errors
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        code = _CODES.get(e.status, "http_error")
        # aiohttp's 413 text names the limit; for the rest, say which request failed.
        detail = (
            e.text if e.status == 413 and e.text else f"{request.method} {request.path}: {e.reason}"
        )
        return error_response(e.status, code, detail, headers)
    except Exception:
        log.exception(kv("request_failed", method=request.method, path=request.path))
        return error_response(500, "internal_error", "the stub failed; see its log")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise (413 comes from client_max_size)."""
    raw = await request.read()
    try:
        doc = json.loads(raw or b"{}")
    except ValueError as e:
        raise ApiError(400, "bad_json", f"the body is not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return doc


def need_str(doc: Mapping[str, Any], key: str, max_len: int = 200) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise ApiError(
            400, "bad_field", f"{key!r} must be a non-empty string of at most {max_len} characters"
        )
    return value.strip()
