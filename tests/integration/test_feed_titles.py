"""The changes feed says what a library view shows (title, authors, cover size), so a library
synced before any manifest arrived lists its books by name, not as `title: null` (issue 22 #4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.clock import SystemClock
from daemon.content.library_sync import LibrarySync
from daemon.errors import ProtocolError
from daemon.protocol.crypto import x25519_public_text
from daemon.radio.windows import RadioWindows
from daemon.store import Store
from server_stub.app import running_stub
from tests.conftest import StubImport


async def test_a_synced_library_shows_titles_before_the_manifests(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    async with running_stub(corpus_stub_data, port=0) as stub:
        catalog = stub.store.book(book_id)
        cover = stub.store.cover(book_id)
        assert catalog is not None
        assert cover is not None
        account = AccountClient(stub.url)
        await account.create_account("reader")
        key = X25519PrivateKey.generate()
        credentials = await account.register_device("e-reader", x25519_public_text(key))
        await account.buy(book_id)
        store = Store.open(tmp_path / "device.db")
        client = ServiceClient(stub.url, credentials, ClientLimits())
        try:
            clock = SystemClock()
            await LibrarySync(store, client, clock, RadioWindows(clock), lambda: None).sync_once()
        finally:
            await client.close()
    try:
        (entry,) = store.views.library_view()
        assert entry["version"] is None  # no manifest yet: only the feed spoke
        assert entry["title"] == catalog.title
        assert entry["authors"] == list(catalog.authors)
        assert entry["cover_size"] == len(cover.data)
        (waiting,) = store.views.books_not_delivered(5)
        assert waiting["title"] == catalog.title
    finally:
        store.close()


def _page(**change: Any) -> dict[str, Any]:
    doc = {"seq": 1, "book_id": "bk_x", "action": "add", "reason": "bought", "version": 1}
    return {"changes": [{**doc, "at": 1.0, **change}], "cursor": 1, "has_more": False}


@pytest.mark.parametrize(
    ("served", "taken"),
    [
        (_page(title="T" * 10_000, authors=["A" * 1_000] * 100), ("T" * 500, ("A" * 200,) * 16)),
        (_page(), (None, ())),
    ],
    ids=["long texts cut to what a view shows", "no title: none"],
)
async def test_feed_titles_are_bounded(served: Any, taken: Any) -> None:
    async with _serving(served) as client:
        (change,) = (await client.library_changes(0)).changes
    assert (change.title, change.authors) == taken


@pytest.mark.parametrize(
    "served",
    [
        _page(title=7),
        _page(title="t", authors="not a list"),
        _page(title="t", authors=[None]),
        _page(cover_size=-1),
        _page(cover_size=2**70),
        _page(cover_size=True),
    ],
)
async def test_a_feed_title_or_cover_that_is_not_one_is_refused(served: Any) -> None:
    async with _serving(served) as client:
        with pytest.raises(ProtocolError, match="malformed changes page"):
            await client.library_changes(0)


class _serving:
    """A stand-in service whose changes feed answers `page`, and a client of it."""

    def __init__(self, page: Any) -> None:
        self._page = page
        self._runner: web.AppRunner | None = None
        self._client: ServiceClient | None = None

    async def __aenter__(self) -> ServiceClient:
        async def changes(request: web.Request) -> web.Response:
            return web.Response(body=json.dumps(self._page), content_type="application/json")

        app = web.Application()
        app.router.add_get("/v1/library/changes", changes)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self._client = ServiceClient(
            f"http://127.0.0.1:{port}", DeviceCredentials("dev_x", "token"), ClientLimits()
        )
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        assert self._runner is not None
        await self._client.close()
        await self._runner.cleanup()
