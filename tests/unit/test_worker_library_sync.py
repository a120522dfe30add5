"""Library sync against the fake service and a fake clock: a pull brings the feed in; a failed
pull is retried after its backoff; errors the service will answer the same way are not retried."""

from __future__ import annotations

from pathlib import Path

from daemon.content.library_sync import LibrarySync
from daemon.store import Store
from tests.fake_clock import FakeClock
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running


async def test_a_pull_brings_every_page_of_the_feed_in(tmp_path: Path) -> None:
    clock = FakeClock()
    service = FakeService(clock)
    for i in range(5):
        service.add_book(f"bk_{i}")
    store = Store.open(tmp_path / "db")
    changed: list[int] = []
    async with radio(clock) as windows:
        sync = LibrarySync(store, service, clock, windows, on_change=lambda: changed.append(1))
        async with running(sync.run()):
            sync.request()
            await clock.advance(0)
    assert store.library_cursor() == 5
    assert changed
    store.close()
