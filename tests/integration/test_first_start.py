"""A first start without a network waits, says so, and registers when the service answers
(issue 23 #9).

With no network, what answers is often not the service: a captive portal or a proxy says 404
with no body. `shelfsync run --account-token` took that for the service refusing the device
and exited with code 2; only the service's own refusal (its error shape) is final.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from daemon.api.client import LocalApiClient
from daemon.app import Daemon
from daemon.client import AccountClient
from daemon.config import Settings
from daemon.profile import load_profile
from daemon.protocol.crypto import public_key_from_text
from daemon.radio.power import FakePower
from server_stub.app import running_stub
from tests.integration.notes_helpers import eventually


async def not_the_service(request: web.Request) -> web.Response:
    return web.Response(status=404)  # a proxy with no route out: no body, no JSON


async def test_first_start_offline_waits_and_registers_when_the_service_answers(
    tmp_path: Path, corpus_stub_data: Path
) -> None:
    async with running_stub(corpus_stub_data, port=0) as stub:
        port, url, key = stub.port, stub.url, stub.public_key_text
        account = AccountClient(url)
        await account.create_account("reader")
    portal = web.Application()
    portal.router.add_route("*", "/{tail:.*}", not_the_service)
    runner = web.AppRunner(portal)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = Settings(
        state_dir=tmp_path / "d",
        service_url=url,
        service_key=public_key_from_text(key),
        profile=load_profile("emulator-loopback"),
        account_token=account.account_token,
    )
    daemon = Daemon(settings, power=FakePower())
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="daemon under test")
    try:

        async def waiting() -> bool:
            assert not task.done(), task  # it must not give up
            return daemon.status_line().startswith("not registered yet: waiting for the network")

        await eventually(waiting)
        await runner.cleanup()  # the network comes back
        async with running_stub(corpus_stub_data, port=port):
            deadline = time.monotonic() + 30
            while not settings.api_socket.exists():
                assert not task.done(), task
                assert time.monotonic() < deadline, daemon.status_line()
                await asyncio.sleep(0.05)
            async with LocalApiClient(settings.api_socket) as api:
                status = await api.status()
            assert status["device_id"].startswith("dev_")
            stop.set()
            await task
    finally:
        stop.set()
        await runner.cleanup()
        await asyncio.gather(task, return_exceptions=True)
