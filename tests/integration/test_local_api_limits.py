"""The local API's header deadline (issue 21 #4): a client that sends its request line and
headers a byte at a time is cut off, on either transport, long before the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.api import server
from server_stub.app import running_stub
from tests.integration.harness import Device, running_device


@pytest.fixture
async def hasty_device(
    tmp_path: Path, corpus_stub_data: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Device]:
    """A device that gives headers 0.5 s, and idle connections far longer."""
    monkeypatch.setattr(server, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 300.0)
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", tcp_port=0) as device,
    ):
        yield device


async def _connect(device: Device, tcp: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tcp:
        api = device.daemon.api
        assert api is not None
        assert api.tcp_port is not None
        return await asyncio.open_connection("127.0.0.1", api.tcp_port)
    return await asyncio.open_unix_connection(str(device.daemon.settings.api_socket))


@pytest.mark.faults(32)
@pytest.mark.parametrize("tcp", [False, True])
async def test_headers_that_trickle_in_are_cut_off(hasty_device: Device, tcp: bool) -> None:
    reader, writer = await _connect(hasty_device, tcp)
    closed = asyncio.ensure_future(reader.read())
    try:
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(600):  # a header byte every 0.1 s, for a minute at most
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(b"X")
                await writer.drain()
            await asyncio.sleep(0.1)
        assert closed.done(), "a trickle of headers kept the connection for a minute"
        # Cut, unanswered: a close, or a reset (a broken pipe on the socket) where the bytes
        # sent last were still unread.
        cut = closed.exception()
        assert isinstance(cut, ConnectionError) if cut is not None else closed.result() == b""
    finally:
        closed.cancel()
        writer.close()


async def test_a_prompt_client_is_answered_on_a_kept_connection(hasty_device: Device) -> None:
    """The deadline is for a request's headers: a client that pauses between requests on a
    kept-alive connection is still answered."""
    reader, writer = await _connect(hasty_device, tcp=False)
    try:
        for _ in range(2):
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            await reader.readexactly(length)
            await asyncio.sleep(1.0)  # longer than the header deadline, idle between requests
    finally:
        writer.close()
