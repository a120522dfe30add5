"""Popular highlights against the fake service and a fake clock: passages of the books on the
device come in; a failed refresh is retried after its backoff or Retry-After; a refusal (401)
is not retried but reported; a full disk while applying is survived; a stop is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.backoff import Backoff
from daemon.errors import DiskFullError, ServiceHTTPError, StalledError
from daemon.models import LibraryChange
from daemon.notes.shared_highlights import SharedHighlights
from daemon.notes.store import NotesStore
from daemon.store import Store
from tests.fake_clock import FakeClock
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

BACKOFF = Backoff(base_s=5.0, cap_s=600.0)
BATCH_WINDOW_S = 5.0
PASSAGE = {
    "passage_id": "ps_1",
    "book_id": "bk_a",
    "readers": 3,
    "anchor": {"resource": "text/ch1.xhtml", "start": 1, "end": 9, "quote": {"exact": "a phrase"}},
}


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    notes: NotesStore
    worker: SharedHighlights


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    store = Store.open(tmp_path / "db")  # the book on the device, as library sync leaves it
    store.library.apply_library_changes([LibraryChange(1, "bk_a", "add", "bought", 1, 0.0)], 1, 0.0)
    store.close()
    service = FakeService(clock)
    service.passages.append(PASSAGE)
    notes = NotesStore.open(tmp_path / "db")
    async with radio(clock) as windows:
        worker = SharedHighlights(
            notes, service, clock, windows, batch_window_s=BATCH_WINDOW_S, backoff=BACKOFF
        )
        async with running(worker.run()):
            yield World(clock, service, notes, worker)
    notes.close()


def held(world: World) -> int:
    return len(world.notes.popular("bk_a"))


async def test_the_passages_of_the_books_on_the_device_come_in(world: World) -> None:
    world.worker.link_up()
    await world.clock.advance(1)
    assert held(world) == 1


async def test_a_timeout_is_retried_after_its_backoff(world: World) -> None:
    world.service.fail("popular_highlights", StalledError("timed out"), times=1)
    world.worker.link_up()
    await world.clock.advance(1)
    assert len(world.service.times_of("popular_highlights")) == 1
    await world.clock.advance(5 + BATCH_WINDOW_S)
    tries = world.service.times_of("popular_highlights")
    assert len(tries) >= 2
    assert 0.5 <= tries[1] - tries[0] <= 5 + BATCH_WINDOW_S


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    world.service.fail("popular_highlights", ServiceHTTPError(503, "/p", retry_after="120"))
    world.worker.link_up()
    await world.clock.advance(1)
    await world.clock.advance(119)
    assert len(world.service.times_of("popular_highlights")) == 1
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert len(world.service.times_of("popular_highlights")) >= 2


async def test_a_refused_device_is_not_retried_but_reported(world: World) -> None:
    world.service.fail("popular_highlights", ServiceHTTPError(401, "/p"), None)
    world.worker.link_up()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("popular_highlights")) == 1
    report = world.worker.retry.report()
    assert report is not None
    assert "refused this device" in report["doing"]


async def test_a_full_disk_while_applying_is_survived(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise DiskFullError("the disk is full")

    monkeypatch.setattr(world.notes, "record_popular_refresh", disk_full)
    monkeypatch.setattr(world.notes, "apply_popular", disk_full)
    world.worker.link_up()
    await world.clock.advance(1)
    assert world.worker.retry.failures == 1
    monkeypatch.undo()
    await world.clock.advance(5 + BATCH_WINDOW_S)
    assert world.worker.retry.report() is None
