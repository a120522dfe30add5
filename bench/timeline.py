"""The week's clock: real time, with the quiet stretches skipped.

A week offline cannot take a week to measure, and most of it is nothing happening: the radio is
off, the reader is reading. The daemons under test take their time from a `Timeline` (through a
`DeviceClock` each, which may be set wrong, as a device's clock may be), so the benchmark moves
their time on to the next thing any of them waits for (a keep-alive, a poll, a retry, a batch
window) or to the scenario's next event, whenever nothing is on the wire. While bytes move, time
runs at its real rate: transfers, round trips and timeouts keep their real durations, so the
radio-on time measured on the link emulators is the time a device would spend.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

TICK_S = 0.02  # how often due sleepers are woken as real time passes
SETTLE_TURNS = 20  # event-loop turns a woken sleeper gets offline: a refused connect takes a few


class Timeline:
    """Seconds since the week began (`now`), shared by every device of the run."""

    def __init__(self, start_s: float, wall_at_zero: float) -> None:
        self._real_zero = time.monotonic() - start_s
        self._skipped = 0.0
        self._wall_at_zero = wall_at_zero
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        # Real time a sleeper was last woken: what it does next (a ping) may take a round trip
        # to reach a wire, and time must not skip past it meanwhile.
        self.last_wake_real = -math.inf

    def now(self) -> float:
        return time.monotonic() - self._real_zero + self._skipped

    def wall(self) -> float:
        """The true wall-clock time (the service's, and a correct device's)."""
        return self._wall_at_zero + self.now()

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now() + max(0.0, seconds), next(self._order), woken))
        await woken

    def next_wake(self) -> float | None:
        """When the earliest sleeper still waiting is due."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled: withdrawn
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def _wake_due(self) -> None:
        now = self.now()
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, woken = heapq.heappop(self._sleepers)
            if not woken.done():
                woken.set_result(None)
                self.last_wake_real = time.monotonic()

    async def run_until(
        self, target: float, quiet: Callable[[], bool], offline: Callable[[], bool]
    ) -> None:
        """Let time pass until `target`, skipping to the next wake whenever `quiet()` says
        nothing is happening that real time is needed for. While `offline()` (no link up:
        whatever a woken sleeper tries fails at once), the woken only get a few turns of the
        event loop before the next skip, not a tick of real time."""
        while (now := self.now()) < target:
            skip = quiet()
            if skip:
                wake = self.next_wake()
                jump_to = target if wake is None else min(target, wake)
                self._skipped += max(0.0, jump_to - now)
            self._wake_due()
            if skip and offline():
                for _ in range(SETTLE_TURNS):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(TICK_S)
        self._wake_due()

    async def keep_time(self) -> None:
        """Wake sleepers as real time passes between `run_until`s (the scenario's own awaits)."""
        while True:
            self._wake_due()
            await asyncio.sleep(TICK_S)


class DeviceClock:
    """One device's view of the timeline (daemon.clock.Clock): its wall clock `skew_s` off."""

    def __init__(self, timeline: Timeline, skew_s: float = 0.0) -> None:
        self._timeline = timeline
        self.skew_s = skew_s

    def wall(self) -> float:
        return self._timeline.wall() + self.skew_s

    def monotonic(self) -> float:
        return self._timeline.now()

    async def sleep(self, seconds: float) -> None:
        await self._timeline.sleep(seconds)
