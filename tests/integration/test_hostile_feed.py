"""A forged changes feed (FAULTS.md #22, issue 24 #3). The feed is not signed, so a hostile
network or a broken service can say anything in it; a stand-in service on loopback serves each
forgery, and the device's client refuses it by name before a value reaches the store. An
integer past 2^63 or a NaN there used to end the daemon, at every restart while it was served."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from daemon.client import ClientLimits, DeviceCredentials, ServiceClient
from daemon.errors import ProtocolError

ASKED = 10


def change(**overrides: Any) -> dict[str, Any]:
    doc = {
        "seq": 11,
        "book_id": "bk_honest",
        "action": "add",
        "reason": "bought",
        "version": 1,
        "at": 1_764_000_000.0,
        "package_size": 250_000,
    }
    return {**doc, **overrides}


def page(changes: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    cursor = changes[-1]["seq"] if changes else ASKED
    return {"changes": changes, "cursor": cursor, "has_more": False, **overrides}


FORGED = {
    "seq past 2^63": page([change(seq=2**64)], cursor=2**64),
    "version past 2^63": page([change(version=2**63)]),
    "package size past 2^63": page([change(package_size=2**70)]),
    "NaN time": page([change(at=float("nan"))]),
    "time past the year 36812": page([change(at=1e300)]),
    "negative cursor": page([], cursor=-1),
    "cursor beyond what was sent": page([change()], cursor=10**15),
    "cursor going back on a page with changes": page([change()], cursor=3),
    "more to come, forever, never advancing": page([], has_more=True),
    "seq at or before the cursor asked": page([change(seq=ASKED)]),
    "seqs out of order": page([change(seq=13), change(seq=12, book_id="bk_other")]),
    "boolean as a version": page([change(version=True)]),
    "book id with a path in it": page([change(book_id="../../etc/passwd")]),
    "book id with a NUL": page([change(book_id="bk\x00x")]),
    "not a page": {"changes": "all of them"},
    "trust root version past 2^53": page([], root_version=2**63),
    "trust root version 0": page([], root_version=0),
}


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[list[Any], ServiceClient]]:
    """A service that answers the changes feed with whatever the test puts in `served`."""
    served: list[Any] = []

    async def changes(request: web.Request) -> web.Response:
        return web.Response(body=json.dumps(served[-1]), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/library/changes", changes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = ServiceClient(
        f"http://127.0.0.1:{port}", DeviceCredentials("dev_x", "token"), ClientLimits()
    )
    try:
        yield served, client
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.faults(22)
@pytest.mark.parametrize("forgery", FORGED)
async def test_a_forged_feed_page_is_refused_by_name(
    stand_in: tuple[list[Any], ServiceClient], forgery: str
) -> None:
    served, client = stand_in
    served.append(FORGED[forgery])
    with pytest.raises(ProtocolError, match="malformed changes page"):
        await client.library_changes(ASKED)


@pytest.mark.faults(22)
async def test_an_honest_page_after_them_is_taken(
    stand_in: tuple[list[Any], ServiceClient],
) -> None:
    served, client = stand_in
    served.append(page([change(), change(seq=12, book_id="bk_next", package_size=None)]))
    honest = await client.library_changes(ASKED)
    assert [c.seq for c in honest.changes] == [11, 12]
    assert honest.cursor == 12
    assert honest.changes[1].package_size is None
    served.append(page([]))
    assert (await client.library_changes(ASKED)).cursor == ASKED
    # An empty page ending before the cursor asked: the feed ends there, the cursor is ahead.
    served.append(page([], cursor=3))
    assert (await client.library_changes(ASKED)).cursor == 3
