"""After an outage, a purchase reaches the device when the service returns, not when a retry
scheduled during the outage falls due (issue 22 #1, issue 23 #4): the push channel coming back
cuts every pending backoff short. A real daemon and stub, through the link emulator, with the
service stopped and started again on the same address."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from daemon.backoff import Backoff
from daemon.profile import load_profile
from devkit.linkemu import LinkEmulator
from server_stub.app import RunningStub, running_stub
from tests.conftest import StubImport
from tests.integration.harness import running_device

# The backoff minutes of outage grow the library pull's to: its next retry is 30-300 s out.
GROWN = Backoff(base_s=300.0, cap_s=300.0)
BOOK = "idpf_wasteland.epub"


async def test_a_purchase_after_an_outage_does_not_wait_out_an_old_retry(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    service: AbstractAsyncContextManager[RunningStub] | None = running_stub(corpus_stub_data)
    stub = await service.__aenter__()
    try:
        async with (
            LinkEmulator(load_profile("emulator-loopback").link, ("127.0.0.1", stub.port)) as link,
            running_device(link.url, stub.public_key_text, tmp_path / "d") as device,
        ):
            daemon = device.daemon
            deadline = time.monotonic() + 20
            await device.wait_online(timeout_s=20)
            [library] = [r for r in daemon._retries if r.worker == "library sync"]
            library._backoff = GROWN

            # The outage: the service goes away; the channel drops, the pull that probes for
            # the link's return fails and schedules its next try minutes out.
            await service.__aexit__(None, None, None)
            service = None
            while library.last is None:
                assert time.monotonic() < deadline + 20, "the pull never failed"
                await asyncio.sleep(0.02)
            assert library.last.delay_s >= GROWN.cap_s / 10

            # The service returns, and the reader buys at once.
            service = running_stub(corpus_stub_data, port=stub.port)
            stub = await service.__aenter__()
            back = time.monotonic()
            await device.account.buy(book_id)
            while await device.book_state(book_id) is None:
                waited = time.monotonic() - back
                assert waited < GROWN.cap_s / 10, f"the purchase waited {waited:.0f} s"
                await asyncio.sleep(0.05)
            await device.wait_complete(book_id)
    finally:
        if service is not None:
            await service.__aexit__(None, None, None)
