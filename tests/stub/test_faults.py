"""Fault injection (PROTOCOL.md "Fault injection"): each kind does what it says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.errors import SignatureError
from daemon.protocol.crypto import open_envelope, public_key_from_text
from daemon.protocol.manifest import parse_manifest
from server_stub.app import RunningStub, running_stub
from tests.conftest import StubImport
from tests.stub.helpers import Api

TEST_BOOK = "test-book.epub"  # two versions; package v2 is a few KB


class Device:
    """A device owning the test book, with the stub's package URL for it."""

    def __init__(self, api: Api, stub: RunningStub, token: str, book_id: str) -> None:
        self.api = api
        self.stub = stub
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.book_id = book_id
        self.package_url = f"{stub.url}/v1/books/{book_id}/versions/2/package"
        self.manifest_url = f"{stub.url}/v1/books/{book_id}/manifest"

    async def faults(self, *rules: dict[str, Any]) -> None:
        await self.api.call("POST", "/v1/admin/faults", body={"rules": list(rules)}, expect=201)

    async def package(self, **headers: str) -> tuple[int, bytes]:
        async with self.api.session.get(
            self.package_url, headers={**self.headers, **headers}
        ) as response:
            return response.status, await response.read()

    async def manifest_bytes(self) -> bytes:
        async with self.api.session.get(self.manifest_url, headers=self.headers) as response:
            assert response.status == 200
            return await response.read()


@pytest.fixture
async def device(fault_api: Api, fault_stub: RunningStub, small_import: StubImport) -> Device:
    book_id = small_import.book_ids[TEST_BOOK]
    account = await fault_api.account()
    _, token = await fault_api.device(account)
    await fault_api.buy(account, book_id)
    return Device(fault_api, fault_stub, token, book_id)


async def test_truncate_closes_after_n_bytes(device: Device) -> None:
    status, whole = await device.package()
    assert status == 200
    await device.faults({"route": "package", "kind": "truncate", "after_bytes": 1000})
    async with device.api.session.get(device.package_url, headers=device.headers) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(whole))
        received = await response.content.readexactly(1000)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content.read()
    assert received == whole[:1000]
    assert await device.package() == (200, whole)  # times defaults to 1


async def test_drip_sends_the_rest_of_the_body_a_byte_at_a_time(device: Device) -> None:
    status, whole = await device.package()
    assert status == 200
    await device.faults({"route": "package", "kind": "drip", "after_bytes": 100, "seconds": 0.1})
    async with device.api.session.get(device.package_url, headers=device.headers) as response:
        assert await response.content.readexactly(100) == whole[:100]
        pieces = [await response.content.readany() for _ in range(3)]
    assert all(len(piece) < 10 for piece in pieces)  # a trickle, not the rest of the body
    assert b"".join(pieces) == whole[100 : 100 + sum(map(len, pieces))]


async def test_truncate_applies_to_json_routes_too(device: Device) -> None:
    await device.faults({"route": "changes", "kind": "truncate", "after_bytes": 5})
    async with device.api.session.get(
        device.stub.url + "/v1/library/changes", headers=device.headers
    ) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_corrupt_flips_one_bit_at_byte_n(device: Device) -> None:
    _, whole = await device.package()
    at = len(whole) - 10  # past the first 64 KiB write, in the last one
    await device.faults({"route": "package", "kind": "corrupt", "at_byte": at})
    status, corrupted = await device.package()
    assert status == 200
    assert len(corrupted) == len(whole)
    diff = [i for i, (a, b) in enumerate(zip(whole, corrupted, strict=True)) if a != b]
    assert diff == [at]
    assert corrupted[at] == whole[at] ^ 0x01
    # Byte n of the *body*: with a Range, n counts from the range's start.
    await device.faults({"route": "package", "kind": "corrupt", "at_byte": 3})
    status, part = await device.package(Range="bytes=100-199")
    assert status == 206
    assert part[3] == whole[103] ^ 0x01
    assert part[:3] + part[4:] == whole[100:103] + whole[104:200]


async def test_pause_holds_the_body_until_released(device: Device) -> None:
    _, whole = await device.package()
    await device.faults({"route": "package", "kind": "pause", "after_bytes": 500})

    async def download() -> tuple[int, bytes]:
        return await device.package()

    task = asyncio.create_task(download())
    await asyncio.sleep(0.3)
    assert not task.done(), "the body must stay paused"
    released = await device.api.call("POST", "/v1/admin/release")
    assert released == {"released": 1}
    assert await asyncio.wait_for(task, 5) == (200, whole)


async def test_pause_sends_the_first_n_bytes(device: Device) -> None:
    _, whole = await device.package()
    await device.faults({"route": "package", "kind": "pause", "after_bytes": 500})
    async with device.api.session.get(device.package_url, headers=device.headers) as response:
        head = await response.content.readexactly(500)
        assert head == whole[:500]
        await device.api.call("POST", "/v1/admin/release")
        assert head + await response.read() == whole


async def test_stopping_the_stub_releases_paused_bodies(
    stub_data: Path, http: aiohttp.ClientSession, small_import: StubImport
) -> None:
    loop = asyncio.get_running_loop()
    async with running_stub(stub_data, faults=True) as stub:
        api = Api(http, stub.url)
        account = await api.account()
        _, token = await api.device(account)
        await api.buy(account, small_import.book_ids[TEST_BOOK])
        device = Device(api, stub, token, small_import.book_ids[TEST_BOOK])
        await device.faults({"route": "package", "kind": "pause", "after_bytes": 10})
        task = asyncio.create_task(device.package())
        await asyncio.sleep(0.2)
        assert not task.done()
        stopping = loop.time()
    assert loop.time() - stopping < 3
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 3)


