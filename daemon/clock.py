"""The clock: the only code that reads the time or sleeps, so tests can move time by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

_T = TypeVar("_T")


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch; may jump (the user sets the clock, NTP corrects it)."""

    def monotonic(self) -> float:
        """Seconds that only move forward; for timeouts and durations."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def within(clock: Clock, seconds: float, work: Awaitable[_T]) -> _T:
    """`work`'s result, if it ends within `seconds` by `clock`; else it is cancelled and
    TimeoutError raised (asyncio.timeout's, on the clock a test moves)."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, timer):
            pending.cancel()
        await asyncio.gather(task, timer, return_exceptions=True)
    if task.cancelled():
        raise TimeoutError(f"not done within {seconds:g} s")
    return task.result()


async def sleep_or_until(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile (the link came back, say)."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            task.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
