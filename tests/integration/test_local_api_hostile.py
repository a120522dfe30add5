"""The local API under hostile clients (issues 14 and 21): what once answered 500, hung, or
reflected a raw header now answers a 4xx in the one error shape; a cross-site page is refused;
the login link is one-time and its cookie HttpOnly and SameSite=Strict."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api import answers, server
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import Device, running_device

BOOK = "se_h-g-wells_the-time-machine.epub"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The one error shape: {"error": code, "detail": sentence, ...}."""
        assert self.headers["content-type"].startswith("application/json"), self.headers
        doc: dict[str, Any] = json.loads(self.body)
        assert isinstance(doc["error"], str)
        assert isinstance(doc["detail"], str)
        return doc


async def raw(device: Device, request: bytes, *, tcp: bool = False) -> Answer:
    """Send bytes exactly as written and read one answer (the server closes after refusing)."""
    if tcp:
        api = device.daemon.api
        assert api is not None
        assert api.tcp_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", api.tcp_port)
    else:
        reader, writer = await asyncio.open_unix_connection(str(device.daemon.settings.api_socket))
    try:
        writer.write(request)
        await writer.drain()
        # Bounded: a hang is a failure, not a wait (the 10 MB that never comes).
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 30)
        return Answer(int(lines[0].split()[1]), headers, body)
    finally:
        writer.close()


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    given = {name.replace("_", "-"): value for name, value in headers.items()}
    fields = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **given}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + body


@pytest.fixture
async def device(tmp_path: Path, corpus_stub_data: Path) -> AsyncIterator[Device]:
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", tcp_port=0) as device,
    ):
        yield device


@pytest.fixture
def token(device: Device) -> str:
    return device.daemon.settings.api_token_path.read_text().strip()


