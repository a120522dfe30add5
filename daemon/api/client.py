"""A client of the daemon's local API over its Unix socket, as reader software would use it.

Used by `shelfsync status`, `shelfsync open`, the demo, the benchmarks and the tests.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlencode

import aiohttp


class LocalApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"local API answered {status}: {body}")
        self.status = status
        self.body = body


class LocalApiClient:
    def __init__(self, socket_path: Path, timeout_s: float = 10.0) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def get_json(self, path: str) -> Any:
        async with self._session.get("http://shelfsync" + path) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise LocalApiError(r.status, body)
            return body

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json("/v1/status")
        return result

    async def library_page(
        self, limit: int = 100, cursor: str | None = None, states: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """One page of the library: {"books": [...], "next_cursor": str | None}."""
        query = {"limit": str(limit)}
        if cursor is not None:
            query["cursor"] = cursor
        if states:
            query["state"] = ",".join(states)
        result: dict[str, Any] = await self.get_json("/v1/library?" + urlencode(query))
        return result

    async def library(self, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every book in the library (or those in `states`), page by page."""
        books: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.library_page(500, cursor, states)
            books.extend(page["books"])
            cursor = page["next_cursor"]
            if cursor is None:
                return books

    async def library_entry(self, book_id: str) -> dict[str, Any] | None:
        """One book's library entry (state, progress), or None when it is not in the library."""
        try:
            result: dict[str, Any] = await self.get_json(f"/v1/library/{quote(book_id, safe='')}")
        except LocalApiError as e:
            if e.status == 404:
                return None
            raise
        return result

    async def book(self, book_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(f"/v1/books/{quote(book_id, safe='')}")
        return result

    async def post_json(self, path: str, body: Any = None) -> Any:
        async with self._session.post("http://shelfsync" + path, json=body) as r:
            doc = await r.json(content_type=None)
            if r.status >= 400:
                raise LocalApiError(r.status, doc)
            return doc

    async def start_trip(self, days: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.post_json("/v1/trip", {"days": days})
        return result

    async def trip(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json("/v1/trip")
        return result

    async def resource(self, book_id: str, path: str) -> tuple[int, str, bytes]:
        """(status, media type, body) of one resource; the body is JSON on errors."""
        url = f"http://shelfsync/v1/books/{quote(book_id, safe='')}/resources/{quote(path)}"
        async with self._session.get(url) as r:
            return r.status, r.content_type, await r.read()

    async def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON answer) of any request, errors included; `body` bytes go as they are."""
        kwargs: dict[str, Any] = (
            {"data": io.BytesIO(body)} if isinstance(body, bytes) else {"json": body}
        )
        async with self._session.request(method, "http://shelfsync" + path, **kwargs) as r:
            return r.status, await r.json(content_type=None)
