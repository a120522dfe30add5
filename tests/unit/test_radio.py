"""The radio's owner: deferrable work waits for a window, rides an awake radio, and is withdrawn
when its waiter is cancelled; time is a fake clock, so nothing really sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from daemon.radio.windows import RadioWindows
from tests.fake_clock import FakeClock, settle


@pytest.fixture
async def windows() -> AsyncIterator[tuple[RadioWindows, FakeClock]]:
    clock = FakeClock()
    owner = RadioWindows(clock, ride_s=5.0)
    task = asyncio.create_task(owner.run(), name="radio windows under test")
    try:
        yield owner, clock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_deferrable_work_waits_for_its_latest_time_when_the_radio_sleeps(
    windows: tuple[RadioWindows, FakeClock],
) -> None:
    owner, clock = windows
    start = clock.monotonic()
    want = asyncio.create_task(owner.wait("receipts", start, start + 300))
    await clock.advance(299)
    assert not want.done()
    await clock.advance(1)
    assert want.done()
    await want
    assert owner.wakeups == 1


async def test_wants_whose_ranges_overlap_go_in_one_wake_up(
    windows: tuple[RadioWindows, FakeClock],
) -> None:
    owner, clock = windows
    t = clock.monotonic()
    keepalive = asyncio.create_task(owner.wait("keepalive", t + 120, t + 240))
    popular = asyncio.create_task(owner.wait("popular", t, t + 600))
    note = asyncio.create_task(owner.wait("annotations", t + 0.2, t + 400))
    await clock.advance(239)
    assert not any(task.done() for task in (keepalive, popular, note))
    await clock.advance(1)
    await asyncio.gather(keepalive, popular, note)
    assert owner.wakeups == 1


async def test_due_work_rides_a_radio_that_is_awake_anyway(
    windows: tuple[RadioWindows, FakeClock],
) -> None:
    owner, clock = windows
    t = clock.monotonic()
    note = asyncio.create_task(owner.wait("annotations", t + 0.2, t + 600))
    later = asyncio.create_task(owner.wait("popular", t + 30, t + 600))
    await clock.advance(1)
    assert not note.done()
    owner.radio_used()  # a push message arrived
    await settle()
    assert note.done()
    assert not later.done()  # not due yet, and the radio sleeps again before it is
    await clock.advance(30)
    assert not later.done()
    owner.radio_used()
    await settle()
    assert later.done()
    assert owner.wakeups == 0


async def test_a_cancelled_wait_withdraws_its_want(
    windows: tuple[RadioWindows, FakeClock],
) -> None:
    owner, clock = windows
    t = clock.monotonic()
    want = asyncio.create_task(owner.wait("popular", t, t + 60))
    await settle()
    want.cancel()
    await asyncio.gather(want, return_exceptions=True)
    await clock.advance(120)
    assert owner.wakeups == 0


async def test_an_event_cuts_the_wait_short(windows: tuple[RadioWindows, FakeClock]) -> None:
    owner, clock = windows
    t = clock.monotonic()
    link_up = asyncio.Event()
    retry = asyncio.create_task(owner.wait("annotations", t + 60, t + 600, unless=link_up))
    await clock.advance(10)
    assert not retry.done()
    link_up.set()
    await settle()
    assert retry.done()
    await clock.advance(600)
    assert owner.wakeups == 0
