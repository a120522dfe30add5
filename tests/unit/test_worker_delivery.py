"""The delivery worker against the fake service and a fake clock: a book comes in frame by frame;
frames a push announced are committed as they land while the rest comes by Range, and fetched by
Range if they never land; a failed fetch is retried after its backoff or the service's
Retry-After; a refusal (401) is not retried but reported; a store that fails in the failure path
too is survived; the service's return makes every pending retry due, but for a book the service
said it does not have; a stop mid-download is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.backoff import Backoff
from daemon.client import ChangesPage, LibraryPush, PushedFrames
from daemon.content.delivery import DeliveryPolicy, DeliveryWorker
from daemon.content.download import PUSHED_FRAMES_GRACE_S
from daemon.errors import DiskFullError, ServiceHTTPError, StalledError
from daemon.retry import Comeback
from daemon.store import Store
from tests.builders import DEVICE_KEY, NOW, make_manifest, signed
from tests.fake_clock import WALL_AT_ZERO, FakeClock, settle
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

SERVICE_KEY = Ed25519PrivateKey.generate()
BACKOFF = Backoff(base_s=1.0, cap_s=300.0)
FILES = [(f"OEBPS/ch{i}.xhtml", f"<p>chapter {i}</p>".encode() * 400) for i in range(4)]
BOOK = "bk_test"


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    store: Store
    worker: DeliveryWorker
    comeback: Comeback
    package: bytes

    def state(self) -> str:
        [book] = [b for b in self.store.views.library_view() if b["book_id"] == BOOK]
        return str(book["state"])

    async def buy(self, frames_follow: int = 0) -> None:
        """Buy the book; with `frames_follow`, the push announces that many first bytes."""
        change = self.service.add_book(BOOK)
        self.store.library.apply_library_changes([change], change.seq, self.clock.wall())
        if frames_follow:
            page = ChangesPage([change], change.seq, False)
            envelope = self.service.manifests[BOOK]
            push = LibraryPush(0, page, {BOOK: envelope}, {BOOK: (1, frames_follow)})
            self.worker.downloads.offer_manifests(push)
        self.worker.wake()
        await settle()


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    clock = FakeClock(start=NOW - WALL_AT_ZERO)  # the device's clock agrees with the service's
    store.set_meta("registered_at", repr(clock.wall() - 60))
    service = FakeService(clock)
    manifest, package = make_manifest(FILES, book_id=BOOK)
    service.manifests[BOOK] = signed(manifest, SERVICE_KEY)
    service.packages[(BOOK, 1)] = package
    comeback = Comeback()
    policy = DeliveryPolicy(
        concurrency=2, quota_bytes=10**9, reserve_bytes=0, batch_window_s=5.0, backoff=BACKOFF
    )
    async with radio(clock) as windows:
        worker = DeliveryWorker(
            store,
            service,
            clock,
            SERVICE_KEY.public_key(),
            DEVICE_KEY,
            policy,
            windows,
            comeback=comeback,
        )
        async with running(worker.run()):
            yield World(clock, service, store, worker, comeback, package)


async def test_a_purchase_is_delivered_frame_by_frame(world: World) -> None:
    await world.buy()
    await world.clock.advance(0)
    assert world.state() == "complete"
    assert world.service.times_of("manifest_envelope") == [world.clock.monotonic()]


async def test_frames_a_push_announced_are_committed_as_they_land_beside_the_rest(
    world: World,
) -> None:
    manifest, _ = make_manifest(FILES, book_id=BOOK)
    pushed = manifest.frames[1].offset + manifest.frames[1].length
    await world.buy(frames_follow=pushed)
    # The rest is asked for from the first frame past the announced bytes, not from byte 0.
    assert world.service.ranges == [(BOOK, 1, pushed, manifest.package_size - 1)]
    assert world.state() != "complete"
    for frame in manifest.frames[:2]:
        data = world.package[frame.offset : frame.offset + frame.length]
        world.worker.downloads.offer_frames(PushedFrames(BOOK, 1, frame.offset, data))
        await settle()
    assert world.state() == "complete"
    assert len(world.service.ranges) == 1


async def test_announced_frames_that_never_land_are_fetched_by_range(world: World) -> None:
    manifest, _ = make_manifest(FILES, book_id=BOOK)
    pushed = manifest.frames[1].offset + manifest.frames[1].length
    await world.buy(frames_follow=pushed)
    await world.clock.advance(PUSHED_FRAMES_GRACE_S - 1)
    assert world.state() != "complete"
    await world.clock.advance(2)
    assert world.state() == "complete"
    assert world.service.ranges[-1] == (BOOK, 1, 0, pushed - 1)


async def test_a_pushed_frame_that_fails_its_hash_fails_the_attempt_and_the_retry_fetches_it(
    world: World,
) -> None:
    manifest, _ = make_manifest(FILES, book_id=BOOK)
    pushed = manifest.frames[0].length
    await world.buy(frames_follow=pushed)
    forged = bytes(b ^ 1 for b in world.package[:pushed])
    world.worker.downloads.offer_frames(PushedFrames(BOOK, 1, 0, forged))
    await settle()
    assert world.state() != "complete"
    await world.clock.advance(60)
    assert world.state() == "complete"
    assert world.service.ranges[-1][2] == 0  # the frame refused came by Range


async def test_a_stalled_package_is_retried_after_its_backoff(world: World) -> None:
    world.service.fail("package", StalledError("no byte for 30 s"), times=2)
    await world.buy()
    await world.clock.advance(60)
    assert world.state() == "complete"
    tries = world.service.times_of("package")
    assert len(tries) >= 3
    assert 0.1 <= tries[1] - tries[0] <= 1.0  # failure 1: within [c/10, c], c = 1 s
    assert 0.2 <= tries[2] - tries[1] <= 2.0  # failure 2: c = 2 s


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    world.service.fail("manifest_envelope", ServiceHTTPError(503, "/m", retry_after="20"))
    await world.buy()
    await world.clock.advance(19)
    assert len(world.service.times_of("manifest_envelope")) == 1
    await world.clock.advance(2)
    assert world.state() == "complete"


async def test_a_refused_device_is_not_retried_but_reported(world: World) -> None:
    world.service.fail("manifest_envelope", ServiceHTTPError(401, "/m", "unknown device"), None)
    await world.buy()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("manifest_envelope")) == 1
    report = world.worker.retry.report()
    assert report is not None
    assert "HTTP 401" in report["error"]
    assert "refused this device" in report["doing"]
    [book] = [b for b in world.store.views.library_view() if b["book_id"] == BOOK]
    assert "HTTP 401" in book["last_error"]


async def test_a_full_disk_while_recording_a_failure_is_survived(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> int:
        raise DiskFullError("the disk is full")

    monkeypatch.setattr(world.store.library, "record_delivery_failure", disk_full)
    world.service.fail("package", StalledError("no byte for 30 s"), times=1)
    await world.buy()
    await world.clock.advance(1)
    # Not recorded, so no retry time holds the book back: downloads rest instead of spinning.
    assert world.state() != "complete"
    assert "cannot record" in (world.worker.paused_reason or "")
    assert len(world.service.times_of("package")) == 1
    monkeypatch.undo()
    await world.clock.advance(world.worker._policy.disk_full_pause_s + 1)
    assert world.state() == "complete"


async def test_a_full_disk_while_committing_pauses_downloads_then_resumes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = world.store.frames.commit_frame

    def disk_full(*args: object) -> object:
        raise DiskFullError("the disk is full")

    monkeypatch.setattr(world.store.frames, "commit_frame", disk_full)
    await world.buy()
    await world.clock.advance(1)
    assert world.worker.paused_reason is not None
    monkeypatch.setattr(world.store.frames, "commit_frame", real_commit)
    await world.clock.advance(world.worker._policy.disk_full_pause_s + 1)
    assert world.state() == "complete"
    assert world.worker.paused_reason is None


async def test_the_service_coming_back_makes_a_pending_retry_due(world: World) -> None:
    world.service.fail("manifest_envelope", StalledError("down"), times=7)
    await world.buy()
    while len(world.service.times_of("manifest_envelope")) < 7:
        await world.clock.advance(5)
    # Seven failures: the next retry is 6.4 to 64 s out.
    world.comeback.announce()
    await world.clock.advance(0)
    assert world.state() == "complete"


async def test_a_book_the_service_does_not_have_waits_its_backoff_whatever_the_pushes(
    world: World,
) -> None:
    # The service answered (a feed ahead of its catalog): its return has nothing to cure, and
    # a push every few seconds must not have the book fetched ahead of every other.
    missing = ServiceHTTPError(404, "/v1/books/bk_test/manifest", "not in the catalog")
    world.service.fail("manifest_envelope", missing, None)
    await world.buy()
    while len(world.service.times_of("manifest_envelope")) < 7:
        await world.clock.advance(5)
    # The first return since the start makes every waiting retry due (what failed before a
    # start is not known): one more try, refused again; its backoff is now 12.8 to 128 s.
    world.comeback.announce()
    await world.clock.advance(0)
    asked = len(world.service.times_of("manifest_envelope"))
    assert asked == 8
    for _ in range(5):
        world.comeback.announce()
        await world.clock.advance(1)
    assert len(world.service.times_of("manifest_envelope")) == asked
    world.service.heal("manifest_envelope")
    await world.clock.advance(130)
    assert world.state() == "complete"


async def test_a_stop_mid_download_is_clean(store: Store) -> None:
    clock = FakeClock(start=NOW - WALL_AT_ZERO)
    store.set_meta("registered_at", repr(clock.wall() - 60))
    service = FakeService(clock)
    manifest, package = make_manifest(FILES, book_id=BOOK)
    service.manifests[BOOK] = signed(manifest, SERVICE_KEY)
    service.packages[(BOOK, 1)] = package
    service.fail("package", StalledError("down"), None)
    policy = DeliveryPolicy(concurrency=1, quota_bytes=10**9, reserve_bytes=0, batch_window_s=1)
    async with radio(clock) as windows:
        worker = DeliveryWorker(
            store, service, clock, SERVICE_KEY.public_key(), DEVICE_KEY, policy, windows
        )
        async with running(worker.run()) as (task,):
            change = service.add_book(BOOK)
            store.library.apply_library_changes([change], change.seq, clock.wall())
            worker.wake()
            await clock.advance(3)
        assert task.cancelled()
