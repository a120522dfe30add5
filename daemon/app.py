"""The composition root: builds every part of the daemon, runs them, stops them in order.

Tasks: the radio's wake windows, library sync, delivery (which owns one task per running
download), delivery receipts, connectivity, annotation sync and popular highlights, in one
TaskGroup, each under the supervisor (daemon/supervisor.py): a worker that fails is logged,
reported in status and restarted with backoff, so none ends the daemon. A stop request cancels
them all; the local API stops last so the reader keeps reading
until the end. Beside them, from the start to the end, the service manager's task
(daemon/notify.py): watchdog pings and the status line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.api.library import LibraryApi
from daemon.api.notes import NotesApi
from daemon.api.server import LocalApi
from daemon.backoff import Backoff
from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.clock import Clock, SystemClock
from daemon.config import Settings
from daemon.content.delivery import DeliveryPolicy, DeliveryWorker
from daemon.content.dictionaries import Dictionaries
from daemon.content.library_sync import LibrarySync
from daemon.content.reader import FrameOpener
from daemon.content.receipts import ReceiptSync
from daemon.content.trip import archive_slots, trip_state
from daemon.device_key import load_or_create_api_token, load_or_create_device_key
from daemon.errors import (
    ConfigError,
    FrameHashError,
    ServiceHTTPError,
    ShelfsyncError,
    StoreError,
    TransportError,
)
from daemon.idle_check import IdleCheck
from daemon.logs import log_event
from daemon.memory import keep_heap_small
from daemon.notes.annotation_sync import AnnotationSync
from daemon.notes.shared_highlights import SharedHighlights
from daemon.notes.store import NotesStore
from daemon.notify import Notifier
from daemon.protocol.crypto import x25519_public_text
from daemon.protocol.hlc import HybridClock
from daemon.protocol.manifest import ManifestLimits
from daemon.radio.connectivity import Connectivity
from daemon.radio.power import PowerSource, SysfsPower, power_report
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry
from daemon.store import Store
from daemon.store.database import check_at_start, wal_lost_at_start
from daemon.store.disk import DiskWatch
from daemon.supervisor import Supervisor

_LOG = logging.getLogger("shelfsync.app")
_T = TypeVar("_T")
# Registering while the service is unreachable: retried from 2 s up to every 5 minutes.
REGISTER_BACKOFF = Backoff(base_s=2.0, cap_s=300.0)
# While the link is down, workers wait for its return (the push channel probes on its backoff,
# at most the poll interval; the system says "network is back"); this only bounds the wait.
LINK_DOWN_WAIT_S = 3600.0
DOWNLOADING = ("queued", "downloading", "retrying")


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
    # Books ordered from now on are this device's to fetch; older ones stay in the cloud. Order
    # times are the service's clock, so this is too (the device's own may be a day off).
    registered_at = now if credentials.registered_at is None else credentials.registered_at
    store.set_meta("registered_at", repr(registered_at))
    store.set_meta("device_name", settings.device_name)  # the reader may rename it (PUT /v1/device)
    log_event(_LOG, logging.INFO, "device_registered", device=credentials.device_id)
    return credentials


def name_device(notes: NotesStore, annotations: AnnotationSync, name: str) -> None:
    """The reader named this device: the service learns it at the next annotation sync, and
    the account's other devices show notes by that name."""
    notes.want_name_sent(name)
    annotations.request()


