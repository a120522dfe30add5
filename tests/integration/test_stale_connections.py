"""A pooled connection the server closed as a request went out (FAULTS.md #15): an idempotent
request is sent once more on a fresh connection, and nothing fails.

The race of aiohttp issue #9138 (the server's keep-alive timer fires just as the client reuses
the socket) is made certain by a loopback front of the stub that hangs up on every request that
arrives on a connection already used: the worst a keep-alive timeout can do. A second test runs
the race itself: the stub's keepalive_timeout shorter than the client's reuse interval."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from daemon.client import AccountClient, ClientLimits, ServiceClient
from daemon.device_key import load_or_create_device_key
from daemon.protocol.crypto import x25519_public_text
from server_stub.app import running_stub
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for
from tests.integration.harness import running_device

_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ")
BOOK = "se_h-g-wells_the-time-machine.epub"


@pytest.fixture
def library(tmp_path: Path, corpus_dir: Path) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    shutil.copy(corpus_dir / BOOK, folder / BOOK)
    return folder


class StaleFront:
    """TCP between client and stub; a new request on a connection that already carried a
    response is met by a hang-up, unanswered, as a server whose idle timer just fired."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.hung_up = 0  # requests met by a closed socket
        self.connections = 0

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: list[bool]
    ) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                answered.append(True)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        answered: list[bool] = []  # whether the stub has sent anything back on this connection
        back = asyncio.create_task(self._pipe(up_r, client_w, answered))
        try:
            while data := await client_r.read(65536):
                if answered and data.startswith(_METHODS):
                    self.hung_up += 1
                    break
                up_w.write(data)
                await up_w.drain()
        except ConnectionError:
            pass
        finally:
            client_w.close()
            up_w.close()
            back.cancel()
            with suppress(asyncio.CancelledError, ConnectionError):
                await back

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            await server.wait_closed()


@pytest.mark.faults(15)
async def test_a_request_on_a_socket_the_server_closed_is_sent_again_on_a_fresh_one(
    tmp_path: Path, library: Path, fault_figures: object
) -> None:
    epub = read_epub(library / BOOK)
    book_id = book_id_for(epub.identifier, epub.language)
    async with running_stub(tmp_path / "stub", library_dir=library, port=0) as stub:
        front = StaleFront(stub.port)
        async with (
            front.running() as url,
            running_device(url, stub.public_key_text, tmp_path / "dev") as device,
        ):
            await device.account.buy(book_id)
            book = await device.wait_complete(book_id)
        assert front.hung_up > 0
        # Not one request failed for it: the book came in its first attempt.
        assert (book["last_error"], book["retries"]) == (None, 0)
        fault_figures.record(runs=front.hung_up)  # type: ignore[attr-defined]


@pytest.mark.faults(15)
async def test_the_keep_alive_race_of_a_short_server_timeout_costs_no_request(
    tmp_path: Path, library: Path, fault_figures: object
) -> None:
    timeout_s = 0.05
    requests = 200
    stub_data = tmp_path / "stub"
    async with running_stub(
        stub_data, library_dir=library, port=0, keepalive_timeout=timeout_s
    ) as stub:
        account = AccountClient(stub.url)
        await account.create_account("stale")
        key = load_or_create_device_key(tmp_path / "device.key")
        credentials = await account.register_device("stale", x25519_public_text(key))
        client = ServiceClient(stub.url, credentials, ClientLimits(idle_connection_s=15.0))
        rng = random.Random(15)
        try:
            for _ in range(requests):
                # Reuse the pooled socket around the moment the stub closes it.
                await asyncio.sleep(timeout_s * rng.uniform(0.8, 1.2))
                await client.library_changes(0)
        finally:
            await client.close()
    fault_figures.record(runs=requests)  # type: ignore[attr-defined]
