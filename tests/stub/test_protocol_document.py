"""The service protocol's OpenAPI 3.1 document (docs/protocol.openapi.json, which
docs/PROTOCOL.md points to) against the stub: every route described, and real answers of the
exchanges a device makes as described."""

from __future__ import annotations

from typing import Any

import aiohttp

from server_stub.app import RunningStub
from tests.conftest import StubImport
from tests.openapi import PROTOCOL
from tests.stub.helpers import Api


def test_every_service_route_is_described_and_every_described_route_exists(
    stub: RunningStub,
) -> None:
    routes = {
        (route.method, route.resource.canonical)
        for route in stub.app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and not route.resource.canonical.startswith("/v1/admin/")
    }
    assert routes == PROTOCOL.operations()


async def checked(
    http: aiohttp.ClientSession,
    stub: RunningStub,
    method: str,
    template: str,
    path: str | None = None,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, stub.url + (path or template), json=body, headers=headers) as r:
        raw = await r.read()
    PROTOCOL.check_answer(method, template, r.status, r.content_type, raw)
    return r.status, raw


async def test_a_devices_exchanges_are_as_described(
    http: aiohttp.ClientSession, stub: RunningStub, api: Api, small_import: StubImport
) -> None:
    account = await api.account()
    _, device = await api.device(account)
    book_id = next(iter(small_import.book_ids.values()))
    assert (await checked(http, stub, "GET", "/v1/catalog", token=device))[0] == 200
    assert (await checked(http, stub, "GET", "/v1/service-key"))[0] == 200
    assert (await checked(http, stub, "GET", "/v1/roots/{version}", "/v1/roots/2"))[0] == 404
    assert (await checked(http, stub, "GET", "/v1/library/changes", token=account))[0] == 401
    buy = {"book_id": book_id}
    assert (await checked(http, stub, "POST", "/v1/library/buy", None, account, buy))[0] == 201
    assert (await checked(http, stub, "POST", "/v1/library/buy", None, account, buy))[0] == 409
    unknown = {"book_id": "bk_none"}
    assert (await checked(http, stub, "POST", "/v1/library/buy", None, account, unknown))[0] == 404
    status, _ = await checked(http, stub, "GET", "/v1/library/changes", token=device)
    assert status == 200
    bad = "/v1/library/changes?limit=0"
    assert (await checked(http, stub, "GET", "/v1/library/changes", bad, device))[0] == 400
    manifest = "/v1/books/{book_id}/manifest"
    path = f"/v1/books/{book_id}/manifest"
    assert (await checked(http, stub, "GET", manifest, path, device))[0] == 200
    path = "/v1/books/bk_none/manifest"
    assert (await checked(http, stub, "GET", manifest, path, device))[0] == 403
    package = "/v1/books/{book_id}/versions/{version}/package"
    path = f"/v1/books/{book_id}/versions/1/package"
    assert (await checked(http, stub, "GET", package, path, device))[0] == 200
    assert (await checked(http, stub, "GET", "/v1/notices", token=device))[0] == 200
    ops = {"ops": []}  # an empty batch is malformed
    assert (await checked(http, stub, "POST", "/v1/annotations/ops", None, device, ops))[0] == 400
    assert (await checked(http, stub, "GET", "/v1/annotations/changes", token=device))[0] == 200
    assert (await checked(http, stub, "GET", "/v1/popular-highlights", token=device))[0] == 200
    share = {"share_highlights": True}
    assert (await checked(http, stub, "PUT", "/v1/account/sharing", None, account, share))[0] == 200
    receipts = {"sent_at": 1.0, "device": {"profile": "x", "down_kbps": 1000}, "receipts": []}
    status, _ = await checked(http, stub, "POST", "/v1/receipts", None, device, receipts)
    assert status == 400  # 1 to 100 receipts a batch
