"""Fault injection (PROTOCOL.md "Fault injection"; FAULTS.md rows tested with MW).

Rules are appended through the admin API and each fires on the next `times` requests it
matches. A rule matches a request when its route does ("any" is every non-admin route) and its
kind applies there: `ignore_range` to the package, `bad_signature`/`replay_manifest`/
`forge_version` to the manifest, body faults (pause, truncate, corrupt, drip) to any route with a
body (not the WebSocket), `silence` to the push channel, `error`/`delay` everywhere.

`fault_middleware` fires the rules, answers `error`, waits out `delay`, records every request,
and applies body faults to plain responses; handlers that stream (the package) send their body
through `write_body`, which applies them chunk by chunk. Handlers ask `fired(request)` for the
kinds only they can act on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from server_stub.api_errors import ApiError, error_response, read_json_object
from server_stub.logs import kv

# "push": `error` refuses the WebSocket handshake, `delay` holds it (a proxy that blocks push),
# `silence` accepts it and then passes nothing either way until released (a NAT that dropped
# the mapping, a proxy that blackholes): no hello (unless `after_hello`: a channel that worked,
# then went silent), no notification, no pong, no heartbeat.
ROUTES = ("package", "manifest", "dictionary", "changes", "push", "receipts", "notices", "any")
BODY_KINDS = ("pause", "truncate", "corrupt", "drip")
_APPLIES: dict[str, tuple[str, ...] | None] = {  # kind -> routes it acts on (None: all)
    "pause": None,
    "truncate": None,
    "corrupt": None,
    "drip": None,  # after `after_bytes`, one byte every `seconds` (FAULTS.md #11)
    "ignore_range": ("package",),
    "error": None,
    "delay": None,
    "bad_signature": ("manifest",),
    "replay_manifest": ("manifest",),
    "forge_version": ("manifest",),
    "silence": ("push",),
}
NO_BODY_ROUTES = ("push",)  # the WebSocket: its "body" is frames, not bytes to cut
MAX_LOGGED_REQUESTS = 100_000  # the oldest are dropped beyond this
MAX_DELAY = 600.0  # seconds

log = logging.getLogger("server_stub.faults")


@dataclass(slots=True)
class FaultRule:
    route: str
    kind: str
    remaining: int
    after_bytes: int = 0
    at_byte: int = 0
    status: int = 503
    seconds: float = 0.0
    version: int = 0
    after_hello: bool = False

    def matches(self, route: str) -> bool:
        if self.remaining <= 0 or self.route not in ("any", route):
            return False
        if self.kind in BODY_KINDS and route in NO_BODY_ROUTES:
            return False
        applies = _APPLIES[self.kind]
        return applies is None or route in applies

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"route": self.route, "kind": self.kind, "times": self.remaining}
        if self.kind in ("pause", "truncate", "drip"):
            doc["after_bytes"] = self.after_bytes
        if self.kind in ("delay", "drip"):
            doc["seconds"] = self.seconds
        if self.kind == "corrupt":
            doc["at_byte"] = self.at_byte
        elif self.kind == "error":
            doc["status"] = self.status
        elif self.kind in ("replay_manifest", "forge_version"):
            doc["version"] = self.version
        elif self.kind == "silence":
            doc["after_hello"] = self.after_hello
        return doc


def _int(doc: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key!r} must be an integer in [{low}, {high}]")
    return value


def parse_rule(doc: Any) -> FaultRule:
    """One rule from its JSON form; ValueError says what is wrong with it."""
    if not isinstance(doc, dict):
        raise ValueError("a rule must be a JSON object")
    route = doc.get("route", "any")
    if route not in ROUTES:
        raise ValueError(f"'route' must be one of {', '.join(ROUTES)}")
    kind = doc.get("kind")
    if kind not in _APPLIES:
        raise ValueError(f"'kind' must be one of {', '.join(_APPLIES)}")
    applies = _APPLIES[kind]
    if applies is not None and route not in ("any", *applies):
        raise ValueError(f"{kind} applies only to route {' or '.join(applies)}")
    rule = FaultRule(route=route, kind=kind, remaining=_int(doc, "times", 1, 1_000_000, 1))
    if kind in ("pause", "truncate", "drip"):
        rule.after_bytes = _int(doc, "after_bytes", 0, 2**53, 0 if kind == "drip" else None)
    if kind in ("delay", "drip"):
        seconds = doc.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError("'seconds' must be a number")
        if not 0 <= seconds <= MAX_DELAY:
            raise ValueError(f"'seconds' must be in [0, {MAX_DELAY}]")
        rule.seconds = float(seconds)
    if kind == "corrupt":
        rule.at_byte = _int(doc, "at_byte", 0, 2**53)
    elif kind == "error":
        rule.status = _int(doc, "status", 400, 599, 503)
    elif kind in ("replay_manifest", "forge_version"):
        rule.version = _int(doc, "version", 1, 2**53 - 1)
    elif kind == "silence":
        after_hello = doc.get("after_hello", False)
        if not isinstance(after_hello, bool):
            raise ValueError("'after_hello' must be true or false")
        rule.after_hello = after_hello
    return rule


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int
    bytes: int  # body bytes sent
    at: float  # the stub's monotonic clock when the request arrived (when a device's radio woke)

    def to_doc(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "range": self.range,
            "status": self.status,
            "bytes": self.bytes,
            "at": self.at,
        }


@dataclass(slots=True)
class Fired:
    """The rules that fired for one request, and the body bytes sent so far."""

    rules: list[FaultRule] = field(default_factory=list)
    sent: int = 0

    def first(self, kind: str) -> FaultRule | None:
        return next((r for r in self.rules if r.kind == kind), None)

    @property
    def has_body_faults(self) -> bool:
        return any(r.kind in BODY_KINDS for r in self.rules)


class FaultInjector:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.requests: deque[RequestRecord] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._release = asyncio.Event()
        self.paused = 0  # bodies waiting for release

    def add(self, rules: list[FaultRule]) -> None:
        self.rules.extend(rules)
        for rule in rules:
            log.info(kv("fault_added", **rule.to_doc()))

    def clear(self) -> None:
        self.rules.clear()

    def take(self, route: str) -> Fired:
        """Fire (and count down) every rule matching this request."""
        fired = Fired()
        for rule in self.rules:
            if rule.matches(route):
                rule.remaining -= 1
                fired.rules.append(rule)
                log.info(kv("fault_fired", route=route, kind=rule.kind))
        self.rules = [r for r in self.rules if r.remaining > 0]
        return fired

    def release(self) -> int:
        """Release every paused body and silenced push channel; later ones wait for the next
        release."""
        released = self.paused
        self._release.set()
        self._release = asyncio.Event()
        return released

    async def wait_released(self) -> None:
        event = self._release
        self.paused += 1
        try:
            await event.wait()
        finally:
            self.paused -= 1


FAULTS = web.AppKey("faults", FaultInjector)
FIRED = web.RequestKey("fired", Fired)


def fired(request: web.Request) -> Fired:
    """The faults firing for this request (none when fault injection is off)."""
    return request.get(FIRED) or Fired()


def _flip(chunk: bytes, sent: int, rule: FaultRule | None) -> bytes:
    if rule is None or not sent <= rule.at_byte < sent + len(chunk):
        return chunk
    i = rule.at_byte - sent
    return chunk[:i] + bytes([chunk[i] ^ 0x01]) + chunk[i + 1 :]


async def write_body(
    request: web.Request, response: web.StreamResponse, chunks: Iterable[bytes]
) -> None:
    """Send a prepared response's body, applying this request's body faults.

    Stops early on a truncate fault, or when the client goes away."""
    state = request.get(FIRED)
    corrupt = state.first("corrupt") if state else None
    pause = state.first("pause") if state else None
    truncate = state.first("truncate") if state else None
    drip = state.first("drip") if state else None
    injector = request.app.get(FAULTS)
    sent = 0
    try:
        for raw in chunks:
            view = _flip(raw, sent, corrupt)
            while view:
                stops = [
                    r for r in (pause, truncate, drip) if r and r.after_bytes < sent + len(view)
                ]
                if not stops:
                    await response.write(view)
                    sent += len(view)
                    break
                stop = min(stops, key=lambda r: r.after_bytes)
                head = view[: max(stop.after_bytes - sent, 0)]
                if head:
                    await response.write(head)
                    sent += len(head)
                view = view[len(head) :]
                if stop is drip:
                    for i in range(len(view)):
                        await response.write(view[i : i + 1])
                        sent += 1
                        await asyncio.sleep(drip.seconds)
                    break
                if stop is truncate:
                    # close() flushes what was written, then FINs: the client sees a clean
                    # close before Content-Length, i.e. a truncated body.
                    if request.transport is not None:
                        request.transport.close()
                    return
                pause = None
                if injector is not None:
                    await injector.wait_released()
    except ConnectionError:
        return  # the client went away; aiohttp closes the connection
    finally:
        if state is not None:
            state.sent = sent


def _route_name(request: web.Request) -> str | None:
    return request.match_info.route.name


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = _route_name(request)
    if route is not None and route.startswith("admin"):
        return await handler(request)  # the test harness' own calls are not logged
    arrived = time.monotonic()
    injector = request.app[FAULTS]
    state = injector.take(route) if route else Fired()
    request[FIRED] = state
    status = 500
    body_bytes = 0
    try:
        delay = state.first("delay")
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        error = state.first("error")
        if error is not None:
            response: web.StreamResponse = error_response(
                error.status,
                "injected_fault",
                f"fault injection answered {error.status}",
                {hdrs.RETRY_AFTER: "1"},
            )
        else:
            response = await handler(request)
        if not response.prepared and isinstance(response, web.Response):
            body = response.body
            if isinstance(body, bytes):
                if state.has_body_faults:
                    response = await _stream_with_faults(request, response, body)
                else:
                    body_bytes = len(body)
        status = response.status
        return response
    finally:
        injector.requests.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                range=request.headers.get(hdrs.RANGE),
                status=status,
                bytes=body_bytes or state.sent,
                at=arrived,
            )
        )


async def _stream_with_faults(
    request: web.Request, response: web.Response, body: bytes
) -> web.StreamResponse:
    streamed = web.StreamResponse(status=response.status, reason=response.reason)
    for name, value in response.headers.items():
        if name.lower() != "content-length":
            streamed.headers.add(name, value)
    streamed.content_length = len(body)
    await streamed.prepare(request)
    await write_body(request, streamed, [body])
    return streamed


# -- the admin routes (only registered with --faults) ---------------------------------------------


async def add_rules(request: web.Request) -> web.Response:
    doc = await read_json_object(request)
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ApiError(400, "bad_field", "'rules' must be a non-empty list")
    try:
        rules = [parse_rule(r) for r in raw_rules]
    except ValueError as e:
        raise ApiError(400, "bad_rule", str(e)) from e
    injector = request.app[FAULTS]
    injector.add(rules)
    return web.json_response({"rules": [r.to_doc() for r in injector.rules]}, status=201)


async def clear_rules(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return web.json_response({"rules": []})


async def release(request: web.Request) -> web.Response:
    return web.json_response({"released": request.app[FAULTS].release()})


async def list_requests(request: web.Request) -> web.Response:
    records = request.app[FAULTS].requests
    return web.json_response({"requests": [r.to_doc() for r in records]})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[FAULTS].requests.clear()
    return web.json_response({"requests": []})


async def _release_on_shutdown(app: web.Application) -> None:
    app[FAULTS].release()  # paused bodies finish, so their handlers return


def install(app: web.Application) -> FaultInjector:
    """Enable fault injection on `app`: the injector, the admin routes, shutdown release.
    The caller puts `fault_middleware` first in the app's middlewares."""
    injector = FaultInjector()
    app[FAULTS] = injector
    app.router.add_post("/v1/admin/faults", add_rules, name="admin_add_faults")
    app.router.add_delete("/v1/admin/faults", clear_rules, name="admin_clear_faults")
    app.router.add_post("/v1/admin/release", release, name="admin_release")
    app.router.add_get("/v1/admin/requests", list_requests, name="admin_requests")
    app.router.add_delete("/v1/admin/requests", clear_requests, name="admin_clear_requests")
    app.on_shutdown.append(_release_on_shutdown)
    return injector
