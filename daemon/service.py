"""The device's view of the service: what every network worker may ask of it, as a Protocol.

daemon/client.py's ServiceClient is the one implementation that ships (HTTP over aiohttp);
tests/fakes/service.py is an in-memory one that can be told to fail any call with a given error.
The workers take a ServiceAPI, never the concrete client, so each can be tested alone against
the fake and a fake clock. Every method raises only TransportError subclasses (errors.py) for
what went wrong on the way or at the service.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from daemon.client import (
        AnnotationPage,
        ChangesPage,
        NoticePage,
        PopularPage,
        PushResult,
        ReceiptAnswer,
    )


class PackageStream(Protocol):
    """A byte range of a package being read, frame by frame; `feed` (a hash's update) is given
    the frame's bytes as they arrive."""

    async def read_exactly(
        self, n: int, feed: Callable[[memoryview], None] | None = None
    ) -> bytes | memoryview: ...


class PushStream(Protocol):
    """An open push channel: the service's messages, and a keep-alive ping."""

    async def ping(self, timeout_s: float) -> None: ...

    def messages(self) -> AsyncGenerator[dict[str, Any], None]: ...


class ServiceAPI(Protocol):
    async def library_changes(self, cursor: int, limit: int = 500) -> ChangesPage: ...

    async def manifest_envelope(self, book_id: str, max_manifest_bytes: int = ...) -> bytes: ...

    async def trust_root(self, version: int) -> bytes | None: ...

    async def dictionary(self, sha256: str) -> bytes: ...

    def package(
        self, book_id: str, version: int, start: int, end: int, size: int | None = None
    ) -> AbstractAsyncContextManager[PackageStream]: ...

    def push_channel(self, prefix_room: int = 0) -> AbstractAsyncContextManager[PushStream]: ...

    async def push_annotation_ops(self, ops: list[str]) -> PushResult: ...

    async def annotation_changes(self, cursor: int, limit: int) -> AnnotationPage: ...

    async def popular_highlights(
        self, cursor: int, limit: int, book_id: str | None = None
    ) -> PopularPage: ...

    async def send_receipts(self, doc: dict[str, Any]) -> ReceiptAnswer: ...

    async def notices(self, cursor: int, limit: int) -> NoticePage: ...

    async def rename_device(self, name: str) -> None: ...

    async def device_names(self) -> dict[str, str]: ...
