"""The delivery worker: the scheduler that brings each book in the library onto the device.

It asks the planner (daemon/content/plan.py) what to start and what to pause, owns one task per
running delivery, each a download of one book (daemon/content/download.py: manifest, pushed
frames, Range runs, every frame verified), and cancels and awaits them all on shutdown. A
download below the wanted books is paused while a new purchase is on its way: cancelled and
awaited, its committed frames kept, resumed later at its first missing frame. A failed delivery
is retried after its backoff: a new purchase's at that moment (the 60-second promise), any
other's in a wake window at most the profile's batch window later (daemon/radio/windows.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.backoff import Backoff
from daemon.clock import Clock
from daemon.config import DISK_FULL_PAUSE_S
from daemon.content import plan
from daemon.content.dictionaries import Dictionaries
from daemon.content.download import Downloader
from daemon.errors import (
    DiskFullError,
    ShelfsyncError,
    StoreError,
    VerificationError,
    service_away,
)
from daemon.logs import log_event
from daemon.models import DeliveryCandidate, HeldBook
from daemon.protocol.manifest import PROTOCOL_LIMITS, ManifestLimits
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry, record_failure
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.delivery")
RECHECK_S = 30.0  # while the planner holds books back, look again this often


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    concurrency: int
    quota_bytes: int
    reserve_bytes: int
    batch_window_s: float  # how long a retry that is not a new purchase may wait for a window
    backoff: Backoff = field(default_factory=Backoff)
    disk_full_pause_s: float = DISK_FULL_PAUSE_S  # tests shorten it
    manifest_limits: ManifestLimits = PROTOCOL_LIMITS  # the device's, from its RAM budget

    # Held frames a Range request may read past rather than pay another round trip: the link's
    # bandwidth-delay product (plan.fetch_span). 0 requests each run of missing frames alone.
    span_gap_bytes: int = 0
    # The link as the profile gives it: when the frames a push announced will have landed,
    # so that the rest's request is answered as they end (0: ask at once).
    down_bytes_per_s: float = 0.0
    rtt_s: float = 0.0


class _HeldBooks(Sequence[HeldBook]):
    """The books on the device, read from the store the first time the planner looks."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._books: list[HeldBook] | None = None

    def _read(self) -> list[HeldBook]:
        if self._books is None:
            self._books = self._store.library.held_books()
        return self._books

    def __len__(self) -> int:
        return len(self._read())

    @overload
    def __getitem__(self, index: int) -> HeldBook: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[HeldBook]: ...
    def __getitem__(self, index: int | slice) -> HeldBook | Sequence[HeldBook]:
        return self._read()[index]


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        client: ServiceAPI,
        clock: Clock,
        pinned_key: Ed25519PublicKey,
        device_key: X25519PrivateKey,
        policy: DeliveryPolicy,
        windows: RadioWindows,
        battery_restricted: Callable[[], bool] = lambda: False,
        archive_slots: Callable[[], int] = lambda: 0,
        comeback: Comeback | None = None,
        dictionaries: Dictionaries | None = None,
    ) -> None:
        self._store = store
        # Pushes hand their manifests and first frames to it (`offer_manifests`,
        # `offer_frames`); each running delivery's task runs its `deliver`.
        self.downloads = Downloader(
            store,
            client,
            clock,
            pinned_key,
            device_key,
            dictionaries or Dictionaries(store, client),
            manifest_limits=policy.manifest_limits,
            span_gap_bytes=policy.span_gap_bytes,
            down_bytes_per_s=policy.down_bytes_per_s,
            rtt_s=policy.rtt_s,
        )
        self._clock = clock
        self._policy = policy
        self._windows = windows
        self._battery_restricted = battery_restricted
        self._archive_slots = archive_slots
        self._wake = asyncio.Event()
        self._disk_full_until = 0.0
        self.waiting: dict[str, str] = {}  # book -> why the planner holds it back, for status
        self.paused_reason: str | None = None
        self.downloading = 0  # downloads running now (the idle integrity check waits for none)
        # Each book keeps its own failures in the store; this holds the latest, for status.
        self._comeback = comeback or Comeback()
        self.retry = Retry("delivery", clock, policy.backoff, self._comeback)
        self._cut_short = False  # the service came back since the last look
        # Books whose last attempt failed for the service's absence: its return makes their
        # retry due. Not a 404's: a push every few seconds had those retried ahead of every
        # book not yet tried. None until the first return: what failed before a start counts.
        self._away: set[str] | None = None

    def wake(self) -> None:
        """The library changed, or the link came back: look again at what to deliver."""
        self._wake.set()

    def free_bytes(self) -> int:
        """Room left for books: within the quota and above the file system's reserve."""
        budget = self._budget()
        room = min(
            budget.quota_bytes - self._store.frames.books_bytes(),
            budget.fs_free_bytes - budget.reserve_bytes,
        )
        return max(0, room)

    def _budget(self) -> plan.Budget:
        try:
            fs = os.statvfs(self._store.path.parent)
            fs_free = fs.f_bavail * fs.f_frsize
        except OSError:
            fs_free = 0  # cannot tell: download nothing rather than fill an unknown disk
        if self._clock.monotonic() < self._disk_full_until:
            fs_free = 0
        elif self.paused_reason is not None:
            self.paused_reason = None
            log_event(_LOG, logging.INFO, "downloads_resumed")
        return plan.Budget(
            quota_bytes=self._policy.quota_bytes,
            fs_free_bytes=fs_free,
            reserve_bytes=self._policy.reserve_bytes,
            battery_restricted=self._battery_restricted(),
        )

    async def run(self) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        fresh: set[str] = set()
        try:
            while True:
                now = self._clock.wall()
                archive_slots = self._archive_slots()
                if self._cut_short:
                    self._cut_retries_short(now)
                candidates = self._store.library.delivery_candidates(
                    tasks.keys(), archive_slots, fresh_since=now - plan.FRESH_WINDOW_S, now=now
                )
                by_id = {c.book_id: c for c in candidates}
                for book_id in [b for b in tasks if b not in by_id]:
                    tasks.pop(book_id).cancel()  # returned or removed while downloading
                    fresh.discard(book_id)
                decided = plan.plan_deliveries(
                    candidates,
                    _HeldBooks(self._store),  # read only when a book must make room
                    self._budget(),
                    now,
                    tasks.keys(),
                    len(fresh & tasks.keys()),
                    self._policy.concurrency,
                    archive_slots=archive_slots,
                    used_bytes=self._store.frames.books_bytes(),
                )
                await self._pause(decided.pause, tasks)
                fresh.difference_update(decided.pause)
                for book_id in decided.evict:
                    self._store.library.evict_book(book_id, now)
                    log_event(_LOG, logging.INFO, "book_evicted", book=book_id, reason="space")
                for book_id in decided.start:
                    if plan.is_fresh(by_id[book_id], now):
                        fresh.add(book_id)
                    tasks[book_id] = asyncio.create_task(
                        self._deliver_guarded(book_id), name=f"deliver {book_id}"
                    )
                for book_id in decided.probe:  # planned again, with its size, once it ends
                    tasks[book_id] = asyncio.create_task(
                        self._deliver_guarded(book_id, manifest_only=True),
                        name=f"manifest of {book_id}",
                    )
                self.waiting = decided.waiting
                self.downloading = len(tasks)
                retry = self._retry_range(candidates, now, tasks.keys())
                # Space may free up, a charger be plugged in: a local look, no radio. Anything
                # else that waits is woken by an event (a download ending, the library changing).
                timeout = RECHECK_S if decided.recheck and retry is None else None
                paused_for = self._disk_full_until - self._clock.monotonic()
                if paused_for > 0:  # resume when the pause ends, not at the next recheck
                    timeout = paused_for if timeout is None else min(timeout, paused_for)
                back = self._comeback.event
                waiters: list[asyncio.Task[Any]] = [
                    asyncio.create_task(self._wake.wait(), name="delivery wake"),
                    asyncio.create_task(back.wait(), name="delivery comeback"),
                ]
                if timeout is not None:
                    waiters.append(
                        asyncio.create_task(self._clock.sleep(timeout), name="delivery recheck")
                    )
                if retry is not None:
                    waiters.append(
                        asyncio.create_task(
                            self._windows.wait("delivery", *retry), name="delivery retry window"
                        )
                    )
                try:
                    await asyncio.wait(
                        [*waiters, *tasks.values()], return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                    await asyncio.gather(*waiters, return_exceptions=True)
                self._wake.clear()
                self._cut_short |= back.is_set()
                for book_id in [b for b, t in tasks.items() if t.done()]:
                    done = tasks.pop(book_id)
                    fresh.discard(book_id)
                    crash = None if done.cancelled() else done.exception()
                    if crash is not None:
                        # A bug, not a fault of the link or the data (_deliver_guarded handles
                        # those): say so loudly, and go on with the other books.
                        log_event(
                            _LOG,
                            logging.ERROR,
                            "delivery_crashed",
                            exc=crash,
                            book=book_id,
                            error=type(crash).__name__,
                        )
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _cut_retries_short(self, now: float) -> None:
        """The service came back (a push, the channel): every retry that waits for it is due
        now, not when a backoff scheduled during the outage falls due (issue 22 #1)."""
        self._cut_short = False
        due = self._store.library.make_retries_due(self._away, now)
        self._away = set()
        if due:
            log_event(_LOG, logging.INFO, "retries_cut_short", books=due)

    async def _pause(self, book_ids: list[str], tasks: dict[str, asyncio.Task[None]]) -> None:
        """Stop these downloads for a new purchase: cancelled between frames, their committed
        frames stay, and each resumes at its first missing frame when the planner starts it
        again (as after a crash). Not a failure: no backoff is recorded."""
        if not book_ids:
            return
        paused = [tasks[b] for b in book_ids]
        for book_id, task in zip(book_ids, paused, strict=True):
            task.cancel(plan.PAUSED_FOR_PURCHASE)
            log_event(_LOG, logging.INFO, "delivery_paused", book=book_id, reason="new purchase")
        # Still owned by `tasks` while they wind down: a stop meanwhile cancels and awaits them.
        await asyncio.wait(paused)
        for book_id, task in zip(book_ids, paused, strict=True):
            del tasks[book_id]
            if not task.cancelled():
                task.result()  # it ended by itself just before: only a bug raises here

    def _retry_range(
        self, candidates: list[DeliveryCandidate], now: float, running: Collection[str]
    ) -> tuple[float, float] | None:
        """When the next retry may start and must start (monotonic s), or None if none waits."""
        fresh = [c for c in candidates if plan.is_fresh(c, now)]
        others = [c for c in candidates if not plan.is_fresh(c, now)]
        fresh_at = plan.next_retry(fresh, now, running)
        other_at = plan.next_retry(others, now, running)
        if fresh_at is None and other_at is None:
            return None
        to_monotonic = self._clock.monotonic() - now
        inf = float("inf")
        fresh_at = inf if fresh_at is None else max(now + 0.05, fresh_at)
        other_at = inf if other_at is None else max(now + 0.05, other_at)
        not_before = min(fresh_at, other_at)
        latest = min(fresh_at, other_at + self._policy.batch_window_s)
        return not_before + to_monotonic, latest + to_monotonic

    async def _deliver_guarded(self, book_id: str, manifest_only: bool = False) -> None:
        """Deliver one book; any failure is recorded with a backoff, never raised."""
        try:
            await self.downloads.deliver(book_id, manifest_only)
        except DiskFullError as e:
            # Nothing committed is lost (the transaction rolled back); writing a failure
            # record could fail the same way, so the pause lives in memory.
            self._pause_downloads(book_id, f"the disk is full ({e})")
        except (ShelfsyncError, OSError) as e:
            try:
                failures = self._store.library.delivery_failures(book_id) + 1
            except StoreError:
                failures = 1
            decision = self.retry.failed(e, failures)
            if self._away is not None:
                (self._away.add if service_away(e) else self._away.discard)(book_id)
            level = logging.WARNING if isinstance(e, VerificationError) else logging.INFO
            self.retry.log_failed(_LOG, "delivery_failed", decision, level, book=book_id)
            # Not before the service's Retry-After, nor before a refusal is looked at again.
            recorded = record_failure(
                "delivery",
                self._store.library.record_delivery_failure,
                book_id,
                decision.error,
                self._clock.wall() + decision.delay_s,
            )
            if not recorded:  # no retry time holds the book back: rest, as on a full disk
                self._pause_downloads(book_id, "the store cannot record a failed delivery")
        else:
            self.retry.succeeded()
            if self._away is not None:
                self._away.discard(book_id)

    def _pause_downloads(self, book_id: str, why: str) -> None:
        """Rest every download for the pause, in memory (writing it could fail the same way)."""
        self._disk_full_until = self._clock.monotonic() + self._policy.disk_full_pause_s
        self.paused_reason = f"{why}; downloads resume when space frees"
        log_event(_LOG, logging.WARNING, "downloads_paused", book=book_id, reason=why)

    async def follow_root(self, version: int) -> None:
        """The changes feed names the service's newest trust root: follow it (Downloader)."""
        if await self.downloads.follow_root(version):
            self.wake()  # a fast-forwarded version dropped: its book is due again
