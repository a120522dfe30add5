"""Delivery receipts against the fake service and a fake clock: a stuck delivery's receipt is sent
once; a failed send is retried after its backoff or the service's Retry-After; a refusal (401) is
not retried but reported; a store error in a round is survived; a stop is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.backoff import Backoff
from daemon.content.receipts import PROMISE_S, ReceiptSync
from daemon.errors import DiskFullError, ServiceHTTPError, StalledError
from daemon.models import LibraryChange
from daemon.profile import load_profile
from daemon.retry import Comeback
from daemon.store import Store
from tests.fake_clock import FakeClock
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

BACKOFF = Backoff(base_s=1.0, cap_s=600.0)
PROFILE = load_profile("emulator-loopback")


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    store: Store
    worker: ReceiptSync

    async def stuck_delivery(self) -> None:
        """A purchase whose delivery failed and is still not complete past the promise."""
        now = self.clock.wall()
        self.store.library.apply_library_changes(
            [LibraryChange(1, "bk_a", "add", "bought", 1, now)], 1, now
        )
        self.store.library.record_delivery_failure("bk_a", "StalledError: no byte", now + 3600)
        self.worker.wake()
        await self.clock.advance(PROMISE_S + 1)
        self.worker.on_link_event("online")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    store = Store.open(tmp_path / "db")
    store.set_meta("registered_at", repr(clock.wall() - 60))
    service = FakeService(clock)
    async with radio(clock) as windows:
        worker = ReceiptSync(
            store, service, clock, PROFILE, windows, backoff=BACKOFF, comeback=Comeback()
        )
        async with running(worker.run()):
            yield World(clock, service, store, worker)
    store.close()


async def test_a_stuck_delivery_is_reported_once(world: World) -> None:
    await world.stuck_delivery()
    await world.clock.advance(1)
    assert [r["outcome"] for r in world.service.receipts_received] == ["failed"]
    await world.clock.advance(3600)  # nothing more to say: nothing more is sent
    assert len(world.service.times_of("send_receipts")) == 1


async def test_a_timeout_is_retried_after_its_backoff(world: World) -> None:
    world.service.fail("send_receipts", StalledError("timed out"), times=2)
    await world.stuck_delivery()
    await world.clock.advance(30)
    tries = world.service.times_of("send_receipts")
    assert len(tries) == 3
    assert 0.1 <= tries[1] - tries[0] <= 1.0 + PROFILE.sync.batch_window_s
    assert len(world.service.receipts_received) == 1


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    world.service.fail("send_receipts", ServiceHTTPError(503, "/r", retry_after="20"))
    await world.stuck_delivery()
    await world.clock.advance(60)
    first, second = world.service.times_of("send_receipts")
    assert second - first >= 20


async def test_a_refused_device_is_not_retried_but_reported(world: World) -> None:
    world.service.fail("send_receipts", ServiceHTTPError(401, "/r"), None)
    await world.stuck_delivery()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("send_receipts")) == 1
    report = world.worker.retry.report()
    assert report is not None
    assert "refused this device" in report["doing"]


async def test_a_full_disk_in_a_round_is_survived(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> int:
        raise DiskFullError("the disk is full")

    real = world.store.receipts.make_failed_receipts
    monkeypatch.setattr(world.store.receipts, "make_failed_receipts", disk_full)
    await world.stuck_delivery()
    await world.clock.advance(1)
    assert world.worker.retry.failures >= 1
    monkeypatch.setattr(world.store.receipts, "make_failed_receipts", real)
    await world.clock.advance(BACKOFF.cap_s)  # the worker retried all along: up to its cap
    assert len(world.service.receipts_received) == 1
