"""Library sync against the fake service and a fake clock: a pull brings the feed in; a failed
pull is retried after its backoff or the service's Retry-After; a refusal (401) is not retried
but reported; a store that fails in the failure path too is survived; a stop is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from daemon.backoff import Backoff
from daemon.content.library_sync import LibrarySync
from daemon.errors import DiskFullError, ServiceHTTPError, StalledError
from daemon.retry import Comeback
from daemon.store import Store
from tests.fake_clock import FakeClock, settle
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

BACKOFF = Backoff(base_s=2.0, cap_s=300.0)


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    store: Store
    sync: LibrarySync
    comeback: Comeback


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    clock = FakeClock()
    service = FakeService(clock)
    comeback = Comeback()
    async with radio(clock) as windows:
        sync = LibrarySync(
            store,
            service,
            clock,
            windows,
            on_change=lambda: None,
            backoff=BACKOFF,
            comeback=comeback,
        )
        async with running(sync.run()):
            yield World(clock, service, store, sync, comeback)


async def test_a_pull_brings_every_page_of_the_feed_in(world: World) -> None:
    for i in range(1200):  # three pages
        world.service.add_book(f"bk_{i}")
    world.sync.request()
    await world.clock.advance(0)
    assert world.store.library.library_cursor() == 1200
    assert len(world.service.times_of("library_changes")) == 3


async def test_a_timeout_is_retried_after_its_backoff(world: World) -> None:
    world.service.fail("library_changes", StalledError("timed out"), times=2)
    world.service.add_book("bk_new")
    world.sync.request()
    await world.clock.advance(BACKOFF.cap_s * 2)
    tries = world.service.times_of("library_changes")
    assert len(tries) == 3
    # Each wait within the jittered window of its failure count: [c/10, c], c = 2, then 4.
    assert 0.2 <= tries[1] - tries[0] <= 2.0
    assert 0.4 <= tries[2] - tries[1] <= 4.0
    assert world.store.library.library_cursor() == 1
    assert world.store.get_meta("last_sync_error") == ""


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    world.service.fail("library_changes", ServiceHTTPError(503, "/x", retry_after="20"))
    world.sync.request()
    await world.clock.advance(60)
    first, second = world.service.times_of("library_changes")
    assert second - first >= 20


async def test_a_refused_device_is_not_retried_but_reported(world: World) -> None:
    world.service.fail("library_changes", ServiceHTTPError(401, "/x", "unknown device"), None)
    world.sync.request()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("library_changes")) == 1
    report = world.sync.retry.report()
    assert report is not None
    assert "ServiceHTTPError: HTTP 401" in report["error"]
    assert "refused this device" in report["doing"]
    assert "HTTP 401" in (world.store.get_meta("last_sync_error") or "")
    # Asked again (a poll, the reader), it tries again.
    world.sync.request()
    await world.clock.advance(0)
    assert len(world.service.times_of("library_changes")) == 2


async def test_a_full_disk_in_the_pull_and_in_its_failure_record_is_survived(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise DiskFullError("database or disk is full")

    monkeypatch.setattr(world.store.library, "apply_library_changes", disk_full)
    monkeypatch.setattr(world.store, "set_meta", disk_full)
    world.service.add_book("bk_new")
    world.sync.request()
    await world.clock.advance(10)
    assert len(world.service.times_of("library_changes")) >= 2  # still running, retrying
    monkeypatch.undo()
    await world.clock.advance(BACKOFF.cap_s)
    assert world.store.library.library_cursor() == 1
    assert world.sync.retry.report() is None


async def test_the_service_coming_back_cuts_the_retry_short(world: World) -> None:
    world.service.fail("library_changes", StalledError("down"), times=8)
    world.sync.request()
    while len(world.service.times_of("library_changes")) < 8:
        await world.clock.advance(5)
    # Eight failures: the next retry is 25.6 to 256 s out.
    world.service.add_book("bk_bought_meanwhile")
    world.comeback.announce()
    await world.clock.advance(0)
    assert world.store.library.library_cursor() == 1


async def test_a_stop_mid_retry_is_clean(store: Store) -> None:
    clock = FakeClock()
    service = FakeService(clock)
    service.fail("library_changes", StalledError("down"), None)
    async with radio(clock) as windows:
        sync = LibrarySync(store, service, clock, windows, on_change=lambda: None)
        async with running(sync.run()) as (task,):
            sync.request()
            await clock.advance(1)
        assert task.cancelled()
    await settle()