@pytest.mark.parametrize(
    "body",
    [b'{"days":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 30_000 + b"]" * 30_000],
    ids=["10k-deep object", "30k-deep array"],
)
@pytest.mark.parametrize("target", ["/v1/trip", "/v1/books/bk_x/pin"])
async def test_deeply_nested_json_is_a_400(device: Device, target: str, body: bytes) -> None:
    # The 10k object is 80 KB: over the body cap, refused for its size before its depth.
    answer = await raw(device, request("POST", target, body))
    assert (answer.status, answer.error()["error"]) in ((400, "bad_json"), (413, "body_too_large"))
    small = b"[" * 1000 + b"]" * 1000  # under the cap: refused for its depth
    answer = await raw(device, request("POST", target, small))
    assert (answer.status, answer.error()["error"]) == (400, "bad_json")


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PROPFIND", "CONNECT", "FOO"])
@pytest.mark.parametrize("target", ["/v1/trip", "/v1/books/bk_x/pin"])
async def test_odd_methods_are_refused_in_the_one_shape(
    device: Device, method: str, target: str
) -> None:
    answer = await raw(device, request(method, target, b"hi"))
    assert 400 <= answer.status < 500
    answer.error()


@pytest.mark.faults(32)
async def test_a_body_declared_large_and_never_sent_is_a_quick_413(device: Device) -> None:
    declared = request("POST", "/v1/trip", Content_Length=str(10 * 1024 * 1024))
    answer = await raw(device, declared + b"{}")
    assert (answer.status, answer.error()["error"]) == (413, "body_too_large")


@pytest.mark.faults(32)
async def test_a_body_that_trickles_in_is_refused(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(answers, "BODY_TIMEOUT_S", 0.5)
    answer = await raw(device, request("POST", "/v1/trip", Content_Length="1000") + b'{"da')
    assert (answer.status, answer.error()["error"]) == (408, "body_too_slow")


async def test_a_malformed_header_is_not_reflected(device: Device) -> None:
    evil = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n<script>alert(1)</script>\x01: y\r\n\r\n"
    answer = await raw(device, evil)
    assert answer.status == 400
    assert answer.error()["error"] == "bad_request"
    assert b"script" not in answer.body


async def test_a_non_ascii_authorization_is_a_401(device: Device) -> None:
    wrong = request("GET", "/v1/status").replace(
        b"\r\n\r\n", "\r\nAuthorization: Bearer é\r\n\r\n".encode()
    )
    answer = await raw(device, wrong, tcp=True)
    assert (answer.status, answer.error()["error"]) == (401, "unauthorized")


async def test_the_token_needs_the_bearer_scheme(device: Device, token: str) -> None:
    bare = await raw(device, request("GET", "/v1/status", Authorization=token), tcp=True)
    assert bare.status == 401
    bearer = await raw(
        device, request("GET", "/v1/status", Authorization=f"Bearer {token}"), tcp=True
    )
    assert bearer.status == 200
    assert bearer.headers["x-content-type-options"] == "nosniff"


async def test_ids_with_a_trailing_newline_are_refused(
    device: Device, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    assert (await raw(device, request("GET", f"/v1/books/{book_id}"))).status == 200
    answer = await raw(device, request("GET", f"/v1/books/{book_id}%0A"))
    assert (answer.status, answer.error()["error"]) == (400, "bad_book_id")
    note = {
        "id": "an_abcdefgh\n",
        "kind": "highlight",
        "anchor": {
            "resource": "epub/text/chapter-1.xhtml",
            "start": 0,
            "end": 4,
            "quote": {"exact": "Time"},
        },
    }
    status, doc = await device.api.send("POST", f"/v1/books/{book_id}/annotations", note)
    assert (status, doc["error"], doc["field"]) == (400, "bad_annotation", "id")
    answer = await raw(device, request("GET", "/v1/annotations/an_abcdefgh%0A"))
    assert (answer.status, answer.error()["error"]) == (400, "bad_id")


async def login(device: Device, session: aiohttp.ClientSession) -> str:
    """Follow a fresh login link; the session cookie's value."""
    link = await device.api.post_json("/v1/login-links")
    async with session.get(link["url"], allow_redirects=False) as r:
        assert r.status == 303
        cookie = SimpleCookie(r.headers["Set-Cookie"])["shelfsync_session"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        return cookie.value


async def test_a_login_link_works_once(device: Device) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        link = await device.api.post_json("/v1/login-links")
        async with session.get(link["url"], allow_redirects=False) as r:
            assert r.status == 303
        async with session.get(link["url"], allow_redirects=False) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "bad_login_link"


async def test_shelfsync_open_prints_a_link_that_logs_in(device: Device) -> None:
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "open",
        "--socket",
        str(device.daemon.settings.api_socket),
        stdout=asyncio.subprocess.PIPE,
    )
    printed, _ = await command.communicate()
    assert command.returncode == 0
    url = printed.decode().split()[-1]
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(url, allow_redirects=False) as r,
    ):
        assert (r.status, r.headers["Location"]) == (303, "/app/")
        assert "shelfsync_session=" in r.headers["Set-Cookie"]


async def test_a_unix_client_with_a_bound_socket_is_a_socket_client(
    device: Device, tmp_path: Path
) -> None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.bind(str(tmp_path / "client.sock"))  # now the daemon sees a peer name
    client.connect(str(device.daemon.settings.api_socket))
    reader, writer = await asyncio.open_unix_connection(sock=client)
    writer.write(request("GET", "/v1/status", Connection="close"))
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert int(status_line.split()[1]) == 200


@pytest.fixture
async def small_device(
    tmp_path: Path, corpus_stub_data: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Device]:
    """A device whose listeners hold 4 connections each and close idle ones after 0.5 s."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 0.5)
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", tcp_port=0) as device,
    ):
        yield device


@pytest.mark.faults(32)
async def test_a_flood_of_idle_tcp_sockets_starves_nobody(small_device: Device) -> None:
    api = small_device.daemon.api
    assert api is not None
    assert api.tcp_port is not None
    held = [await asyncio.open_connection("127.0.0.1", api.tcp_port) for _ in range(4)]
    reader, writer = await asyncio.open_connection("127.0.0.1", api.tcp_port)
    writer.write(request("GET", "/v1/status"))  # accepted, it would answer (401: no token)
    assert await asyncio.wait_for(reader.read(), 30) == b""  # the fifth is closed unanswered
    writer.close()
    answer = await raw(small_device, request("GET", "/v1/status"))  # the socket still serves
    assert answer.status == 200
    for idle_reader, _ in held:  # and the idle ones are closed after the idle timeout
        assert await asyncio.wait_for(idle_reader.read(), 30) == b""
    for _, idle_writer in held:
        idle_writer.close()


async def test_login_links_are_made_on_the_socket_only(device: Device, token: str) -> None:
    answer = await raw(
        device, request("POST", "/v1/login-links", Authorization=f"Bearer {token}"), tcp=True
    )
    assert (answer.status, answer.error()["error"]) == (403, "socket_only")


async def test_a_note_posted_from_another_origin_is_refused(
    device: Device, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    api = device.daemon.api
    assert api is not None
    origin = f"http://127.0.0.1:{api.tcp_port}"
    note = {
        "kind": "note",
        "note": "posted by a web page",
        "anchor": {"resource": "epub/text/chapter-1.xhtml", "start": 0, "end": 0},
    }
    url = f"{origin}/v1/books/{book_id}/annotations"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        cookie = {"Cookie": f"shelfsync_session={await login(device, session)}"}
        for hostile in (
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            {"Origin": "http://evil.example"},  # an old browser, without Fetch Metadata
            {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},  # another port
            {"Sec-Fetch-Site": "cross-site"},
        ):
            async with session.post(url, json=note, headers={**cookie, **hostile}) as r:
                assert r.status == 403
                assert (await r.json())["error"] == "cross_site"
        assert (await device.api.get_json(f"/v1/books/{book_id}/annotations"))["annotations"] == []
        own = {**cookie, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
        async with session.post(url, json=note, headers=own) as r:
            assert r.status == 201
