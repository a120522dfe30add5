"""Delivery receipts, the promise check and notices: the service side (docs/PROTOCOL.md
"Delivery receipts"; DESIGN.md promises 1 and 6).

Devices send how each delivery went. The service judges each against the promise for the
device's link: complete within 60 s and the first chapter readable within 5 s of the order (or
of the device's return, if it was out of contact when the order was made), or within 1.25 times
the time those bytes take at the link's rate if that is longer (`promise_bounds`): no service
beats the link. Only orders this service made for the device are judged. A broken promise is
recorded and the device gets an apology in its notices feed, once per delivery, announced on the
push channel. Each receipt id is judged once per device: a receipt sent again is acknowledged
and changes nothing.

The device's times are on its own clock; the batch carries the device's clock at sending
(`sent_at`), and the service moves every device time by (its own clock on arrival - sent_at),
so a device whose clock is minutes off is judged as fairly as one that is right (the error left
is the one-way latency of the request, well under a second).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from daemon.errors import ManifestError
from daemon.protocol.ids import BOOK_ID
from daemon.protocol.manifest import parse_manifest
from server_stub.api_errors import ApiError, read_json_object
from server_stub.logs import kv
from server_stub.push import PushHub
from server_stub.store import Device, JudgedReceipt, Store

log = logging.getLogger("server_stub.receipts")

PROMISE_COMPLETE_S = 60.0
PROMISE_FIRST_CHAPTER_S = 5.0
MARGIN = 1.25  # a slow link's allowance: TCP slow start, round trips, retransmissions
SLOWEST_LINK_KBPS = 1000  # the slowest class promised for (3G); a device claiming less gets this
PROMISED_REASONS = frozenset({"bought", "sent"})  # orders start the clock; syncs do not
MAX_RECEIPTS = 100
NOTICES_DEFAULT_LIMIT = 100
NOTICES_MAX_LIMIT = 500
REPORT_RECENT = 50
_SIZES_CACHED = 256
_RECEIPT_ID = re.compile(r"\A[A-Za-z0-9_.-]{8,160}\Z")


@dataclass(frozen=True, slots=True)
class Bounds:
    first_chapter_s: float
    complete_s: float


def promise_bounds(down_kbps: int, package_bytes: int, first_chapter_bytes: int) -> Bounds:
    """The times a delivery is judged against on a link of `down_kbps` (pure).

    A normal book gets the promise itself on every link; only when the bytes alone, with the
    margin, need more than the promise at the link's rate (a 7 MB picture book on 3G) is that
    the bound, since no service could do better. `first_chapter_bytes` counts what must arrive
    before the first chapter reads: its frames and the compression dictionary."""
    rate = max(down_kbps, SLOWEST_LINK_KBPS) * 125  # bytes per second
    return Bounds(
        first_chapter_s=max(PROMISE_FIRST_CHAPTER_S, MARGIN * first_chapter_bytes / rate),
        complete_s=max(PROMISE_COMPLETE_S, MARGIN * package_bytes / rate),
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    """One receipt as a device sent it, validated; times are on the device's clock."""

    receipt_id: str
    outcome: str  # complete | failed
    book_id: str
    version: int
    reason: str
    ordered_at: float  # the service's own time of the order (from the changes feed)
    link_up_at: float | None  # since when the device had been in contact when it heard of it
    first_chapter_at: float | None
    completed_at: float | None
    retries: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str  # kept | broken | pending | not_promised
    first_chapter_s: float | None  # from the clock's start, on the service's clock
    complete_s: float | None
    why: str | None  # for a broken promise: which bound, by how much
    apology: str | None  # the notice for the reader, for a broken promise


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def judge(receipt: Receipt, offset_s: float, now: float, bounds: Bounds, title: str) -> Verdict:
    """The verdict on one receipt (pure). `offset_s` moves device times onto the service's
    clock; `now` is the service's clock. The clock starts at the order, or when the device came
    into contact with the service if that was later (it was off or out of coverage)."""
    start = receipt.ordered_at
    if receipt.link_up_at is not None:
        start = max(start, receipt.link_up_at + offset_s)

    def since_start(t: float | None) -> float | None:
        return None if t is None else max(0.0, t + offset_s - start)

    first = since_start(receipt.first_chapter_at)
    complete = since_start(receipt.completed_at)
    if receipt.reason not in PROMISED_REASONS:
        return Verdict("not_promised", first, complete, None, None)
    name = f"'{title}'"
    if receipt.outcome == "failed":
        waited = max(0.0, now - start)
        if waited <= bounds.complete_s:
            return Verdict("pending", first, None, None, None)
        attempts = f"{receipt.retries} failed attempt{'s' if receipt.retries != 1 else ''}"
        return Verdict(
            "broken",
            first,
            None,
            f"not complete after {waited:.1f} s (bound {bounds.complete_s:.1f} s), {attempts}",
            f"Your book {name} is still not on your device after {_seconds(waited)}; we are"
            f" sorry. Your device keeps trying ({attempts} so far).",
        )
    if complete is not None and complete > bounds.complete_s:
        return Verdict(
            "broken",
            first,
            complete,
            f"complete after {complete:.1f} s (bound {bounds.complete_s:.1f} s)",
            f"Your book {name} took {_seconds(complete)} to arrive; we are sorry.",
        )
    if first is not None and first > bounds.first_chapter_s:
        return Verdict(
            "broken",
            first,
            complete,
            f"first chapter after {first:.1f} s (bound {bounds.first_chapter_s:.1f} s)",
            f"The first chapter of {name} took {_seconds(first)} to open (we promise"
            f" {_seconds(bounds.first_chapter_s)}); we are sorry.",
        )
    return Verdict("kept", first, complete, None, None)


