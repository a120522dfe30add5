"""The radio's owner: workers wait here for a wake window instead of on timers of their own.

A worker with deferrable network work awaits `windows.wait(kind, not_before, latest)`; it returns
when a window that serves the want opens (daemon/radio/wake.py decides when). Urgent work does not
wait: it just goes, and the client tells this owner (`radio_used`) whenever it carries anything,
so deferred work that is due rides the awake radio for `RIDE_S`. The owner's `run` task is the
only place that sleeps for network work, so an idle daemon wakes the radio only for the wants
whose latest time has come: the push channel's keep-alive, or the poll while push is down.

A window's work: each part with network work names itself (`owes(name, busy)`, its `busy` saying
whether it has work under way or asked for at once), and `work_done()` returns once none has and
the radio has carried nothing for `WORK_SETTLE_S`. This is the one definition of a window's work
being done; on a trip, connectivity ends the window there (daemon/radio/connectivity.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from daemon.clock import Clock, sleep_or_until
from daemon.logs import log_event
from daemon.radio.wake import Want, next_window

_LOG = logging.getLogger("shelfsync.radio")
# A cellular radio stays in its high-power state for several seconds after its last packet (the
# "tail"): work sent within it costs little more than the packet that woke the radio.
RIDE_S = 5.0
# Work that follows from other work (a pull's changes starting downloads, a completed book's
# receipt) starts within milliseconds of it: with nothing owed and the radio silent this long,
# the window's work is done.
WORK_SETTLE_S = 0.2


class RadioWindows:
    def __init__(self, clock: Clock, *, ride_s: float = RIDE_S) -> None:
        self._clock = clock
        self._ride_s = ride_s
        self._pending: dict[int, tuple[Want, asyncio.Future[None]]] = {}
        self._ids = itertools.count()
        self._changed = asyncio.Event()
        self._awake_until = float("-inf")
        self._carried_at = float("-inf")
        self._carried = asyncio.Event()  # replaced at each use: set when the radio next carries
        self._work: dict[str, Callable[[], bool]] = {}
        self.wakeups = 0  # windows that woke a sleeping radio (for status and the benchmark)

    def radio_used(self) -> None:
        """The radio carried something just now (a request, a push frame): due work rides it."""
        self._carried_at = self._clock.monotonic()
        self._awake_until = max(self._awake_until, self._carried_at + self._ride_s)
        self._changed.set()
        self._carried.set()
        self._carried = asyncio.Event()

    def owes(self, name: str, busy: Callable[[], bool]) -> None:
        """`name` is a part with network work for a window: `busy()` says whether it has work
        under way or asked for at once (not a retry's backoff, nor work deferred to a later
        window)."""
        self._work[name] = busy

    def owed(self) -> list[str]:
        """The parts whose work for this window is not done yet."""
        return [name for name, busy in self._work.items() if busy()]

    async def work_done(self, settle_s: float = WORK_SETTLE_S) -> None:
        """Return once no part owes work and the radio has carried nothing for `settle_s`. A
        part busy without a word on the radio (a slow answer, a download between reads) is
        looked at again every `settle_s`: a local question, no radio."""
        while True:
            quiet_at = self._carried_at + settle_s
            now = self._clock.monotonic()
            if now < quiet_at:
                await self._clock.sleep(quiet_at - now)
            elif not self.owed():
                return
            else:
                await self._clock.sleep(settle_s)

    async def carried(self) -> None:
        """Return when the radio next carries something."""
        await self._carried.wait()

    async def wait(
        self,
        kind: str,
        not_before: float,
        latest: float,
        *,
        unless: asyncio.Event | None = None,
    ) -> None:
        """Return when a window serving this want opens (monotonic times), or earlier when
        `unless` is set. Cancelling the wait withdraws the want."""
        key = next(self._ids)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[key] = (Want(kind, not_before, latest), opened)
        self._changed.set()
        interrupt = asyncio.ensure_future(unless.wait()) if unless is not None else None
        ends: list[asyncio.Future[Any]] = [opened] if interrupt is None else [opened, interrupt]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pending.pop(key, None)
            opened.cancel()
            if interrupt is not None:
                interrupt.cancel()
                await asyncio.gather(interrupt, return_exceptions=True)

    async def run(self) -> None:
        """Open each window when it is due; runs until cancelled."""
        while True:
            self._changed.clear()
            now = self._clock.monotonic()
            keys = list(self._pending)
            wants = [self._pending[key][0] for key in keys]
            window = next_window(wants, now, self._awake_until)
            if window is None:
                await self._changed.wait()
            elif window.opens_at > now:
                await sleep_or_until(self._clock, window.opens_at - now, self._changed)
            else:
                if window.wakes_radio:
                    self.wakeups += 1
                self._awake_until = max(self._awake_until, now + self._ride_s)
                for i in window.serves:
                    self._pending.pop(keys[i])[1].set_result(None)
                log_event(
                    _LOG,
                    logging.DEBUG,
                    "radio_window",
                    kinds=",".join(sorted({wants[i].kind for i in window.serves})),
                    woke_radio=window.wakes_radio,
                )
