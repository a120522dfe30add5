"""The local API: private socket, no way out of a book, loopback TCP only with the token."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import Device, running_device

BOOK_PATH = "epub/text/chapter-1.xhtml"


async def raw_get(socket_path: Path, target: str) -> int:
    """Send the request line exactly as written (no client-side normalisation); the status."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.fixture
async def device(tmp_path: Path, corpus_stub_data: Path) -> AsyncIterator[Device]:
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", tcp_port=0) as device,
    ):
        yield device


@pytest.mark.faults(30)
async def test_the_socket_is_private_to_the_daemons_user(device: Device) -> None:
    socket_path = device.daemon.settings.api_socket
    mode = os.stat(socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def connect_as(uid: int, socket_path: str) -> int:
    """In a forked child running as `uid`, try to connect; the child's exit code says how."""
    pid = os.fork()
    if pid == 0:  # the child: only syscalls, then _exit
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            socket.socket(socket.AF_UNIX).connect(socket_path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.faults(30)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_connect(device: Device) -> None:
    assert connect_as(65534, str(device.daemon.settings.api_socket)) == 13


@pytest.mark.parametrize(
    "target",
    [
        "/v1/books/{id}/resources/../../../../etc/passwd",
        "/v1/books/{id}/resources/%2e%2e/%2e%2e/etc/passwd",
        "/v1/books/{id}/resources/epub/..%2f..%2f..%2fetc/passwd",
        "/v1/books/{id}/resources//etc/passwd",
        "/v1/books/{id}/resources/epub/text/%00chapter-1.xhtml",
        "/v1/books/{id}/resources/epub\\..\\..\\etc\\passwd",
        "/v1/books/..%2f..%2fetc/resources/passwd",
        "/v1/books/{id}/resources/%2fetc%2fpasswd",
        "/v1/books/{id}/resources/./" + BOOK_PATH,
    ],
)
@pytest.mark.faults(31)
async def test_paths_that_try_to_leave_a_book_are_refused(
    device: Device, stub_corpus_import: StubImport, target: str
) -> None:
    book_id = stub_corpus_import.book_ids["se_h-g-wells_the-time-machine.epub"]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    socket_path = device.daemon.settings.api_socket
    assert await raw_get(socket_path, f"/v1/books/{book_id}/resources/{BOOK_PATH}") == 200
    assert await raw_get(socket_path, target.replace("{id}", book_id)) in (400, 404)


@pytest.mark.faults(30)
async def test_loopback_tcp_needs_the_token_and_a_loopback_host(device: Device) -> None:
    api = device.daemon.api
    assert api is not None
    assert api.tcp_port
    url = f"http://127.0.0.1:{api.tcp_port}/v1/status"
    token = device.daemon.settings.api_token_path.read_text().strip()
    assert stat.S_IMODE(os.stat(device.daemon.settings.api_token_path).st_mode) == 0o600
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            assert r.status == 401
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        async with session.get(url, headers={**auth, "Host": "evil.example"}) as r:
            assert r.status == 403  # DNS rebinding: a web page's host name
        async with session.get(url, headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["daemon"]["running"] is True
