"""A clock for tests that moves only when the test moves it; sleepers wake in order as it does."""

from __future__ import annotations

import asyncio
import heapq
import itertools

WALL_AT_ZERO = 1_700_000_000.0  # the wall clock when monotonic time is 0


async def settle() -> None:
    """Let every task that can run, run (a few rounds of the event loop)."""
    for _ in range(50):
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def wall(self) -> float:
        return WALL_AT_ZERO + self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper at its time and letting it run."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, woken = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not woken.done():
                woken.set_result(None)
                await settle()
        self.now = target
        await settle()