def _time(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a number")
    return float(value)


def _optional_time(doc: dict[str, Any], key: str) -> float | None:
    return None if doc.get(key) is None else _time(doc, key)


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"{key!r} must be a non-negative integer")
    return value


def parse_receipt(doc: Any) -> Receipt:
    """One receipt of a batch; ValueError says what is wrong (the receipt is refused alone)."""
    if not isinstance(doc, dict):
        raise ValueError("a receipt must be a JSON object")
    if not _RECEIPT_ID.match(str(doc.get("receipt_id"))):
        raise ValueError("'receipt_id' must be 8-160 of [A-Za-z0-9_.-]")
    outcome = doc.get("outcome")
    if outcome not in ("complete", "failed"):
        raise ValueError("'outcome' must be 'complete' or 'failed'")
    book_id = doc.get("book_id")
    if not isinstance(book_id, str) or not BOOK_ID.match(book_id):
        raise ValueError("'book_id' must be a book id")
    reason = doc.get("reason")
    if not isinstance(reason, str) or not 0 < len(reason) <= 40:
        raise ValueError("'reason' must be a short string")
    last_error = doc.get("last_error")
    if last_error is not None and not isinstance(last_error, str):
        raise ValueError("'last_error' must be a string or null")
    completed_at = _optional_time(doc, "completed_at")
    if outcome == "complete" and completed_at is None:
        raise ValueError("a complete receipt needs 'completed_at'")
    return Receipt(
        receipt_id=str(doc.get("receipt_id")),
        outcome=outcome,
        book_id=book_id,
        version=_count(doc, "version"),
        reason=reason,
        ordered_at=_time(doc, "ordered_at"),
        link_up_at=_optional_time(doc, "link_up_at"),
        first_chapter_at=_optional_time(doc, "first_chapter_at"),
        completed_at=completed_at,
        retries=_count(doc, "retries"),
        last_error=None if last_error is None else last_error[:500],
    )


def _receipt_id(doc: Any) -> str:
    """The id to acknowledge or reject the receipt by; a batch without one is malformed."""
    receipt_id = doc.get("receipt_id") if isinstance(doc, dict) else None
    if not isinstance(receipt_id, str) or not 0 < len(receipt_id) <= 200:
        raise ApiError(400, "bad_receipt_id", "every receipt needs a receipt_id string")
    return receipt_id


def _link(doc: dict[str, Any]) -> tuple[str, int]:
    device = doc.get("device")
    profile = device.get("profile") if isinstance(device, dict) else None
    down = device.get("down_kbps") if isinstance(device, dict) else None
    if not isinstance(profile, str) or not 0 < len(profile) <= 100:
        raise ApiError(400, "bad_field", "'device.profile' must name the device's profile")
    if isinstance(down, bool) or not isinstance(down, int) or down <= 0:
        raise ApiError(400, "bad_field", "'device.down_kbps' must be a positive integer")
    return profile, down


