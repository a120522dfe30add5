"""An in-memory service (daemon.service.ServiceAPI) for the workers' unit tests.

It holds what a worker reads (the library feed, manifests, packages, popular passages, notices)
and keeps what a worker sends (annotation ops, receipts). Every call is recorded with the fake
clock's time, so a test can check when each retry went; `fail(call, error, times)` makes the next
calls of one kind raise a given error, `fail(call, error)` (times=None) every call until `heal`.
The push channel says hello when opened; `push(message)` sends on it, `drop_channel()` closes it.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from daemon.client import (
    AnnotationPage,
    ChangesPage,
    NoticePage,
    PopularPage,
    PushResult,
    ReceiptAnswer,
)
from daemon.errors import ServiceHTTPError, TransportError
from daemon.models import LibraryChange, Notice
from daemon.protocol import hlc
from daemon.service import ServiceAPI
from tests.fake_clock import FakeClock

SERVICE_STAMP = hlc.encode(1_764_000_000_000, 0, "service")


@dataclass
class _Failure:
    error: BaseException
    times: int | None  # None: until healed


class FakePackage:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.position = 0

    async def read_exactly(self, n: int, feed: Callable[[memoryview], None] | None = None) -> bytes:
        chunk = self._data[self.position : self.position + n]
        if len(chunk) < n:
            raise TransportError(f"package body ended at byte {self.position + len(chunk)}")
        self.position += n
        if feed is not None:
            feed(memoryview(chunk))
        return chunk


class FakePushChannel:
    def __init__(self, service: FakeService) -> None:
        self._service = service
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.inbox.put_nowait({"type": "hello"})

    async def ping(self, timeout_s: float) -> None:
        self._service._called("ping")

    async def messages(self) -> AsyncGenerator[dict[str, Any], None]:
        while (message := await self.inbox.get()) is not None:
            yield message


@dataclass
class FakeService:
    clock: FakeClock
    device_id: str = "dev_fake"  # the device the fake answers
    changes: list[LibraryChange] = field(default_factory=list)
    manifests: dict[str, bytes] = field(default_factory=dict)  # book -> signed envelope
    packages: dict[tuple[str, int], bytes] = field(default_factory=dict)
    dictionaries: dict[str, bytes] = field(default_factory=dict)
    roots: dict[int, bytes] = field(default_factory=dict)  # trust root envelopes by version
    passages: list[dict[str, Any]] = field(default_factory=list)  # popular, cursor = index + 1
    notice_list: list[Notice] = field(default_factory=list)
    ops_received: list[dict[str, Any]] = field(default_factory=list)
    receipts_received: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, float]] = field(default_factory=list)  # (call, monotonic time)
    ranges: list[tuple[str, int, int, int]] = field(default_factory=list)  # package requests
    channel: FakePushChannel | None = None  # the open push channel, if one is
    device_list: dict[str, str] = field(default_factory=dict)  # the account's devices by name
    _failures: dict[str, deque[_Failure]] = field(default_factory=lambda: defaultdict(deque))

    # -- what a test does ---------------------------------------------------------------------

    def fail(self, call: str, error: BaseException, times: int | None = 1) -> None:
        """The next `times` calls of `call` (a method name, or "ping") raise `error`."""
        self._failures[call].append(_Failure(error, times))

    def heal(self, call: str | None = None) -> None:
        """Calls of `call` (of every kind if None) succeed again."""
        for name in [call] if call else list(self._failures):
            self._failures.pop(name, None)

    def times_of(self, call: str) -> list[float]:
        return [at for name, at in self.calls if name == call]

    def add_book(self, book_id: str, version: int = 1, action: str = "add") -> LibraryChange:
        change = LibraryChange(
            seq=len(self.changes) + 1,
            book_id=book_id,
            action=action,
            reason="bought",
            version=version,
            at=self.clock.wall(),
        )
        self.changes.append(change)
        return change

    def push(self, message: dict[str, Any]) -> None:
        assert self.channel is not None, "no push channel is open"
        self.channel.inbox.put_nowait(message)

    def drop_channel(self) -> None:
        if self.channel is not None:
            self.channel.inbox.put_nowait(None)

    # -- ServiceAPI ---------------------------------------------------------------------------

    def _called(self, call: str) -> None:
        self.calls.append((call, self.clock.monotonic()))
        queued = self._failures.get(call)
        if not queued:
            return
        failure = queued[0]
        if failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                queued.popleft()
        raise failure.error

    async def library_changes(self, cursor: int, limit: int = 500) -> ChangesPage:
        self._called("library_changes")
        after = [c for c in self.changes if c.seq > cursor]
        page = after[:limit]
        return ChangesPage(page, page[-1].seq if page else cursor, len(after) > limit)

    async def manifest_envelope(self, book_id: str, max_manifest_bytes: int = 0) -> bytes:
        self._called("manifest_envelope")
        if book_id not in self.manifests:
            raise ServiceHTTPError(404, f"/v1/books/{book_id}/manifest", "no such book")
        return self.manifests[book_id]

    async def trust_root(self, version: int) -> bytes | None:
        self._called("trust_root")
        return self.roots.get(version)

    async def dictionary(self, sha256: str) -> bytes:
        self._called("dictionary")
        if sha256 not in self.dictionaries:
            raise ServiceHTTPError(404, f"/v1/dictionaries/{sha256}")
        return self.dictionaries[sha256]

    @asynccontextmanager
    async def package(
        self, book_id: str, version: int, start: int, end: int, size: int | None = None
    ) -> AsyncIterator[FakePackage]:
        self._called("package")
        self.ranges.append((book_id, version, start, end))
        data = self.packages.get((book_id, version))
        if data is None:
            raise ServiceHTTPError(404, f"/v1/books/{book_id}/versions/{version}/package")
        body = FakePackage(data[: end + 1])
        body.position = start
        yield body

    @asynccontextmanager
    async def push_channel(self, prefix_room: int = 0) -> AsyncIterator[FakePushChannel]:
        self._called("push_channel")
        self.channel = FakePushChannel(self)
        try:
            yield self.channel
        finally:
            self.channel = None

    async def push_annotation_ops(self, ops: list[str]) -> PushResult:
        self._called("push_annotation_ops")
        docs = [json.loads(op) for op in ops]
        self.ops_received += docs
        return PushResult([d["op_id"] for d in docs], {}, SERVICE_STAMP, sum(map(len, ops)))

    async def annotation_changes(self, cursor: int, limit: int) -> AnnotationPage:
        self._called("annotation_changes")
        return AnnotationPage([], [], cursor, False, SERVICE_STAMP)

    async def popular_highlights(
        self, cursor: int, limit: int, book_id: str | None = None
    ) -> PopularPage:
        self._called("popular_highlights")
        start = 0 if book_id else cursor
        chosen = [
            (i + 1, p)
            for i, p in enumerate(self.passages)
            if i >= start and (book_id is None or p["book_id"] == book_id)
        ][:limit]
        end = chosen[-1][0] if chosen else max(cursor, len(self.passages) if book_id else cursor)
        more = bool(chosen) and chosen[-1][0] < len(self.passages) and len(chosen) == limit
        return PopularPage([p for _, p in chosen], end, more)

    async def send_receipts(self, doc: dict[str, Any]) -> ReceiptAnswer:
        self._called("send_receipts")
        self.receipts_received += doc["receipts"]
        return ReceiptAnswer([r["receipt_id"] for r in doc["receipts"]], {})

    async def notices(self, cursor: int, limit: int) -> NoticePage:
        self._called("notices")
        after = [n for n in self.notice_list if n.seq > cursor][:limit]
        return NoticePage(after, after[-1].seq if after else cursor, False)

    async def rename_device(self, name: str) -> None:
        self._called("rename_device")
        self.device_list[self.device_id] = name

    async def device_names(self) -> dict[str, str]:
        self._called("device_names")
        return dict(self.device_list)


def _conforms(service: FakeService) -> ServiceAPI:
    return service  # mypy --strict over this file checks the fake against the protocol
