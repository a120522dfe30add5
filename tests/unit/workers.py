"""What the workers' unit tests share: a fake clock, the radio's owner running on it, the fake
service, and a real store in a temporary folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from daemon.radio.windows import RadioWindows
from tests.fake_clock import FakeClock, settle


@asynccontextmanager
async def running(*work: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run each coroutine as a task for the block, then cancel and await them all."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        await settle()
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@asynccontextmanager
async def radio(clock: FakeClock) -> AsyncIterator[RadioWindows]:
    windows = RadioWindows(clock)
    async with running(windows.run()):
        yield windows
