"""A real device for integration tests: the daemon in this event loop, its local API client,
and an account on the stub to buy with."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from daemon.api.client import LocalApiClient
from daemon.app import Daemon
from daemon.client import AccountClient
from daemon.clock import Clock
from daemon.config import DISK_FULL_PAUSE_S, Settings
from daemon.profile import load_profile
from daemon.protocol.crypto import public_key_from_text
from daemon.radio.power import FakePower, PowerSource
from server_stub.app import RunningStub


@dataclass
class Device:
    daemon: Daemon
    api: LocalApiClient
    account: AccountClient
    state_dir: Path

    async def book_state(self, book_id: str) -> dict[str, Any] | None:
        return await self.api.library_entry(book_id)

    async def wait_for(
        self, book_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 60
    ) -> dict[str, Any]:
        """Poll the local API until the book's state satisfies `done`."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = await self.book_state(book_id)
            if last is not None and done(last):
                return last
            await asyncio.sleep(0.02)
        raise AssertionError(f"{book_id} never reached the expected state; last: {last}")

    async def wait_removed(self, book_id: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while await self.book_state(book_id) is not None:
            assert time.monotonic() < deadline, f"{book_id} is still on the device"
            await asyncio.sleep(0.02)

    async def wait_online(self, timeout_s: float = 20) -> None:
        """Until the daemon's push channel is up and the service has spoken on it."""
        deadline = time.monotonic() + timeout_s
        while not self.daemon.runtime()["online"]:
            assert time.monotonic() < deadline, "never online"
            await asyncio.sleep(0.02)

    async def wait_complete(self, book_id: str, timeout_s: float = 60) -> dict[str, Any]:
        return await self.wait_for(book_id, lambda b: b["state"] == "complete", timeout_s)


@asynccontextmanager
async def running_device(
    stub_url: str,
    service_key_text: str,
    state_dir: Path,
    *,
    profile: str = "emulator-loopback",
    account: AccountClient | None = None,
    tcp_port: int | None = None,
    clock: Clock | None = None,
    power: PowerSource | None = None,
    disk_full_pause_s: float = DISK_FULL_PAUSE_S,
) -> AsyncIterator[Device]:
    if account is None:
        account = AccountClient(stub_url)
        await account.create_account("test reader")
    settings = Settings(
        state_dir=state_dir,
        service_url=stub_url,
        service_key=public_key_from_text(service_key_text),
        profile=load_profile(profile),
        account_token=account.account_token,
        tcp_port=tcp_port,
        disk_full_pause_s=disk_full_pause_s,
    )
    daemon = Daemon(settings, clock, power or FakePower())
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="daemon under test")
    try:
        deadline = time.monotonic() + 20
        while not settings.api_socket.exists():
            if task.done():
                task.result()  # raises what stopped it
            assert time.monotonic() < deadline, "daemon did not start"
            await asyncio.sleep(0.01)
        async with LocalApiClient(settings.api_socket) as api:
            yield Device(daemon, api, account, state_dir)
    finally:
        stop.set()
        await task


async def admin(stub_url: str, method: str, path: str, body: Any = None) -> Any:
    """Call the stub's fault-injection admin API."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, stub_url + path, json=body) as r,
    ):
        r.raise_for_status()
        return await r.json(content_type=None)


async def spawn_daemon(
    stub: RunningStub,
    state: Path,
    account_token: str,
    kill_at: str | None,
    profile: str = "emulator-loopback",
    *,
    service_url: str | None = None,
) -> asyncio.subprocess.Process:
    """`shelfsync run` as a real subprocess (for kill tests): SIGKILLs itself at `kill_at`
    ("point:n", daemon/killpoints.py) when given. Its stderr is piped for the assertions.
    `service_url` puts something (a hostile proxy) between it and the stub."""
    env = {k: v for k, v in os.environ.items() if k != "SHELFSYNC_KILL_AT"}
    env["SHELFSYNC_ACCOUNT_TOKEN"] = account_token  # not in argv, where every user can read it
    if kill_at:
        env["SHELFSYNC_KILL_AT"] = kill_at
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "run",
        "--state",
        str(state),
        "--service",
        service_url or stub.url,
        "--service-key",
        str(stub.pub_path),
        "--profile",
        profile,
        "--log-level",
        "WARNING",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