class ReceiptRoutes:
    def __init__(
        self,
        store: Store,
        hub: PushHub,
        clock: Callable[[], float],
        device: Callable[[web.Request], Device],
    ) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock
        self._device = device
        # (book_id, version) -> (package bytes, first-chapter bytes): versions never change.
        self._sizes: dict[tuple[str, int], tuple[int, int]] = {}

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/receipts", self.receipts, name="receipts")
        r.add_get("/v1/notices", self.notices, name="notices")
        # "admin_": an operator's report, never faulted nor logged by fault injection.
        r.add_get("/v1/admin/promises", self.report, name="admin_promises")

    def _bounds(self, book_id: str, version: int, down_kbps: int) -> Bounds:
        sizes = self._sizes.get((book_id, version))
        if sizes is None:
            raw = self._store.manifest_template(book_id, version)
            if raw is None:  # not a version this service made: no allowance beyond the promise
                return promise_bounds(down_kbps, 0, 0)
            try:
                m = parse_manifest(raw, template=True)
            except ManifestError:
                return promise_bounds(down_kbps, 0, 0)
            first = sum(f.length for f in m.frames[: m.first_chapter_frames()])
            sizes = (m.package_size, first + (m.dictionary.size if m.dictionary else 0))
            if len(self._sizes) >= _SIZES_CACHED:
                self._sizes.pop(next(iter(self._sizes)))
            self._sizes[(book_id, version)] = sizes
        return promise_bounds(down_kbps, *sizes)

    async def receipts(self, request: web.Request) -> web.Response:
        device = self._device(request)
        now = self._clock()
        doc = await read_json_object(request)
        try:
            sent_at = _time(doc, "sent_at")
        except ValueError as e:
            raise ApiError(400, "bad_field", f"{e}: the device's clock at sending") from e
        link_class, down_kbps = _link(doc)
        raw = doc.get("receipts")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_RECEIPTS:
            raise ApiError(400, "bad_batch", f"'receipts' must be a list of 1-{MAX_RECEIPTS}")
        offset = now - sent_at
        acked: list[str] = []
        rejected: dict[str, str] = {}
        latest_notice = 0
        for entry in raw:
            receipt_id = _receipt_id(entry)
            try:
                receipt = parse_receipt(entry)
            except ValueError as e:
                rejected[receipt_id] = str(e)
                continue
            if self._store.receipt_known(device.device_id, receipt_id):
                acked.append(receipt_id)  # sent again (a lost answer): already judged
                continue
            # Judge only orders the service made, by the service's own reason: a receipt cannot
            # invent a purchase, nor make a library sync count as one. A device may still say
            # `archived` (an old order fetched on request), which only waives the promise.
            reason = self._store.order_reason(
                device.account_id, device.device_id, receipt.book_id, receipt.ordered_at
            )
            if reason is None:
                rejected[receipt_id] = "the service made no such order for this device"
                continue
            if receipt.reason != "archived":
                receipt = dataclasses.replace(receipt, reason=reason)
            bounds = self._bounds(receipt.book_id, receipt.version, down_kbps)
            book = self._store.book(receipt.book_id)
            verdict = judge(receipt, offset, now, bounds, book.title if book else receipt.book_id)
            notice = self._store.record_receipt(
                device,
                JudgedReceipt(
                    receipt_id=receipt_id,
                    book_id=receipt.book_id,
                    ordered_at=receipt.ordered_at,
                    outcome=receipt.outcome,
                    reason=receipt.reason,
                    link_class=link_class,
                    verdict=verdict.verdict,
                    first_chapter_s=verdict.first_chapter_s,
                    complete_s=verdict.complete_s,
                    first_chapter_bound_s=bounds.first_chapter_s,
                    complete_bound_s=bounds.complete_s,
                    retries=receipt.retries,
                    why=verdict.why,
                    apology=verdict.apology,
                    body=json.dumps(entry, ensure_ascii=False),
                ),
                now,
            )
            acked.append(receipt_id)
            if verdict.verdict == "broken":
                log.warning(
                    kv(
                        "promise_broken",
                        device_id=device.device_id,
                        book_id=receipt.book_id,
                        link_class=link_class,
                        why=verdict.why,
                        apology=notice is not None,
                    )
                )
            latest_notice = max(latest_notice, notice or 0)
        if latest_notice:
            await self._hub.notify(
                device.account_id, device.device_id, latest_notice, kind="notices_changed"
            )
        return web.json_response(
            {
                "acked": acked,
                "rejected": [{"receipt_id": k, "detail": v} for k, v in rejected.items()],
            }
        )

    async def notices(self, request: web.Request) -> web.Response:
        device = self._device(request)
        cursor = _query_int(request, "cursor", 0, 0, 2**63 - 1)
        limit = _query_int(request, "limit", NOTICES_DEFAULT_LIMIT, 1, NOTICES_MAX_LIMIT)
        rows = self._store.notices(device.device_id, cursor, limit + 1)
        page = rows[:limit]
        return web.json_response(
            {
                "notices": [
                    {"seq": seq, "kind": kind, "book_id": book_id, "message": message, "at": at}
                    for seq, kind, book_id, message, at in page
                ],
                "cursor": page[-1][0] if page else cursor,
                "has_more": len(rows) > limit,
            }
        )

    async def report(self, request: web.Request) -> web.Response:
        report = self._store.promise_report(REPORT_RECENT)
        return web.json_response(
            {
                "promise": {
                    "complete_s": PROMISE_COMPLETE_S,
                    "first_chapter_s": PROMISE_FIRST_CHAPTER_S,
                    "margin": MARGIN,
                    "slowest_link_kbps": SLOWEST_LINK_KBPS,
                },
                **report,
            }
        )


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, "bad_query", f"{name!r} must be an integer in [{low}, {high}]")
    return int(raw)


def add_routes(
    app: web.Application,
    store: Store,
    hub: PushHub,
    device: Callable[[web.Request], Device],
    clock: Callable[[], float],
) -> None:
    """Register the receipt, notice and promise-report routes on the stub's application."""
    ReceiptRoutes(store, hub, clock, device).add_to(app)