async def test_ignore_range_answers_200_with_the_whole_body(device: Device) -> None:
    _, whole = await device.package()
    await device.faults({"route": "package", "kind": "ignore_range", "times": 2})
    for _ in range(2):
        assert await device.package(Range="bytes=10-19") == (200, whole)
    assert await device.package(Range="bytes=10-19") == (206, whole[10:20])


async def test_error_answers_status_with_retry_after(device: Device) -> None:
    await device.faults({"route": "any", "kind": "error", "status": 503, "times": 2})
    for url in (device.manifest_url, device.package_url):
        async with device.api.session.get(url, headers=device.headers) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"] == "injected_fault"
    await device.faults({"route": "changes", "kind": "error", "status": 429})
    await device.api.call("GET", "/v1/library/changes", device.token, expect=429)
    assert (await device.package())[0] == 200


async def test_delay_waits_before_answering(device: Device) -> None:
    await device.faults({"route": "manifest", "kind": "delay", "seconds": 0.4})
    started = time.monotonic()
    await device.manifest_bytes()
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    await device.manifest_bytes()
    assert time.monotonic() - started < 0.4


async def test_bad_signature_is_signed_by_another_key(device: Device) -> None:
    pinned = public_key_from_text(device.stub.public_key_text)
    await device.faults({"route": "manifest", "kind": "bad_signature"})
    with pytest.raises(SignatureError):
        open_envelope(await device.manifest_bytes(), pinned)
    assert parse_manifest(open_envelope(await device.manifest_bytes(), pinned)).version == 2


async def test_replay_manifest_serves_an_older_version_freshly_signed(device: Device) -> None:
    pinned = public_key_from_text(device.stub.public_key_text)
    await device.faults({"route": "manifest", "kind": "replay_manifest", "version": 1})
    before = int(time.time())
    replayed = parse_manifest(open_envelope(await device.manifest_bytes(), pinned))
    assert replayed.version == 1
    assert replayed.issued_at >= before
    assert parse_manifest(open_envelope(await device.manifest_bytes(), pinned)).version == 2
    await device.faults({"route": "manifest", "kind": "replay_manifest", "version": 9})
    async with device.api.session.get(device.manifest_url, headers=device.headers) as response:
        assert response.status == 404


async def test_request_log_and_rule_management(device: Device) -> None:
    api = device.api
    await api.call("DELETE", "/v1/admin/requests")
    await device.package(Range="bytes=0-99")
    await device.faults({"route": "package", "kind": "truncate", "after_bytes": 10})
    with pytest.raises(aiohttp.ClientPayloadError):
        await device.package()
    log = (await api.call("GET", "/v1/admin/requests"))["requests"]
    path = f"/v1/books/{device.book_id}/versions/2/package"
    arrivals = [r.pop("at") for r in log]
    assert arrivals == sorted(arrivals)
    assert log == [
        {"method": "GET", "path": path, "range": "bytes=0-99", "status": 206, "bytes": 100},
        {"method": "GET", "path": path, "range": None, "status": 200, "bytes": 10},
    ]

    rules = await api.call(
        "POST",
        "/v1/admin/faults",
        body={"rules": [{"route": "package", "kind": "error", "times": 5}]},
        expect=201,
    )
    assert rules["rules"] == [{"route": "package", "kind": "error", "times": 5, "status": 503}]
    await api.call("DELETE", "/v1/admin/faults")
    assert (await device.package())[0] == 200


@pytest.mark.parametrize("after_hello", [False, True])
async def test_silence_passes_nothing_on_the_push_channel_until_released(
    device: Device, after_hello: bool
) -> None:
    await device.faults({"route": "push", "kind": "silence", "after_hello": after_hello})
    async with device.api.session.ws_connect(
        f"{device.stub.url}/v1/push", headers=device.headers, autoping=False
    ) as ws:
        if after_hello:
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await ws.ping()
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.5)  # no pong, no hello, no heartbeat
        released = await device.api.call("POST", "/v1/admin/release")
        assert released == {"released": 1}
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"route": "books", "kind": "error"}, "'route' must be one of"),
        ({"route": "package", "kind": "explode"}, "'kind' must be one of"),
        ({"route": "changes", "kind": "bad_signature"}, "applies only to route manifest"),
        ({"route": "package", "kind": "truncate"}, "'after_bytes' must be an integer"),
        ({"route": "package", "kind": "error", "status": 200}, "'status' must be an integer"),
        ({"route": "any", "kind": "delay", "seconds": "1"}, "'seconds' must be a number"),
        ({"route": "any", "kind": "error", "times": 0}, "'times' must be an integer"),
        ({"route": "package", "kind": "silence"}, "applies only to route push"),
        ({"route": "push", "kind": "silence", "after_hello": 1}, "'after_hello' must be"),
    ],
)
async def test_bad_rules_are_refused(device: Device, rule: dict[str, Any], problem: str) -> None:
    doc = await device.api.call("POST", "/v1/admin/faults", body={"rules": [rule]}, expect=400)
    assert doc["error"] == "bad_rule"
    assert problem in doc["detail"]
