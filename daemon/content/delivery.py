"""The delivery worker: brings each book in the library onto the device, frame by frame.

For one book: fetch the signed manifest (or take the one a push carried with the purchase:
`offer_manifests`), verify it (daemon.content.trust), record it, then commit the first frames
the push brings after it as they land (`offer_frames`) and stream the missing frames with one
Range request per run (runs a short gap apart share one: plan.fetch_span), verifying
each frame's length and SHA-256 against the manifest before committing it on its own. A crash or
a cut connection loses at most the frame in flight: the next attempt starts at the first frame
not committed.

The scheduler (`run`) asks the planner what to start and what to pause, owns one task per running
delivery, and cancels and awaits them all on shutdown. A download below the wanted books is paused
while a new purchase is on its way: cancelled and awaited, its committed frames kept, resumed
later at its first missing frame. A failed delivery is retried after its backoff: a new
purchase's at that moment (the 60-second promise), any other's in a wake window at most the
profile's batch window later (daemon/radio/windows.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, overload

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.backoff import Backoff
from daemon.client import LibraryPush, PushedFrames
from daemon.clock import Clock, within
from daemon.config import DISK_FULL_PAUSE_S
from daemon.content import plan
from daemon.content.dictionaries import Dictionaries
from daemon.content.trust import verify_manifest, verify_root
from daemon.errors import (
    DiskFullError,
    ExpiredError,
    FrameHashError,
    ManifestError,
    RangeError,
    RollbackError,
    ShelfsyncError,
    SignatureError,
    StoreError,
    VerificationError,
    VersionMissingError,
    service_away,
)
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.memory import give_back, heap_kept_for_downloads
from daemon.models import DeliveryCandidate, FrameRow, HeldBook
from daemon.protocol.crypto import (
    ENVELOPE_SLACK,
    WRAP_ALG,
    open_root_envelope,
    unwrap_content_key,
)
from daemon.protocol.manifest import PROTOCOL_LIMITS, Manifest, ManifestLimits
from daemon.protocol.root import MAX_ROOT_ROTATIONS, Root, parse_root, pinned_root
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry, record_failure
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.delivery")
RECHECK_S = 30.0  # while the planner holds books back, look again this often
MAX_OFFERED = 64  # pushed manifests kept for deliveries not started yet
# How long a delivery waits for the frames a push announced, beyond what their bytes need at the
# link's rate: they follow the announcement on the same channel, so only a channel that dropped
# keeps them; the Range path then fetches them.
PUSHED_FRAMES_GRACE_S = 10.0
MAX_PUSH_LATE_S = 5.0  # a push later than this is taken as on time: a clock misjudged


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


# A signed manifest this large is verified and parsed on a worker thread: mahabharata's
# (2,020 resources) took most of a second on the event loop.
VERIFY_OFF_LOOP_BYTES = 64 * 1024


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
        self._dictionaries = dictionaries or Dictionaries(store, client)
        # Signed manifests a push carried, by book, not yet verified: the next attempt of
        # that book's delivery takes its manifest from here instead of fetching it.
        self._offered: dict[str, bytes] = {}
        # The package's first bytes a push announced, by book: (version, length, monotonic
        # time of the announcement), and the frames of them that landed, not yet committed.
        self._coming: dict[str, tuple[int, int, float]] = {}
        self._offered_frames: dict[str, list[PushedFrames]] = {}
        self._frames_landed: dict[str, asyncio.Event] = {}
        self._client = client
        self._clock = clock
        self._pinned_key = pinned_key
        self._device_key = device_key
        self._policy = policy
        self._windows = windows
        self._battery_restricted = battery_restricted
        self._archive_slots = archive_slots
        self._wake = asyncio.Event()
        self._disk_full_until = 0.0
        self.waiting: dict[str, str] = {}  # book -> why the planner holds it back, for status
        self.paused_reason: str | None = None
        self.downloading = 0  # downloads running now (the idle integrity check waits for none)
        # Books whose server ignored a Range request: fetched from byte 0 next time, and each
        # frame still verified, so nothing unverified is spliced in.
        self._whole_package: set[str] = set()
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

    def offer_manifests(self, push: LibraryPush) -> None:
        """Manifest envelopes a push carried, and the first frames it announced: each manifest
        is verified when its delivery starts, exactly as a fetched one (a refused one fails
        that attempt; the retry fetches), and each frame is checked against it as a fetched
        frame is (`offer_frames`)."""
        self._offered.update(push.envelopes)
        sent = self._clock.monotonic() - self._late_by(push)
        for book_id, (version, length) in push.frames_follow.items():
            self._coming[book_id] = (version, length, sent)
            self._offered_frames.pop(book_id, None)
        for offered in (self._offered, self._coming):
            while len(offered) > MAX_OFFERED:
                book_id = next(iter(offered))
                offered.pop(book_id)
                self._offered_frames.pop(book_id, None)

    def _late_by(self, push: LibraryPush) -> float:
        """How much later than half a round trip after the service sent it the message came
        (a lost segment resent): the frames behind it left with it, and land that much sooner
        after it. Read on the service's clock (`now`) as the changes feed's times are."""
        if push.page.service_now is None:
            return 0.0
        sent = push.page.service_now - self._store.library.service_clock_offset()
        late = self._clock.wall() - sent - self._policy.rtt_s / 2
        return min(max(0.0, late), MAX_PUSH_LATE_S)

    def offer_frames(self, frames: PushedFrames) -> None:
        """Frames a push brought after announcing them: kept for their book's delivery, which
        commits them as they land (verified there, in its own error handling)."""
        coming = self._coming.get(frames.book_id)
        if coming is None or coming[0] != frames.version:
            return  # not announced, or for another version: the Range path brings them
        self._offered_frames.setdefault(frames.book_id, []).append(frames)
        self._frames_landed.setdefault(frames.book_id, asyncio.Event()).set()

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
            await self.deliver(book_id, manifest_only)
        except DiskFullError as e:
            # Nothing committed is lost (the transaction rolled back); writing a failure
            # record could fail the same way, so the pause lives in memory.
            self._pause_downloads(book_id, f"the disk is full ({e})")
        except (ShelfsyncError, OSError) as e:
            if isinstance(e, RangeError):
                self._whole_package.add(book_id)
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

    async def deliver(self, book_id: str, manifest_only: bool = False) -> None:
        """Bring a book onto the device; with `manifest_only`, verify and record its signed
        manifest and stop there (the planner then knows its true size)."""
        limits = self._policy.manifest_limits
        pushed = self._offered.pop(book_id, None)
        if pushed is not None and len(pushed) > limits.max_bytes + ENVELOPE_SLACK:
            pushed = None  # over this device's bound: fetched, where the client cuts it
        envelope = pushed or await self._client.manifest_envelope(book_id, limits.max_bytes)
        try:
            manifest = await self._verify(book_id, envelope, limits)
        except (SignatureError, RollbackError, ExpiredError):
            # Refused by what the trusted root's keys vouched for: the service may have
            # rotated them (a key lost, or a device fast-forwarded by a broken one).
            if not await self._refresh_trust_root():
                raise
            manifest = await self._verify(book_id, envelope, limits)
        self._check_content_key(manifest)
        if manifest.dictionary is not None:
            await self._dictionaries.ensure(manifest.dictionary.sha256, manifest.dictionary.size)
        self._store.frames.record_manifest(manifest, envelope, self._clock.wall())
        give_back()  # a large manifest's parse leaves holes in the heap
        log_event(
            _LOG,
            logging.INFO,
            "manifest_verified",
            book=book_id,
            source="fetched" if pushed is None else "pushed",
            version=manifest.version,
            frames=len(manifest.frames),
            package_bytes=manifest.package_size,
        )
        if manifest_only:
            return
        coming = self._coming.get(book_id)
        if coming is not None and coming[0] == manifest.version:
            await self._fetch_beside_push(manifest, *coming[1:])
        while missing := self._store.frames.missing_frames(book_id, manifest.version):
            await self._fetch_run(manifest, plan.fetch_span(missing, self._policy.span_gap_bytes))
        wanted = self._store.library.wanted_version(book_id)
        if manifest.version < wanted:
            # Taken as a success, the book would be pending still and started again at once:
            # 2,966 manifest requests in 30 s for a forged update, and after every restart.
            raise VersionMissingError(
                f"{book_id}: the library lists version {wanted}, the service serves"
                f" version {manifest.version}"
            )

    async def _verify(self, book_id: str, envelope: bytes, limits: ManifestLimits) -> Manifest:
        """What verifying needs of the store is read here; the parse (a book of 2,000 files,
        a second of CPU on the event loop) runs on a worker thread, touching no connection."""
        held = self._store.frames.held_frame_hashes(book_id)
        verify = partial(
            verify_manifest,
            envelope,
            pinned_key=self._trust_root().signing_keys,
            book_id=book_id,
            trusted_version=self._store.frames.trusted_version(book_id),
            held_frame_hashes=held.get,
            time_floor=self._store.frames.time_floor(),
            now=self._clock.wall(),
            limits=limits,
        )
        if len(envelope) < VERIFY_OFF_LOOP_BYTES:
            return verify()  # a small book's: well under a millisecond, not worth a thread
        return await asyncio.to_thread(verify)

    async def follow_root(self, version: int) -> None:
        """The changes feed names the service's newest trust root: walk to it if it is newer.
        The feed is not signed, so a root that does not verify is logged and left."""
        if version <= self._trust_root().version:
            return
        try:
            rotated = await self._refresh_trust_root()
        except VerificationError as e:
            log_event(_LOG, logging.WARNING, "trust_root_refused", version=version, error=str(e))
            return
        if rotated:
            self.wake()  # a fast-forwarded version dropped: its book is due again

    def _trust_root(self) -> Root:
        stored = self._store.frames.trust_root_envelope()
        if stored is None:
            return pinned_root(self._pinned_key)
        return parse_root(open_root_envelope(stored)[0])  # verified before it was stored

    async def _refresh_trust_root(self) -> bool:
        """Walk the service's root chain past the trusted root, each version verified against
        the one before and stored in one transaction; True if a newer root is now trusted."""
        trusted, rotated = self._trust_root(), False
        for _ in range(MAX_ROOT_ROTATIONS):
            envelope = await self._client.trust_root(trusted.version + 1)
            if envelope is None:
                break
            root = verify_root(trusted, envelope)
            new_keys = not root.same_signing_keys(trusted)
            self._store.frames.rotate_trust(
                root.version,
                envelope,
                new_signing_keys=new_keys,
                issued_at=root.issued_at,
                now=self._clock.wall(),
            )
            log_event(
                _LOG,
                logging.WARNING,
                "trust_root_rotated",
                version=root.version,
                signing_keys_changed=new_keys,
            )
            trusted, rotated = root, True
        return rotated

    async def _fetch_beside_push(self, manifest: Manifest, pushed: int, announced: float) -> None:
        """The push brings the package's first `pushed` bytes: commit its frames as they land,
        and meanwhile fetch the rest, asked for so that its answer starts as they end (one
        round trip before, at the link's rate), so the link carries one stream at a time: the
        first chapter is not slowed by the rest, and the link does not idle between them."""
        book_id = manifest.book_id
        taker = asyncio.create_task(
            self._take_pushed_frames(manifest, pushed), name=f"pushed frames of {book_id}"
        )
        rate, rtt = self._policy.down_bytes_per_s, self._policy.rtt_s
        try:
            waited = rate <= 0
            while rest := [
                f
                for f in self._store.frames.missing_frames(book_id, manifest.version)
                if f.package_offset >= pushed
            ]:
                if not waited:
                    landed_at = announced + pushed / rate
                    await self._clock.sleep(max(0.0, landed_at - rtt - self._clock.monotonic()))
                    waited = True
                await self._fetch_run(manifest, plan.fetch_span(rest, self._policy.span_gap_bytes))
            await taker
        finally:
            if not taker.done():
                taker.cancel()
                await asyncio.gather(taker, return_exceptions=True)
            self._coming.pop(book_id, None)
            self._offered_frames.pop(book_id, None)
            self._frames_landed.pop(book_id, None)

    async def _take_pushed_frames(self, manifest: Manifest, pushed: int) -> None:
        """Commit the pushed frames of this version as they land, each verified as a fetched
        frame (one that fails its hash fails the attempt, as on the Range path), until all
        `pushed` bytes are in or they are overdue (a channel that dropped): the caller's Range
        then fetches what is missing."""
        book_id = manifest.book_id
        rate = self._policy.down_bytes_per_s
        deadline = self._clock.monotonic() + PUSHED_FRAMES_GRACE_S + (pushed / rate if rate else 0)
        landed = self._frames_landed.setdefault(book_id, asyncio.Event())
        received = 0
        while True:
            landed.clear()
            for frames in self._offered_frames.pop(book_id, []):
                received = max(received, frames.offset + len(frames.data))
                self._commit_pushed(manifest, frames)
            if received >= pushed:
                return
            try:
                await within(self._clock, deadline - self._clock.monotonic(), landed.wait())
            except TimeoutError:
                log_event(_LOG, logging.INFO, "pushed_frames_overdue", book=book_id)
                return

    def _commit_pushed(self, manifest: Manifest, frames: PushedFrames) -> None:
        held = self._store.frames
        missing = {f.idx for f in held.missing_frames(manifest.book_id, manifest.version)}
        end = frames.offset + len(frames.data)
        for idx, frame in enumerate(manifest.frames):
            if frame.offset < frames.offset or idx not in missing:
                continue
            if frame.offset + frame.length > end:
                break  # only whole frames: the rest comes by Range
            piece = frames.data[
                frame.offset - frames.offset : frame.offset + frame.length - frames.offset
            ]
            # A push carries at most MAX_PUSHED_PREFIX: hashed on the loop.
            self._commit(manifest, idx, piece, hashlib.sha256(piece).hexdigest())

    def _check_content_key(self, manifest: Manifest) -> None:
        """Refuse, before storing anything, a manifest whose key this device cannot unwrap."""
        key = manifest.content_key
        if key is None or key.alg != WRAP_ALG:
            raise ManifestError(f"{manifest.book_id}: no content key this device can use")
        unwrap_content_key(self._device_key, key.ephemeral, key.wrapped, manifest.book_id)

    async def _fetch_run(self, manifest: Manifest, run: list[FrameRow]) -> None:
        book_id = manifest.book_id
        first = 0 if book_id in self._whole_package else run[0].idx
        end = run[-1].package_offset + run[-1].length - 1
        wanted = {frame.idx for frame in run}
        with heap_kept_for_downloads(), self._store.downloading():
            async with self._client.package(
                book_id, manifest.version, manifest.frames[first].offset, end, manifest.package_size
            ) as body:
                for idx in range(first, run[-1].idx + 1):
                    length = manifest.frames[idx].length
                    if idx not in wanted:  # already held, read past (a gap, or the whole)
                        await body.read_exactly(length)
                        continue
                    # Hashed as its bytes arrive, a received chunk (256 KiB at most) at a time:
                    # no loop step hashes more, and no frame waits for a thread to hash it
                    # whole (on a busy CPU that wait was a third of a download, issue 22 #6).
                    sha256 = hashlib.sha256()
                    data = await body.read_exactly(length, sha256.update)
                    self._commit(manifest, idx, data, sha256.hexdigest())
        self._whole_package.discard(book_id)

    def _commit(self, manifest: Manifest, idx: int, data: bytes | memoryview, sha256: str) -> None:
        if sha256 != manifest.frames[idx].sha256:
            raise FrameHashError(
                f"frame {idx} of {manifest.book_id} v{manifest.version}: SHA-256 differs"
                " from the signed manifest; discarded",
                manifest.book_id,
                manifest.version,
                idx,
            )
        killpoint("before_frame_commit")
        result = self._store.frames.commit_frame(
            manifest.book_id, manifest.version, idx, data, self._clock.wall()
        )
        killpoint("after_frame_commit")
        if result.first_chapter_ready:
            log_event(
                _LOG,
                logging.INFO,
                "first_chapter_readable",
                book=manifest.book_id,
                version=manifest.version,
                frame=idx,
            )
        if result.complete:
            give_back()
            log_event(
                _LOG,
                logging.INFO,
                "delivery_complete",
                book=manifest.book_id,
                version=manifest.version,
                frames=len(manifest.frames),
            )