def _api_token(settings: Settings) -> str | None:
    if settings.tcp_port is None:
        return None
    return load_or_create_api_token(settings.api_token_path)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        power: PowerSource | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.power = power or SysfsPower()  # battery and charging, for the planner and status
        self.notifier = notifier or Notifier(None)  # systemd, when it started us
        self._phase: str | None = "starting"  # the status line before the workers run
        self.api: LocalApi | None = None
        self._connectivity: Connectivity | None = None
        self.windows: RadioWindows | None = None  # the radio's owner, while running
        self._delivery: DeliveryWorker | None = None
        self._dictionaries: Dictionaries | None = None
        self._store: Store | None = None
        self._disk = DiskWatch(settings.state_dir, self.clock.wall)
        self._started_at = 0.0
        self.supervisor = Supervisor(self.clock)  # restarts a worker that fails
        self._retries: list[Retry] = []  # each network worker's, for status

    def runtime(self) -> dict[str, Any]:
        c = self._connectivity
        return {
            "running": True,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "online": bool(c and c.online),
            "push_connected_since": c.push_connected_since if c else None,
            # When the daemon next tries the service (while it cannot reach it, or on a trip
            # between windows): a book bought meanwhile arrives then at the earliest.
            "next_attempt_at": c.next_attempt_at if c and not c.online else None,
            "between_windows": bool(c and c.between_windows),  # on a trip: offline by choice
            "profile": self.settings.profile.name,
            # A view, not a copy: with a large library it holds thousands of reasons.
            "waiting": MappingProxyType(self._delivery.waiting) if self._delivery else {},
            "downloads_paused": self._delivery.paused_reason if self._delivery else None,
            "trip": self._trip(),
            "power": power_report(self.power.read(), self.settings.profile.battery),
            # Windows that woke a sleeping radio since the start: what the battery pays for.
            "radio_wakeups": self.windows.wakeups if self.windows else 0,
            "dictionaries_pending": self._dictionaries.pending if self._dictionaries else 0,
            "storage": self._disk.report(),
            "workers": self._worker_problems(),
        }

    def _worker_problems(self) -> dict[str, dict[str, Any]]:
        """Each worker whose last attempt failed (and why, and what it does about it), and
        each that failed and was restarted."""
        retries = [*self._retries, *([self._connectivity.retry] if self._connectivity else [])]
        problems: dict[str, dict[str, Any]] = {
            r.worker: report for r in retries if (report := r.report()) is not None
        }
        for name, failure in self.supervisor.report().items():
            problems.setdefault(name, {})["crashed"] = failure
        return problems

    def status_line(self) -> str:
        """The short state systemd shows (`systemctl status`): what is coming, what is here."""
        store = self._store
        if self._phase is not None or store is None:
            return self._phase or "stopping"
        counts = store.views.library_counts()  # one pass, no row held: a library of any size
        coming = sum(n for state, n in counts.items() if state in DOWNLOADING)
        last = store.get_meta("last_sync_at")
        when = datetime.fromtimestamp(float(last)).astimezone().strftime("%H:%M") if last else None
        parts = [f"{coming} book{'s' * (coming != 1)} downloading"] if coming else []
        if self._delivery is not None and self._delivery.paused_reason:
            parts = [f"{coming} book{'s' * (coming != 1)} waiting: the disk is full"]
        parts.append(f"{counts.get('complete', 0)} on the device")
        parts.append(f"last sync {when or 'never'}")
        link = "online" if self._connectivity and self._connectivity.online else "offline"
        return f"{link}; " + ", ".join(parts)

    def reload(self, reconfigure: Callable[[], None]) -> None:
        """SIGHUP: `reconfigure` applies what can change while running; systemd is told
        RELOADING=1 before and READY=1 after. A bad new configuration keeps the old one."""
        self.notifier.reloading(int(self.clock.monotonic() * 1e6))
        try:
            reconfigure()
        except ShelfsyncError as e:
            log_event(_LOG, logging.ERROR, "config_reload_failed", error=e)
        if self._phase is None:
            self.notifier.ready(self.status_line())

    async def _register(
        self, store: Store, device_key: X25519PrivateKey, stop: asyncio.Event
    ) -> DeviceCredentials | None:
        """This device's credentials; with the service unreachable, retried until it answers
        or a stop (None). The service's refusal (a wrong account token) is an error at once;
        an error from whatever answers without a network (a captive portal, a proxy) is not."""
        failures = 0
        while True:
            try:
                credentials = await _unless_stopped(
                    stop, device_credentials(store, self.settings, device_key, self.clock.wall())
                )
                if failures and credentials is not None:
                    log_event(_LOG, logging.INFO, "registered_after_waiting", attempts=failures + 1)
                return credentials
            except TransportError as e:
                if isinstance(e, ServiceHTTPError) and not e.retryable and e.from_service:
                    raise
                failures += 1
                delay = REGISTER_BACKOFF.delay(failures)
                log_event(
                    _LOG,
                    logging.WARNING,
                    "registration_waiting",
                    detail="the service cannot be reached; this device registers when it can",
                    error=e,
                    retry_in_s=round(delay),
                )
                self._phase = (
                    "not registered yet: waiting for the network (the service cannot be"
                    f" reached); trying again in {delay:.0f} s"
                )
                self.notifier.status(self._phase)
                self.notifier.extend_timeout(delay + 30)  # still starting, not hung
                await _unless_stopped(stop, self.clock.sleep(delay))
                if stop.is_set():
                    return None

    def _trip(self) -> dict[str, Any] | None:
        trip = trip_state(self._store, self.clock.wall()) if self._store else None
        return None if trip is None else {"days": trip.days, "until": trip.until}

    def _archive_slots(self) -> int:
        """How many more archive books the trip being prepared still wants."""
        trip = trip_state(self._store, self.clock.wall()) if self._store else None
        if trip is None or self._store is None:
            return 0
        held = sum(1 for b in self._store.library.held_books() if not b.wanted)
        return max(0, archive_slots(trip.days) - held)

    async def run(self, stop: asyncio.Event) -> None:
        settings, profile = self.settings, self.settings.profile
        keep_heap_small()
        self._started_at = self.clock.wall()
        wal_lost = wal_lost_at_start(settings.db_path, self._started_at)
        if wal_lost is not None:
            log_event(_LOG, logging.ERROR, "database_wal_lost", reason=wal_lost)
        quarantine = check_at_start(settings.db_path, self._started_at)
        if quarantine is not None:
            log_event(_LOG, logging.ERROR, "database_set_aside", **dataclasses.asdict(quarantine))
        store = self._store = Store.open(settings.db_path, watch=self._disk)
        self._disk.at_start()
        caches = profile.memory.caches
        store.set_page_cache_kib(caches.writer_page_cache_kib)
        client: ServiceClient | None = None
        notes: NotesStore | None = None
        windows = self.windows = RadioWindows(self.clock)
        batch_window_s = profile.sync.batch_window_s
        comeback = Comeback(LINK_DOWN_WAIT_S)  # the service is back: every pending retry goes now
        supervised = asyncio.create_task(
            self.notifier.run(self.clock, self.status_line), name="service manager"
        )
        try:
            store.checkpoint_in_background()  # off the event loop: closed with the store
            device_key = load_or_create_device_key(settings.device_key_path)
            credentials = await self._register(store, device_key, stop)
            if credentials is None:
                return  # stopped before the service ever answered
            self._phase = "starting"
            client = ServiceClient(
                settings.service_url,
                credentials,
                ClientLimits.of(profile),
                on_radio=windows.radio_used,
            )
            dictionaries = self._dictionaries = Dictionaries(store, client)
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
                    span_gap_bytes=int(profile.link.down_bytes_per_s * profile.link.rtt_s),
                    down_bytes_per_s=profile.link.down_bytes_per_s,
                    rtt_s=profile.link.rtt_s,
                    manifest_limits=ManifestLimits.for_ram_budget(profile.memory.ram_budget_bytes),
                ),
                windows,
                battery_restricted=lambda: self.power.read().restricted(profile.battery),
                archive_slots=self._archive_slots,
                comeback=comeback,
                dictionaries=dictionaries,
            )
            self._delivery = delivery

            def refetch(error: FrameHashError) -> None:
                try:
                    store.frames.discard_frame(error.book_id, error.version, error.idx)
                except StoreError as e:  # on a damaged page itself: set aside at next start
                    log_event(_LOG, logging.ERROR, "frame_not_discarded", error=e)
                    return
                delivery.wake()

            notes = NotesStore.open(settings.db_path, watch=self._disk)
            notes.set_page_cache_kib(caches.notes_page_cache_kib)
            # Orders every note edit of this device; starts past what it ever made or saw.
            note_clock = HybridClock(credentials.device_id, notes.clock_floor())
            annotations = AnnotationSync(
                notes,
                client,
                self.clock,
                note_clock,
                windows,
                batch_window_s=batch_window_s,
                comeback=comeback,
            )
            popular = SharedHighlights(
                notes, client, self.clock, windows, batch_window_s=batch_window_s, comeback=comeback
            )
            receipts = ReceiptSync(store, client, self.clock, profile, windows, comeback=comeback)

            def library_changed() -> None:
                delivery.wake()
                popular.wake()
                receipts.wake()

            def link_event(kind: str) -> None:
                if kind != "poll":  # the channel came back, or the service spoke on it
                    comeback.announce()
                receipts.on_link_event(kind)
                if kind == "online":
                    annotations.link_up()
                    popular.link_up()
                elif kind == "annotations_changed":
                    # A highlight of this account is a shared passage too (issue 23 #2): the
                    # refresh rides the radio the pull wakes.
                    annotations.request()
                    popular.link_up()
                elif kind == "poll":
                    annotations.request()
                elif kind == "devices_changed":  # a device of the account was renamed
                    annotations.names_changed()
                elif kind == "popular_changed":  # another reader shared a passage of a book
                    popular.link_up()

            sync = LibrarySync(
                store,
                client,
                self.clock,
                windows,
                on_change=library_changed,
                comeback=comeback,
                on_root=delivery.follow_root,
                on_manifests=delivery.downloads.offer_manifests,
            )

            def notes_now() -> None:
                """The reader asked for a sync, or the system said the network is back: every
                wait for the link ends, and the library, their notes and other readers'
                passages go now, together (one wake of the radio, not one per worker)."""
                comeback.announce()
                sync.request()
                annotations.link_up()
                popular.link_up()

            def everything_now() -> None:
                """A trip is being prepared (or a book asked for): every worker goes now."""
                sync.request()
                annotations.link_up()
                popular.link_up()
                library_changed()

            # A window's work (daemon/radio/windows.py): on a trip it ends when none is left.
            windows.owes("library", lambda: sync.busy)
            windows.owes("delivery", lambda: delivery.downloading > 0)
            windows.owes("annotations", lambda: annotations.busy)
            windows.owes("receipts", lambda: receipts.busy)
            windows.owes("shared highlights", lambda: popular.busy)
            self._retries = [
                sync.retry,
                delivery.retry,
                annotations.retry,
                popular.retry,
                receipts.retry,
            ]
            self._connectivity = Connectivity(
                client,
                self.clock,
                windows,
                sync.request,
                keepalive_s=profile.sync.keepalive_s,
                poll_interval_s=profile.sync.poll_interval_s,
                on_event=link_event,
                on_library_push=sync.apply_push,
                on_pushed_frames=delivery.downloads.offer_frames,
                on_dictionaries=dictionaries.prefetch,
                prefix_room=delivery.free_bytes,
                comeback=comeback,
                on_trip=lambda: self._trip() is not None,
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
                    notes,
                    note_clock,
                    self.clock,
                    annotations.request,
                    notes_now,
                    store.library.service_clock_offset,
                ),
                library=LibraryApi(
                    store,
                    self.clock,
                    everything_now,
                    self.runtime,
                    delivery.free_bytes,
                    renamed=partial(name_device, notes, annotations),
                ),
                page_cache_kib=caches.reader_page_cache_kib,
                watch=self._disk,
                clock=self.clock,
            )
            await self.api.start()
            api = self.api
            idle_check = IdleCheck(
                store,
                self.clock,
                busy=lambda: delivery.downloading > 0 or api.answering > 0,
                on_damage=self._disk.damaged,
            )
            self._phase = None
            self.notifier.ready(self.status_line())
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
                    workers = {
                        "radio windows": windows.run,
                        "library sync": sync.run,
                        "annotation sync": annotations.run,
                        "popular highlights": popular.run,
                        "delivery": delivery.run,
                        "dictionaries": dictionaries.run,
                        "delivery receipts": receipts.run,
                        "connectivity": self._connectivity.run,
                        "idle integrity check": idle_check.run,
                    }
                    for name, work in workers.items():  # none ends the daemon: each restarts
                        tasks.create_task(self.supervisor.keep_running(name, work), name=name)
                    tasks.create_task(_raise_on(stop), name="stop watcher")
            except* _Stop:
                pass
        finally:
            began = self.clock.monotonic()
            self._phase = "stopping"
            self.notifier.stopping()
            supervised.cancel()
            await asyncio.gather(supervised, return_exceptions=True)
            self._delivery = None
            self._dictionaries = None
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
            self.notifier.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            log_event(
                _LOG,
                logging.INFO,
                "daemon_stopped",
                stop_s=f"{self.clock.monotonic() - began:.3f}",
                other_tasks=len(others),  # 0 in `shelfsync run`: nothing left running
            )


async def _raise_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stop


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[_T]) -> _T | None:
    """`work`'s result, or None if `stop` is set first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, waiter):
            pending.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    return None if task.cancelled() else task.result()
