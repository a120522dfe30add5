"""The composition root: builds every part of the daemon, runs them, stops them in order.

Tasks: library sync, delivery (which owns one task per running download) and connectivity, in one
TaskGroup. A stop request or a crash of any of them cancels the others; the local API stops last
so the reader keeps reading until the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.api import LocalApi
from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.clock import Clock, SystemClock
from daemon.config import Settings
from daemon.connectivity import Connectivity
from daemon.crypto import load_or_create_device_key, x25519_public_text
from daemon.delivery import DeliveryPolicy, DeliveryWorker
from daemon.errors import ConfigError, FrameHashError
from daemon.library_sync import LibrarySync
from daemon.logs import log_event
from daemon.reader import FrameOpener
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.app")


class _Stop(Exception):
    """Raised inside the task group to end it when a stop is requested."""


async def device_credentials(
    store: Store, settings: Settings, device_key: X25519PrivateKey
) -> DeviceCredentials:
    """This device's credentials, registering it (and its public key) on first run."""
    device_id, token = store.get_meta("device_id"), store.get_meta("device_token")
    if device_id and token:
        return DeviceCredentials(device_id, token)
    if not settings.account_token:
        raise ConfigError(
            str(settings.state_dir),
            "account_token",
            "this device is not registered yet; give --account-token once to register it",
        )
    account = AccountClient(settings.service_url, settings.account_token)
    credentials = await account.register_device(
        settings.device_name, x25519_public_text(device_key)
    )
    store.set_meta("device_token", credentials.device_token)
    store.set_meta("device_id", credentials.device_id)
    log_event(_LOG, logging.INFO, "device_registered", device=credentials.device_id)
    return credentials


def _api_token(settings: Settings) -> str | None:
    if settings.tcp_port is None:
        return None
    path = settings.api_token_path
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Daemon:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.api: LocalApi | None = None
        self._connectivity: Connectivity | None = None
        self._started_at = 0.0

    def runtime(self) -> dict[str, Any]:
        c = self._connectivity
        return {
            "running": True,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "online": bool(c and c.online),
            "push_connected_since": c.push_connected_since if c else None,
            "profile": self.settings.profile.name,
        }

    async def run(self, stop: asyncio.Event) -> None:
        settings, profile = self.settings, self.settings.profile
        self._started_at = self.clock.wall()
        store = Store.open(settings.db_path)
        client: ServiceClient | None = None
        try:
            device_key = load_or_create_device_key(settings.device_key_path)
            credentials = await device_credentials(store, settings, device_key)
            client = ServiceClient(
                settings.service_url,
                credentials,
                ClientLimits(
                    connect_timeout_s=profile.downloads.connect_timeout_s,
                    stall_timeout_s=profile.downloads.stall_timeout_s,
                    min_rate_bytes_per_s=profile.downloads.min_rate_bytes_per_s,
                ),
            )
            delivery = DeliveryWorker(
                store,
                client,
                self.clock,
                settings.service_key,
                device_key,
                DeliveryPolicy(concurrency=profile.downloads.concurrency),
            )

            def refetch(error: FrameHashError) -> None:
                store.discard_frame(error.book_id, error.version, error.idx)
                delivery.wake()

            sync = LibrarySync(store, client, self.clock, on_change=delivery.wake)
            self._connectivity = Connectivity(
                client,
                self.clock,
                sync.request,
                keepalive_s=profile.sync.keepalive_s,
                poll_interval_s=profile.sync.poll_interval_s,
            )
            self.api = LocalApi(
                settings.db_path,
                FrameOpener(device_key, profile.memory.zstd_window_cap_bytes),
                self.runtime,
                refetch,
                settings.api_socket,
                settings.tcp_port,
                _api_token(settings),
            )
            await self.api.start()
            log_event(
                _LOG,
                logging.INFO,
                "daemon_started",
                device=credentials.device_id,
                profile=profile.name,
                service=settings.service_url,
            )
            sync.request()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(sync.run(), name="library sync")
                    tasks.create_task(delivery.run(), name="delivery")
                    tasks.create_task(self._connectivity.run(), name="connectivity")
                    tasks.create_task(_raise_on(stop), name="stop watcher")
            except* _Stop:
                pass
        finally:
            if self.api is not None:
                await self.api.stop()
            if client is not None:
                await client.close()
            store.close()
            log_event(_LOG, logging.INFO, "daemon_stopped")


async def _raise_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stop
