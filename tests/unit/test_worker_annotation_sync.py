"""Annotation sync against the fake service and a fake clock: an edit is pushed once; a failed
round is retried after its backoff or the service's Retry-After; a refusal (403) is not retried
but reported; a store that fails while recording the failure is survived; a stop is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.backoff import Backoff
from daemon.errors import DiskFullError, ServiceHTTPError, StalledError
from daemon.notes.annotation_sync import AnnotationSync
from daemon.notes.store import NotesStore
from daemon.protocol import annotation_input, merge
from daemon.protocol.hlc import HybridClock
from daemon.retry import Comeback
from daemon.store import Store
from tests.fake_clock import FakeClock
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

BACKOFF = Backoff(base_s=2.0, cap_s=600.0)
BATCH_WINDOW_S = 5.0


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    notes: NotesStore
    sync: AnnotationSync
    hlc: HybridClock

    def highlight(self) -> None:
        new = annotation_input.parse_new(
            {
                "kind": "highlight",
                "anchor": {
                    "resource": "text/ch1.xhtml",
                    "start": 10,
                    "end": 20,
                    "quote": {"exact": "a sentence"},
                },
            }
        )
        stamp = self.hlc.tick(int(self.clock.wall() * 1000))
        delta = merge.create_delta(f"an_{len(self.service.ops_received)}", "bk_a", stamp, new)
        self.notes.commit_item_edit(delta, f"op_{stamp[-12:]}", stamp, self.clock.wall())
        self.sync.request()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    service = FakeService(clock)
    Store.open(tmp_path / "db").close()  # the device's database, its migrations run
    notes = NotesStore.open(tmp_path / "db")
    hlc = HybridClock("dev_a")
    async with radio(clock) as windows:
        sync = AnnotationSync(
            notes,
            service,
            clock,
            hlc,
            windows,
            batch_window_s=BATCH_WINDOW_S,
            backoff=BACKOFF,
            comeback=Comeback(),
        )
        async with running(sync.run()):
            yield World(clock, service, notes, sync, hlc)
    notes.close()


async def test_an_edit_is_pushed_once_in_its_window(world: World) -> None:
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert len(world.service.ops_received) == 1
    assert world.notes.outbox_batch(10, 10**6) == []
    await world.clock.advance(3600)
    assert len(world.service.times_of("push_annotation_ops")) == 1


async def test_a_timeout_is_retried_after_its_backoff(world: World) -> None:
    world.service.fail("push_annotation_ops", StalledError("timed out"), times=2)
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 20)
    tries = world.service.times_of("push_annotation_ops")
    assert len(tries) == 3
    assert 0.2 <= tries[1] - tries[0] <= 2.0 + BATCH_WINDOW_S
    assert len(world.service.ops_received) == 1


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    world.service.fail("push_annotation_ops", ServiceHTTPError(429, "/ops", retry_after="30"))
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 60)
    first, second = world.service.times_of("push_annotation_ops")
    assert second - first >= 30


async def test_a_refused_device_is_not_retried_but_reported(world: World) -> None:
    world.service.fail("push_annotation_ops", ServiceHTTPError(403, "/ops", "revoked"), None)
    world.highlight()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("push_annotation_ops")) == 1
    report = world.sync.retry.report()
    assert report is not None
    assert "refused this device" in report["doing"]
    assert len(world.notes.outbox_batch(10, 10**6)) == 1  # kept, to go when it can


async def test_a_full_disk_while_recording_the_failure_is_survived(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> None:
        raise DiskFullError("the disk is full")

    monkeypatch.setattr(world.notes, "record_sync", disk_full)
    world.service.fail("annotation_changes", StalledError("timed out"), times=1)
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 1)
    monkeypatch.undo()
    await world.clock.advance(BACKOFF.cap_s)
    assert len(world.service.times_of("annotation_changes")) >= 2  # still running, and synced
    assert world.sync.retry.report() is None


async def test_a_new_name_is_told_once_and_names_are_asked_for_only_when_something_is_new(
    world: World,
) -> None:
    world.notes.want_name_sent("Hall Kindle")
    world.service.device_list["dev_b"] = "Phone"
    world.sync.names_changed()
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert world.service.device_list["dev_fake"] == "Hall Kindle"
    assert world.notes.name_to_send() is None
    assert world.notes.device_names()["dev_b"] == "Phone"
    world.highlight()  # a sync with nothing new of other devices: no names asked
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert len(world.service.times_of("rename_device")) == 1
    assert len(world.service.times_of("device_names")) == 1


async def test_a_service_without_device_names_holds_back_no_note(world: World) -> None:
    world.notes.want_name_sent("Hall Kindle")
    world.service.fail("rename_device", ServiceHTTPError(404, "/v1/device", "no such route"), None)
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert len(world.service.ops_received) == 1
    assert world.sync.retry.report() is None  # synced: the notes went
    world.highlight()
    await world.clock.advance(BATCH_WINDOW_S + 1)
    assert len(world.service.times_of("rename_device")) == 1  # not asked again
