"""A trip's radio windows (issue 18), against the fake service and a fake clock: a window's work
is done when no part owes any and the radio is silent; on a trip the push channel closes there,
no keep-alive is sent until the next window (a poll interval later, or at once when the network
is back), and a book bought between windows reaches the device in the next one. Off a trip the
channel stays up with its keep-alive, as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from daemon.content.library_sync import LibrarySync
from daemon.radio.connectivity import Connectivity
from daemon.radio.windows import WORK_SETTLE_S, RadioWindows
from daemon.retry import Comeback
from daemon.store import Store
from tests.fake_clock import FakeClock, settle
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

KEEPALIVE_S = 240.0
POLL_S = 1800.0


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    store: Store
    windows: RadioWindows
    link: Connectivity
    comeback: Comeback
    on_trip: bool = True
    holding: bool = False  # a part of the test's that owes work for the window


@pytest.fixture
async def world(store: Store) -> AsyncIterator[World]:
    clock = FakeClock()
    service = FakeService(clock)
    comeback = Comeback()
    async with radio(clock) as windows:
        sync = LibrarySync(store, service, clock, windows, lambda: None, comeback=comeback)
        link = Connectivity(
            service,
            clock,
            windows,
            sync.request,
            keepalive_s=KEEPALIVE_S,
            poll_interval_s=POLL_S,
            comeback=comeback,
            on_trip=lambda: world.on_trip,
        )
        world = World(clock, service, store, windows, link, comeback)
        windows.owes("library", lambda: sync.busy)
        windows.owes("the test's", lambda: world.holding)
        async with running(sync.run(), link.run()):
            yield world


async def test_a_window_s_work_is_done_when_no_part_owes_any_and_the_radio_is_silent() -> None:
    clock = FakeClock()
    windows = RadioWindows(clock)
    owed = {"library": True, "receipts": False}
    for name in owed:
        windows.owes(name, lambda name=name: owed[name])  # type: ignore[misc]
    assert windows.owed() == ["library"]
    done = asyncio.create_task(windows.work_done())
    await clock.advance(30)
    assert not done.done()  # the library still owes its pull
    owed["library"] = False
    windows.radio_used()  # the pull's answer, just now
    await clock.advance(WORK_SETTLE_S / 2)
    assert not done.done()  # what follows from the answer has not had its moment yet
    await clock.advance(WORK_SETTLE_S)
    assert done.done()
    await done


async def test_on_a_trip_the_channel_closes_once_the_window_s_work_is_done(world: World) -> None:
    await settle()
    assert world.service.times_of("library_changes")  # the hello's pull
    await world.clock.advance(WORK_SETTLE_S)
    assert world.service.channel is None
    assert not world.link.online
    assert world.link.between_windows  # offline by choice: nothing is wrong
    # Until the next window, nothing: no keep-alive, no reconnect.
    await world.clock.advance(POLL_S - 2 * WORK_SETTLE_S)
    assert world.service.times_of("ping") == []
    assert len(world.service.times_of("push_channel")) == 1


async def test_on_a_trip_a_book_bought_between_windows_arrives_in_the_next(world: World) -> None:
    await world.clock.advance(WORK_SETTLE_S)
    assert world.service.channel is None
    closed_at = world.clock.monotonic()
    world.service.add_book("bk_bought_on_the_way")
    await world.clock.advance(POLL_S / 2)
    assert world.store.library.library_cursor() == 0  # between windows: the radio is off
    assert world.link.next_attempt_at == pytest.approx(world.clock.wall() + POLL_S / 2)
    await world.clock.advance(POLL_S / 2)
    tries = world.service.times_of("push_channel")
    assert tries[-1] == pytest.approx(closed_at + POLL_S)  # the next window, on its schedule
    assert world.store.library.library_cursor() == 1
    assert world.service.times_of("ping") == []


async def test_on_a_trip_the_network_coming_back_opens_the_next_window_at_once(
    world: World,
) -> None:
    await world.clock.advance(WORK_SETTLE_S)
    assert world.service.channel is None
    await world.clock.advance(600)
    world.service.add_book("bk_bought_on_the_way")
    world.comeback.announce()  # the system: the network is back
    await settle()
    assert len(world.service.times_of("push_channel")) == 2
    assert world.store.library.library_cursor() == 1


async def test_a_part_that_owes_work_holds_the_window_open(world: World) -> None:
    world.holding = True  # a download, say
    await settle()
    await world.clock.advance(KEEPALIVE_S * 2)
    assert world.service.channel is not None  # kept, pings and all, while the work goes on
    world.holding = False
    await world.clock.advance(WORK_SETTLE_S)
    assert world.service.channel is None


async def test_off_a_trip_the_channel_stays_up_with_its_keep_alive(world: World) -> None:
    world.on_trip = False
    await settle()
    await world.clock.advance(KEEPALIVE_S * 3)
    assert world.service.channel is not None
    assert world.link.online
    assert len(world.service.times_of("ping")) >= 3


async def test_a_trip_begun_while_the_channel_is_up_ends_the_window_at_its_next_quiet_moment(
    world: World,
) -> None:
    world.on_trip = False
    await world.clock.advance(KEEPALIVE_S)
    assert world.service.channel is not None
    world.on_trip = True  # the reader ran `shelfsync trip`
    world.windows.radio_used()  # the trip's syncs went out
    await world.clock.advance(WORK_SETTLE_S)
    assert world.service.channel is None
