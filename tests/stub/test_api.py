"""The HTTP API on loopback (docs/PROTOCOL.md), through a real aiohttp client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import aiohttp
import pytest

from daemon.protocol.crypto import open_envelope, public_key_from_text
from daemon.protocol.manifest import Manifest, parse_manifest
from server_stub.app import HUB, RunningStub, running_stub
from tests.conftest import StubImport
from tests.stub.helpers import Api

ALICE = "epubjs_alice.epub"
TEST_BOOK = "test-book.epub"


async def _manifest(api: Api, stub: RunningStub, token: str, book_id: str) -> Manifest:
    async with api.session.get(
        f"{stub.url}/v1/books/{book_id}/manifest", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
        envelope = await response.read()
    return parse_manifest(open_envelope(envelope, public_key_from_text(stub.public_key_text)))


async def _owner(api: Api, book_id: str) -> tuple[str, str]:
    """A new account owning `book_id`, and its device token."""
    account = await api.account()
    _, device = await api.device(account)
    await api.buy(account, book_id)
    return account, device


async def test_tokens_are_required_and_checked(api: Api, small_import: StubImport) -> None:
    for path in ("/v1/catalog", "/v1/library/changes", "/v1/books/bk_x/manifest"):
        doc = await api.call("GET", path, expect=401)
        assert doc["error"] == "unauthorized"
        assert doc["detail"]
        await api.call("GET", path, token="wrong-token", expect=401)
    account = await api.account()
    _, device = await api.device(account)
    # A device token is not an account token, and the other way round.
    await api.call("POST", "/v1/devices", device, {"name": "x"}, expect=401)
    await api.call("GET", "/v1/library/changes", account, expect=401)
    assert len((await api.call("GET", "/v1/catalog", device))["books"]) == 4


async def test_catalog_lists_books_with_sizes(api: Api, small_import: StubImport) -> None:
    account = await api.account()
    books = {b["book_id"]: b for b in (await api.call("GET", "/v1/catalog", account))["books"]}
    alice = books[small_import.book_ids[ALICE]]
    assert alice["title"] == "Alice's Adventures in Wonderland"
    assert alice["authors"] == ["Lewis Carroll"]
    assert alice["language"] == "en-US"
    assert alice["version"] == 1
    assert alice["epub_size"] == 536540
    assert alice["package_size"] > 0
    assert books[small_import.book_ids[TEST_BOOK]]["version"] == 2


async def test_service_key_matches_the_pub_file(api: Api, stub: RunningStub) -> None:
    doc = await api.call("GET", "/v1/service-key")
    assert doc["public_key"] == stub.public_key_text == stub.pub_path.read_text().strip()
    assert stub.key_path.stat().st_mode & 0o777 == 0o600


async def test_manifest_is_signed_fresh_and_only_for_the_library(
    api: Api, stub: RunningStub, small_import: StubImport
) -> None:
    book_id = small_import.book_ids[ALICE]
    account = await api.account()
    _, device = await api.device(account)
    doc = await api.call("GET", f"/v1/books/{book_id}/manifest", device, expect=403)
    assert doc["error"] == "not_in_library"
    await api.call("GET", f"/v1/books/{book_id}/versions/1/package", device, expect=403)
    await api.call("GET", "/v1/books/bk_unknown/manifest", device, expect=403)

    await api.buy(account, book_id)
    before = int(time.time())
    manifest = await _manifest(api, stub, device, book_id)
    assert manifest.book_id == book_id
    assert manifest.version == 1
    assert before <= manifest.issued_at <= int(time.time())
    assert manifest.expires_at == manifest.issued_at + 30 * 24 * 3600
    assert manifest.first_chapter == "OPS/chapter_001.xhtml"


async def test_buy_send_return_and_their_errors(api: Api, small_import: StubImport) -> None:
    book_id = small_import.book_ids[ALICE]
    account = await api.account()
    kindle_id, kindle = await api.device(account, "kindle")
    _, kobo = await api.device(account, "kobo")
    await api.call("POST", "/v1/library/buy", account, {"book_id": "bk_nope"}, expect=404)
    await api.call("POST", "/v1/library/buy", account, {}, expect=400)
    other_device, _ = await api.device(await api.account("other"))
    await api.call(
        "POST",
        "/v1/library/send",
        account,
        {"book_id": book_id, "device_id": other_device},
        expect=404,
    )

    sent = await api.call(
        "POST", "/v1/library/send", account, {"book_id": book_id, "device_id": kindle_id}, 201
    )
    await api.call("GET", f"/v1/books/{book_id}/manifest", kobo, expect=403)
    kindle_feed = await api.call("GET", "/v1/library/changes", kindle)
    assert [(c["seq"], c["action"], c["reason"]) for c in kindle_feed["changes"]] == [
        (sent["seq"], "add", "sent")
    ]
    assert (await api.call("GET", "/v1/library/changes", kobo))["changes"] == []

    bought = await api.buy(account, book_id)
    await api.call("POST", "/v1/library/buy", account, {"book_id": book_id}, expect=409)
    returned = await api.call("POST", "/v1/library/return", account, {"book_id": book_id}, 201)
    await api.call("POST", "/v1/library/return", account, {"book_id": book_id}, expect=404)
    feed = await api.call("GET", "/v1/library/changes?cursor=0&limit=10", kobo)
    assert [(c["seq"], c["action"]) for c in feed["changes"]] == [
        (bought, "add"),
        (returned["seq"], "remove"),
    ]
    assert feed["cursor"] == returned["seq"]
    assert feed["has_more"] is False
    change = feed["changes"][0]
    assert change["book_id"] == book_id
    assert change["version"] == 1
    assert isinstance(change["at"], float)
    await api.call("GET", f"/v1/books/{book_id}/manifest", kobo, expect=403)


async def test_package_whole_and_ranges(
    api: Api, stub: RunningStub, small_import: StubImport
) -> None:
    book_id = small_import.book_ids[TEST_BOOK]
    _, device = await _owner(api, book_id)
    manifest = await _manifest(api, stub, device, book_id)
    assert manifest.version == 2
    url = f"{stub.url}/v1/books/{book_id}/versions/2/package"
    auth = {"Authorization": f"Bearer {device}", "Accept-Encoding": "gzip, deflate"}

    async with api.session.get(url, headers=auth) as response:
        whole = await response.read()
        assert response.status == 200
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Length"] == str(manifest.package_size)
        assert response.headers["ETag"] == f'"{hashlib.sha256(whole).hexdigest()}"'
        assert "Content-Encoding" not in response.headers
    assert len(whole) == manifest.package_size
    for frame in manifest.frames:
        assert hashlib.sha256(whole[frame.offset : frame.offset + frame.length]).hexdigest() == (
            frame.sha256
        )

    size = len(whole)
    cases = {
        "bytes=10-99": (10, 100),
        f"bytes={size - 5}-": (size - 5, size),
        "bytes=-7": (size - 7, size),
        f"bytes=100-{size + 1000}": (100, size),
    }
    for header, (start, end) in cases.items():
        async with api.session.get(url, headers={**auth, "Range": header}) as response:
            assert response.status == 206, header
            assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
            assert response.headers["Content-Length"] == str(end - start)
            assert await response.read() == whole[start:end]

    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        async with api.session.get(url, headers={**auth, "Range": header}) as response:
            assert response.status == 416, header
            assert response.headers["Content-Range"] == f"bytes */{size}"
            assert (await response.json())["error"] == "range_not_satisfiable"

    for header in ("bytes=5-2", "items=0-5", "bytes=0-1,4-5"):  # ignored: the whole body
        async with api.session.get(url, headers={**auth, "Range": header}) as response:
            assert response.status == 200, header
            assert await response.read() == whole

    async with api.session.head(url, headers=auth) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)

    # The older version stays downloadable; unknown versions are 404.
    async with api.session.get(url.replace("/2/", "/1/"), headers=auth) as response:
        assert response.status == 200
    for version in ("3", "x"):
        async with api.session.get(url.replace("/2/", f"/{version}/"), headers=auth) as response:
            assert response.status == 404


async def test_changes_feed_pages_a_20000_book_library(api: Api, stub: RunningStub) -> None:
    account = await api.account()
    _, device = await api.device(account)
    account_id = stub.store.account_for_token(account)
    assert account_id is not None
    last = stub.store.seed_library(account_id, (f"bk_seed{i:06d}" for i in range(20_000)), 1.0)

    seqs: list[int] = []
    cursor, requests, has_more = 0, 0, True
    while has_more:
        page = await api.call("GET", f"/v1/library/changes?cursor={cursor}", device)
        requests += 1
        assert len(page["changes"]) <= 500
        seqs.extend(c["seq"] for c in page["changes"])
        cursor, has_more = page["cursor"], page["has_more"]
    assert requests == 40  # its speed is python -m bench scale's to measure, not a test's
    assert len(seqs) == 20_000
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == last == cursor

    big = await api.call("GET", "/v1/library/changes?cursor=0&limit=1000", device)
    assert len(big["changes"]) == 1000
    assert big["has_more"] is True
    empty = await api.call("GET", f"/v1/library/changes?cursor={last}", device)
    assert {k: v for k, v in empty.items() if k != "now"} == {
        "changes": [],
        "cursor": last,
        "has_more": False,
        "root_version": 1,
    }
    assert isinstance(empty["now"], float)  # the service's clock (issue 23 #1)
    for query in ("limit=0", "limit=1001", "cursor=-1", "cursor=abc", "cursor=%C2%B2"):
        doc = await api.call("GET", f"/v1/library/changes?{query}", device, expect=400)
        assert doc["error"] == "bad_query"


async def test_push_says_hello_and_library_changed(
    api: Api, stub: RunningStub, small_import: StubImport
) -> None:
    account = await api.account()
    device_id, device = await api.device(account)
    first = await api.buy(account, small_import.book_ids[ALICE])
    headers = {"Authorization": f"Bearer {device}"}
    account_id = stub.store.account_for_token(account)
    assert account_id is not None
    hub = stub.app[HUB]
    async with api.session.ws_connect(f"{stub.url}/v1/push", headers=headers) as ws:
        assert await ws.receive_json(timeout=5) == {"type": "hello", "cursor": first}
        assert hub.connected(account_id, device_id) == 1
        second = await api.buy(account, small_import.book_ids[TEST_BOOK])
        assert await ws.receive_json(timeout=5) == {"type": "library_changed", "cursor": second}
        returned = await api.call(
            "POST", "/v1/library/return", account, {"book_id": small_import.book_ids[ALICE]}, 201
        )
        message = await ws.receive_json(timeout=5)
        assert message == {"type": "library_changed", "cursor": returned["seq"]}
    for _ in range(100):  # the server notices the close asynchronously
        if not hub.connected(account_id, device_id):
            break
        await asyncio.sleep(0.01)
    assert hub.connected(account_id, device_id) == 0
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        async with api.session.ws_connect(f"{stub.url}/v1/push"):
            pass
    assert e.value.status == 401


async def test_push_version_2_carries_the_change_and_the_manifest_made_for_the_device(
    api: Api, stub: RunningStub, small_import: StubImport
) -> None:
    account = await api.account()
    _, device = await api.device(account)
    first = await api.buy(account, small_import.book_ids[ALICE])
    headers = {"Authorization": f"Bearer {device}"}
    url = f"{stub.url}/v1/push?version=2&first_chapter_bytes=262144"
    async with api.session.ws_connect(url, headers=headers) as ws:
        hello = await ws.receive_json(timeout=5)
        dictionary = stub.store.current_dictionary()
        assert dictionary is not None
        assert hello == {
            "type": "hello",
            "cursor": first,
            "version": 2,
            "dictionaries": [
                {"sha256": hashlib.sha256(dictionary).hexdigest(), "size": len(dictionary)}
            ],
        }
        book_id = small_import.book_ids[TEST_BOOK]
        second = await api.buy(account, book_id)
        data = await ws.receive_bytes(timeout=5)
        size = int.from_bytes(data[:4], "big")
        header = json.loads(data[4 : 4 + size])
        assert header["cursor"] == second
        assert header["after"] == first
        assert [(c["seq"], c["book_id"], c["action"]) for c in header["changes"]] == [
            (second, book_id, "add")
        ]
        [entry] = header["manifests"]
        envelope = data[4 + size : 4 + size + entry["length"]]
        key = public_key_from_text(stub.public_key_text)
        manifest = parse_manifest(open_envelope(envelope, key))
        assert manifest.book_id == book_id
        assert manifest.content_key is not None  # wrapped for this device
        assert len(data) == 4 + size + entry["length"]
        # The package's leading whole frames that fit the room the device said it has are
        # announced, then follow one frame a message.
        fitting = [f for f in manifest.frames if f.offset + f.length <= 262144]
        end = fitting[-1].offset + fitting[-1].length
        version = manifest.version
        assert header["frames_follow"] == [{"book_id": book_id, "version": version, "length": end}]
        info = stub.store.package_info(book_id, version)
        assert info is not None
        for frame in fitting:
            data = await ws.receive_bytes(timeout=5)
            size = int.from_bytes(data[:4], "big")
            assert json.loads(data[4 : 4 + size]) == {
                "type": "package_frames",
                "book_id": book_id,
                "version": version,
                "offset": frame.offset,
                "length": frame.length,
            }
            package = stub.store.read_package(info.rowid, frame.offset, frame.length)
            assert data[4 + size :] == package

        # A return travels whole too, with nothing to fetch.
        returned = await api.call("POST", "/v1/library/return", account, {"book_id": book_id}, 201)
        data = await ws.receive_bytes(timeout=5)
        header = json.loads(data[4:])
        assert header["after"] == second
        assert [c["action"] for c in header["changes"]] == ["remove"]
        assert header["cursor"] == returned["seq"]
        assert header["manifests"] == []


async def test_a_device_asking_for_a_newer_push_version_gets_the_newest_served(
    api: Api, stub: RunningStub
) -> None:
    account = await api.account()
    _, device = await api.device(account)
    headers = {"Authorization": f"Bearer {device}"}
    async with api.session.ws_connect(f"{stub.url}/v1/push?version=7", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["version"] == 2


async def test_push_sockets_close_when_the_stub_stops(
    stub_data: Path, http: aiohttp.ClientSession
) -> None:
    async with running_stub(stub_data) as stub:
        api = Api(http, stub.url)
        _, device = await api.device(await api.account())
        ws = await http.ws_connect(
            f"{stub.url}/v1/push", headers={"Authorization": f"Bearer {device}"}
        )
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        stopping = asyncio.get_running_loop().time()
    message = await ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert asyncio.get_running_loop().time() - stopping < 5
    await ws.close()


async def test_errors_are_json(api: Api) -> None:
    doc = await api.call("GET", "/v1/nothing-here", expect=404)
    assert doc["error"] == "not_found"
    doc = await api.call("DELETE", "/v1/accounts", expect=405)
    assert doc["error"] == "method_not_allowed"
    async with api.session.post(
        api.url + "/v1/accounts", data=b'{"name": "' + b"x" * 70_000 + b'"}'
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "body_too_large"
    async with api.session.post(api.url + "/v1/accounts", data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"] == "bad_json"
    await api.call("POST", "/v1/accounts", body={"name": ""}, expect=400)
    await api.call("POST", "/v1/accounts", body=["name"], expect=400)
    # Admin routes exist only with --faults.
    await api.call("GET", "/v1/admin/requests", expect=404)


async def test_state_survives_a_restart(
    stub_data: Path, http: aiohttp.ClientSession, small_import: StubImport
) -> None:
    book_id = small_import.book_ids[ALICE]
    async with running_stub(stub_data) as stub:
        api = Api(http, stub.url)
        account = await api.account()
        _, device = await api.device(account)
        seq = await api.buy(account, book_id)
        key_text = stub.public_key_text
    async with running_stub(stub_data) as stub:
        api = Api(http, stub.url)
        assert stub.public_key_text == key_text
        feed = await api.call("GET", "/v1/library/changes", device)
        assert [c["seq"] for c in feed["changes"]] == [seq]
        manifest = await _manifest(api, stub, device, book_id)
        assert manifest.book_id == book_id
        await api.call("POST", "/v1/library/buy", account, {"book_id": book_id}, expect=409)
        assert await api.buy(account, small_import.book_ids[TEST_BOOK]) > seq


@pytest.mark.needs_books("idpf_mahabharata.epub")
async def test_the_largest_book_over_http(
    corpus_stub_data: Path, http: aiohttp.ClientSession, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["idpf_mahabharata.epub"]
    async with running_stub(corpus_stub_data) as stub:
        api = Api(http, stub.url)
        _, device = await _owner(api, book_id)
        manifest = await _manifest(api, stub, device, book_id)  # a ~1.4 MB envelope
        assert len(manifest.resources) == 2020
        url = f"{stub.url}/v1/books/{book_id}/versions/1/package"
        digest = hashlib.sha256()
        async with http.get(url, headers={"Authorization": f"Bearer {device}"}) as response:
            async for chunk in response.content.iter_chunked(1 << 16):
                digest.update(chunk)
            assert response.headers["ETag"] == f'"{digest.hexdigest()}"'
        assert manifest.package_size == int(response.headers["Content-Length"])
