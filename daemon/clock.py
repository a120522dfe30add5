"""The clock: the only code that reads the time or sleeps, so tests can move time by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


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
