"""One book's download: from its signed manifest to its last frame committed.

For one book: fetch the signed manifest (or take the one a push carried with the purchase:
`offer_manifests`), verify it (daemon.content.trust; a large one on a worker thread), record it,
then commit the first frames the push brings after it as they land (`offer_frames`) and stream
the missing frames with one Range request per run (runs a short gap apart share one:
plan.fetch_span), verifying each frame's length and SHA-256 against the manifest before
committing it on its own. A crash or a cut connection loses at most the frame in flight: the next
attempt starts at the first frame not committed.

What to download and when, retries and pauses, is the scheduler's (daemon/content/delivery.py),
which runs `Downloader.deliver` in one task per running delivery; a failure is raised to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from functools import partial

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.client import LibraryPush, PushedFrames
from daemon.clock import Clock, within
from daemon.content import plan
from daemon.content.dictionaries import Dictionaries
from daemon.content.trust import verify_manifest, verify_root
from daemon.errors import (
    ExpiredError,
    FrameHashError,
    ManifestError,
    RangeError,
    RollbackError,
    SignatureError,
    VerificationError,
    VersionMissingError,
)
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.memory import give_back, heap_kept_for_downloads
from daemon.models import FrameRow
from daemon.protocol.crypto import (
    ENVELOPE_SLACK,
    WRAP_ALG,
    open_root_envelope,
    unwrap_content_key,
)
from daemon.protocol.manifest import Manifest, ManifestLimits
from daemon.protocol.root import MAX_ROOT_ROTATIONS, Root, parse_root, pinned_root
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.delivery")  # the scheduler's: one stream of delivery events

MAX_OFFERED = 64  # pushed manifests kept for deliveries not started yet
# How long a delivery waits for the frames a push announced, beyond what their bytes need at the
# link's rate: they follow the announcement on the same channel, so only a channel that dropped
# keeps them; the Range path then fetches them.
PUSHED_FRAMES_GRACE_S = 10.0
MAX_PUSH_LATE_S = 5.0  # a push later than this is taken as on time: a clock misjudged

# A signed manifest this large is verified and parsed on a worker thread: mahabharata's
# (2,020 resources) took most of a second on the event loop.
VERIFY_OFF_LOOP_BYTES = 64 * 1024


class Downloader:
    """Downloads one book at a time per call of `deliver`, for the scheduler that owns the tasks;
    keeps what pushes brought ahead of them and which books' servers ignored a Range request."""

    def __init__(
        self,
        store: Store,
        client: ServiceAPI,
        clock: Clock,
        pinned_key: Ed25519PublicKey,
        device_key: X25519PrivateKey,
        dictionaries: Dictionaries,
        *,
        manifest_limits: ManifestLimits,
        span_gap_bytes: int,
        down_bytes_per_s: float,
        rtt_s: float,
    ) -> None:
        self._store = store
        self._dictionaries = dictionaries
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
        self._limits = manifest_limits  # the device's, from its RAM budget
        # The link's, as DeliveryPolicy gives them: held frames a Range request may read past
        # (plan.fetch_span), and when the frames a push announced will have landed.
        self._span_gap_bytes = span_gap_bytes
        self._down_bytes_per_s = down_bytes_per_s
        self._rtt_s = rtt_s
        # Books whose server ignored a Range request: fetched from byte 0 next time, and each
        # frame still verified, so nothing unverified is spliced in.
        self._whole_package: set[str] = set()

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
        late = self._clock.wall() - sent - self._rtt_s / 2
        return min(max(0.0, late), MAX_PUSH_LATE_S)

    def offer_frames(self, frames: PushedFrames) -> None:
        """Frames a push brought after announcing them: kept for their book's delivery, which
        commits them as they land (verified there, in its own error handling)."""
        coming = self._coming.get(frames.book_id)
        if coming is None or coming[0] != frames.version:
            return  # not announced, or for another version: the Range path brings them
        self._offered_frames.setdefault(frames.book_id, []).append(frames)
        self._frames_landed.setdefault(frames.book_id, asyncio.Event()).set()

    async def deliver(self, book_id: str, manifest_only: bool = False) -> None:
        """Bring a book onto the device; with `manifest_only`, verify and record its signed
        manifest and stop there (the planner then knows its true size)."""
        limits = self._limits
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
            await self._fetch_run(manifest, plan.fetch_span(missing, self._span_gap_bytes))
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

    async def follow_root(self, version: int) -> bool:
        """The changes feed names the service's newest trust root: walk to it if it is newer;
        True if a newer root is now trusted. The feed is not signed, so a root that does not
        verify is logged and left."""
        if version <= self._trust_root().version:
            return False
        try:
            return await self._refresh_trust_root()
        except VerificationError as e:
            log_event(_LOG, logging.WARNING, "trust_root_refused", version=version, error=str(e))
            return False

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
        rate, rtt = self._down_bytes_per_s, self._rtt_s
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
                await self._fetch_run(manifest, plan.fetch_span(rest, self._span_gap_bytes))
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
        rate = self._down_bytes_per_s
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
        try:
            with heap_kept_for_downloads(), self._store.downloading():
                async with self._client.package(
                    book_id,
                    manifest.version,
                    manifest.frames[first].offset,
                    end,
                    manifest.package_size,
                ) as body:
                    for idx in range(first, run[-1].idx + 1):
                        length = manifest.frames[idx].length
                        if idx not in wanted:  # already held, read past (a gap, or the whole)
                            await body.read_exactly(length)
                            continue
                        # Hashed as its bytes arrive, a received chunk (256 KiB at most) at a
                        # time: no loop step hashes more, and no frame waits for a thread to
                        # hash it whole (on a busy CPU that wait was a third of a download,
                        # issue 22 #6).
                        sha256 = hashlib.sha256()
                        data = await body.read_exactly(length, sha256.update)
                        self._commit(manifest, idx, data, sha256.hexdigest())
        except RangeError:
            self._whole_package.add(book_id)  # the attempt fails; the retry asks from byte 0
            raise
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
