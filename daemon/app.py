"""The composition root: builds every part of the daemon, runs them, stops them in order.

Tasks: the radio's wake windows, library sync, delivery (which owns one task per running
download), delivery receipts, connectivity, annotation sync and popular highlights, in one
TaskGroup. A stop request or a
crash of any of them cancels the others; the local API stops last so the reader keeps reading
until the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.api.library import LibraryApi
from daemon.api.notes import NotesApi
from daemon.api.server import LocalApi
from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.clock import Clock, SystemClock
from daemon.config import Settings
from daemon.content.delivery import DeliveryPolicy, DeliveryWorker
from daemon.content.library_sync import LibrarySync
from daemon.content.reader import FrameOpener
from daemon.content.receipts import ReceiptSync
from daemon.content.trip import archive_slots, trip_state
from daemon.device_key import load_or_create_device_key
from daemon.errors import ConfigError, FrameHashError
from daemon.logs import log_event
from daemon.notes.annotation_sync import AnnotationSync
from daemon.notes.shared_highlights import SharedHighlights
from daemon.notes.store import NotesStore
from daemon.protocol.crypto import x25519_public_text
from daemon.protocol.hlc import HybridClock
from daemon.radio.connectivity import Connectivity
from daemon.radio.power import PowerSource, SysfsPower, power_report
from daemon.radio.windows import RadioWindows
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.app")


class _Stop(Exception):
    """Raised inside the task group to end it when a stop is requested."""


async def device_credentials(
    store: Store, settings: Settings, device_key: X25519PrivateKey, now: float
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
    # Books ordered from now on are this device's to fetch; older ones stay in the cloud.
    store.set_meta("registered_at", repr(now))
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
    def __init__(
        self, settings: Settings, clock: Clock | None = None, power: PowerSource | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.power = power or SysfsPower()  # battery and charging, for the planner and status
        self.api: LocalApi | None = None
        self._connectivity: Connectivity | None = None
        self.windows: RadioWindows | None = None  # the radio's owner, while running
        self._delivery: DeliveryWorker | None = None
        self._store: Store | None = None
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
            # A view, not a copy: with a large library it holds thousands of reasons.
            "waiting": MappingProxyType(self._delivery.waiting) if self._delivery else {},
            "downloads_paused": self._delivery.paused_reason if self._delivery else None,
            "trip": self._trip(),
            "power": power_report(self.power.read(), self.settings.profile.battery),
            # Windows that woke a sleeping radio since the start: what the battery pays for.
            "radio_wakeups": self.windows.wakeups if self.windows else 0,
        }

    def _trip(self) -> dict[str, Any] | None:
        trip = trip_state(self._store, self.clock.wall()) if self._store else None
        return None if trip is None else {"days": trip.days, "until": trip.until}

    def _archive_slots(self) -> int:
        """How many more archive books the trip being prepared still wants."""
        trip = trip_state(self._store, self.clock.wall()) if self._store else None
        if trip is None or self._store is None:
            return 0
        held = sum(1 for b in self._store.held_books() if not b.wanted)
        return max(0, archive_slots(trip.days) - held)

    async def run(self, stop: asyncio.Event) -> None:
        settings, profile = self.settings, self.settings.profile
        self._started_at = self.clock.wall()
        store = self._store = Store.open(settings.db_path)
        caches = profile.memory.caches
        store.set_page_cache_kib(caches.writer_page_cache_kib)
        client: ServiceClient | None = None
        notes: NotesStore | None = None
        windows = self.windows = RadioWindows(self.clock)
        batch_window_s = profile.sync.batch_window_s
        try:
            device_key = load_or_create_device_key(settings.device_key_path)
            credentials = await device_credentials(store, settings, device_key, self.clock.wall())
            client = ServiceClient(
                settings.service_url,
                credentials,
                ClientLimits(
                    connect_timeout_s=profile.downloads.connect_timeout_s,
                    stall_timeout_s=profile.downloads.stall_timeout_s,
                    min_rate_bytes_per_s=profile.downloads.min_rate_bytes_per_s,
                    idle_connection_s=profile.sync.keepalive_s,
                ),
                on_radio=windows.radio_used,
            )
            delivery = DeliveryWorker(
                store,
                client,
                self.clock,
                settings.service_key,
                device_key,
                DeliveryPolicy(
                    concurrency=profile.downloads.concurrency,
                    quota_bytes=profile.storage.quota_bytes,
                    reserve_bytes=profile.storage.reserve_bytes,
                    batch_window_s=batch_window_s,
                    disk_full_pause_s=settings.disk_full_pause_s,
                ),
                windows,
                battery_restricted=lambda: self.power.read().restricted(profile.battery),
                archive_slots=self._archive_slots,
            )
            self._delivery = delivery

            def refetch(error: FrameHashError) -> None:
                store.discard_frame(error.book_id, error.version, error.idx)
                delivery.wake()

            notes = NotesStore.open(settings.db_path)
            notes.set_page_cache_kib(caches.notes_page_cache_kib)
            # Orders every note edit of this device; starts past what it ever made or saw.
            note_clock = HybridClock(credentials.device_id, notes.clock_floor())
            annotations = AnnotationSync(
                notes, client, self.clock, note_clock, windows, batch_window_s=batch_window_s
            )
            popular = SharedHighlights(
                notes, client, self.clock, windows, batch_window_s=batch_window_s
            )
            receipts = ReceiptSync(store, client, self.clock, profile, windows)

            def library_changed() -> None:
                delivery.wake()
                popular.wake()
                receipts.wake()

            def link_event(kind: str) -> None:
                receipts.on_link_event(kind)
                if kind == "online":
                    annotations.link_up()
                    popular.link_up()
                elif kind in ("annotations_changed", "poll"):
                    annotations.request()

            sync = LibrarySync(store, client, self.clock, windows, on_change=library_changed)

            def everything_now() -> None:
                """A trip is being prepared (or a book asked for): every worker goes now."""
                sync.request()
                annotations.link_up()
                popular.link_up()
                library_changed()

            self._connectivity = Connectivity(
                client,
                self.clock,
                windows,
                sync.request,
                keepalive_s=profile.sync.keepalive_s,
                poll_interval_s=profile.sync.poll_interval_s,
                on_event=link_event,
            )
            self.api = LocalApi(
                settings.db_path,
                FrameOpener(
                    device_key, profile.memory.zstd_window_cap_bytes, caches.frame_cache_bytes
                ),
                self.runtime,
                refetch,
                settings.api_socket,
                settings.tcp_port,
                _api_token(settings),
                notes=NotesApi(
                    notes, note_clock, self.clock, annotations.request, annotations.link_up
                ),
                library=LibraryApi(
                    store, self.clock, everything_now, self.runtime, delivery.free_bytes
                ),
                page_cache_kib=caches.reader_page_cache_kib,
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
            annotations.link_up()
            popular.link_up()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(windows.run(), name="radio windows")
                    tasks.create_task(sync.run(), name="library sync")
                    tasks.create_task(annotations.run(), name="annotation sync")
                    tasks.create_task(popular.run(), name="popular highlights")
                    tasks.create_task(delivery.run(), name="delivery")
                    tasks.create_task(receipts.run(), name="delivery receipts")
                    tasks.create_task(self._connectivity.run(), name="connectivity")
                    tasks.create_task(_raise_on(stop), name="stop watcher")
            except* _Stop:
                pass
        finally:
            self._delivery = None
            self._store = None
            self.windows = None
            self._connectivity = None  # a stopped daemon is not online
            if self.api is not None:
                await self.api.stop()
            if client is not None:
                await client.close()
            if notes is not None:
                notes.close()
            store.close()
            log_event(_LOG, logging.INFO, "daemon_stopped")


async def _raise_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stop
