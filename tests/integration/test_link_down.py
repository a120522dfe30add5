"""While the link is down, the daemon does not dial out on every worker's timer; told that the
network is back, everything goes at once (the week benchmark's radio windows, issue 18 #2).

A real daemon and stub, through the link emulator; the emulator closed is a link that refuses
(nothing listens), started again on the same port is the link's return. A link with no route at
all (ENETUNREACH, no name lookup: the radio off) cannot be made on loopback; the client's reading
of it is checked on the error aiohttp raises for it."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.client import _transport_error as transport_error
from daemon.errors import NoRouteError, UnreachableError
from daemon.profile import load_profile
from devkit.linkemu import LinkEmulator
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import running_device

BOOK = "idpf_wasteland.epub"
LINK = load_profile("emulator-loopback").link


async def test_a_refused_connection_is_the_link_down() -> None:
    link = LinkEmulator(LINK, ("127.0.0.1", 9))
    await link.start()
    url = link.url
    await link.close()  # nothing listens there now
    client = ServiceClient(url, DeviceCredentials("dev_x", "token"), ClientLimits())
    try:
        with pytest.raises(UnreachableError):
            await client.library_changes(0)
    finally:
        await client.close()


SERVICE = ConnectionKey("books.example.com", 443, True, True, None, None, None, None)


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN])
def test_no_route_is_no_network_and_a_refusal_only_the_link_down(code: int) -> None:
    no_route = aiohttp.ClientConnectorError(SERVICE, OSError(code, os.strerror(code)))
    no_name = aiohttp.ClientConnectorDNSError(SERVICE, OSError(-2, "Name or service not known"))
    refused = aiohttp.ClientConnectorError(SERVICE, ConnectionRefusedError(errno.ECONNREFUSED, ""))
    assert isinstance(transport_error("pull", no_route), NoRouteError)
    assert isinstance(transport_error("pull", no_name), NoRouteError)
    seen = transport_error("pull", refused)
    assert isinstance(seen, UnreachableError)
    assert not isinstance(seen, NoRouteError)


async def test_offline_the_pull_waits_for_the_link_and_goes_when_the_network_is_back(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    async with running_stub(corpus_stub_data) as stub:
        link = LinkEmulator(LINK, ("127.0.0.1", stub.port))
        await link.start()
        try:
            website = AccountClient(stub.url)  # the reader's, not through the device's link
            await website.create_account("a reader")
            async with running_device(
                link.url, stub.public_key_text, tmp_path / "d", account=website
            ) as device:
                daemon = device.daemon
                deadline = time.monotonic() + 20
                await device.wait_online(timeout_s=20)
                [library] = [r for r in daemon._retries if r.worker == "library sync"]

                # No route: the channel drops, the pull it asks for cannot connect, nor can
                # the channel's first reconnect.
                await link.close()
                channel = daemon._connectivity.retry if daemon._connectivity else None
                assert channel is not None
                while not (channel.last and channel.last.unreachable and library.last):
                    assert time.monotonic() < deadline + 20, "the link never read as down"
                    await asyncio.sleep(0.02)
                assert library.last.unreachable
                tried = library.failures
                await website.buy(book_id)  # on the website, meanwhile
                # Seconds in which the channel's reconnects (1 s, 2 s, ...) each asked for a
                # pull that could not connect either: now the channel alone probes.
                await asyncio.sleep(4.0)
                assert library.failures == tried
                assert await device.book_state(book_id) is None

                # The link returns, and the system says so: the purchase comes at once.
                link = LinkEmulator(LINK, ("127.0.0.1", stub.port), port=link.port)
                await link.start()
                back = time.monotonic()
                assert (await device.api.send("POST", "/v1/annotations/sync"))[0] == 202
                while await device.book_state(book_id) is None:
                    waited = time.monotonic() - back
                    assert waited < 5, f"the purchase waited {waited:.0f} s"
                    await asyncio.sleep(0.05)
                await device.wait_complete(book_id)
        finally:
            await link.close()
