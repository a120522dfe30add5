"""Retries: what a worker does after a failed attempt, written once for every worker.

The error is classified once (daemon.errors.retryable). A retryable one is tried again after the
jittered backoff, or after the service's Retry-After when it sent one (429, 503), bounded so that
no answer silences a device for long. One the service would answer the same way (401 or 403,
any other 4xx but 404) is not retried on a timer: it waits until the worker is asked again (a
push, the link's return, the reader), or REFUSED_RECHECK_S, so that a service fixed meanwhile is
found without a restart. Either way the error is kept for the
status report until an attempt succeeds.

A push that arrives, or a push channel that comes back, means the service is there now: the
owner calls `Comeback.announce`, which cuts every pending retry wait short (issue 22 #1), so a
purchase made during an outage is not held back by a retry scheduled minutes out.

While the link is known to be down (an attempt could not connect at all: UnreachableError), a
worker does not dial out on its own backoff: each such timer would wake the radio for nothing
through an outage, and the retries falling due one by one in the next window each kept the radio
up again. It waits for the link's return instead (the system's "network is back", the push
channel's probe, any exchange that succeeds), bounded by the comeback's `link_down_wait_s`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from daemon.backoff import Backoff
from daemon.clock import Clock
from daemon.errors import (
    ServiceHTTPError,
    StoreError,
    UnreachableError,
    refused_by_service,
    retryable,
)
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.retry")

RETRY_AFTER_CAP_S = 600.0  # a service may ask for a pause, not for a device's silence
REFUSED_RECHECK_S = 3600.0  # an error the service would repeat: tried again when asked, or then
WaitWindow = Callable[[float, float], Awaitable[None]]  # (not_before, latest), monotonic s


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt."""

    delay_s: float  # until the next attempt
    retryable: bool  # False: only when asked again, or after REFUSED_RECHECK_S
    kind: str  # the error's type
    detail: str  # its message
    refused: bool = False  # the service refused this device's credentials (401, 403)
    hold_s: float = 0.0  # what the service's Retry-After asked for: not cut short
    unreachable: bool = False  # no connection could be made: the link is down

    @property
    def error(self) -> str:
        """For the status report and the store: "TypeName: message"."""
        return f"{self.kind}: {self.detail}"[:500]


def retry_after_s(error: BaseException, now_wall: float) -> float | None:
    """The wait a 429 or 503 asked for (delta-seconds or an HTTP date), within
    [0, RETRY_AFTER_CAP_S]; None if it asked for none or sent something unreadable."""
    if not isinstance(error, ServiceHTTPError) or error.status not in (429, 503):
        return None
    value = (error.retry_after or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "¹" is a digit to str.isdigit, not to float
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_wall
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(RETRY_AFTER_CAP_S, max(0.0, seconds))


def decide(
    error: BaseException,
    failures: int,
    backoff: Backoff,
    now_wall: float,
    rng: random.Random | None = None,
) -> Decision:
    """The response to the `failures`-th failure in a row, ending in `error` (pure)."""
    kind, detail = type(error).__name__, str(error)[:500]
    if not retryable(error):
        return Decision(REFUSED_RECHECK_S, False, kind, detail, refused_by_service(error))
    delay = backoff.delay(failures, rng)
    asked = retry_after_s(error, now_wall)
    if isinstance(error, UnreachableError):
        return Decision(delay, True, kind, detail, unreachable=True)
    if asked is None:
        return Decision(delay, True, kind, detail)
    return Decision(max(delay, asked), True, kind, detail, hold_s=asked)


class Comeback:
    """The service is back (a push arrived, the channel came back, the system said the network
    is back, an exchange succeeded after the link was lost): every retry wait that is pending
    when it is announced ends at once. Meanwhile, a retry that could not connect waits for it,
    at most `link_down_wait_s` (0: its backoff, for a worker without a prober beside it)."""

    def __init__(self, link_down_wait_s: float = 0.0) -> None:
        self._event = asyncio.Event()
        self.announced = 0
        self.link_down_wait_s = link_down_wait_s
        self.link_down = False  # an attempt could not connect, and nothing answered since

    @property
    def event(self) -> asyncio.Event:
        """Set at the next announcement (a wait takes the one current when it begins)."""
        return self._event

    def announce(self) -> None:
        self.announced += 1
        self.link_down = False
        self._event.set()
        self._event = asyncio.Event()


class Retry:
    """One worker's failures in a row and the waits between its attempts."""

    def __init__(
        self,
        worker: str,
        clock: Clock,
        backoff: Backoff,
        comeback: Comeback | None = None,
        *,
        probes: bool = False,
    ) -> None:
        self.worker = worker
        self._clock = clock
        self._backoff = backoff
        self._comeback = comeback or Comeback()
        # The one worker whose attempts probe for the link's return: on its own backoff.
        self._probes = probes
        self.failures = 0
        self.last: Decision | None = None  # the failure not yet followed by a success

    def failed(self, error: BaseException, failures: int | None = None) -> Decision:
        """Count a failure (or take the count, for work that keeps its own per item) and say
        when to try again."""
        self.failures = self.failures + 1 if failures is None else failures
        decision = decide(error, self.failures, self._backoff, self._clock.wall())
        if decision.unreachable:
            self._comeback.link_down = True
        if decision.unreachable and not self._probes:
            decision = dataclasses.replace(
                decision, delay_s=max(decision.delay_s, self._comeback.link_down_wait_s)
            )
        self.last = decision
        return decision

    def succeeded(self) -> None:
        self.failures = 0
        self.last = None
        if self._comeback.link_down:  # the service answered: the others need not wait more
            self._comeback.announce()

    def log_failed(
        self, log: logging.Logger, event: str, decision: Decision, level: int, **fields: Any
    ) -> None:
        """One line for a failed attempt: what failed, whether and when it is tried again."""
        log_event(
            log,
            level,
            event,
            **fields,
            error=decision.kind,
            detail=decision.detail,
            retryable=decision.retryable,
            retry_in_s=round(decision.delay_s, 1),
        )

    def report(self) -> dict[str, Any] | None:
        """For the status report: the failing worker's error and what it does about it."""
        if self.last is None:
            return None
        if self.last.refused:
            doing = "the service refused this device; not retried until it is asked again"
        elif not self.last.retryable:
            doing = "the service would answer the same; not retried until it is asked again"
        elif self.last.unreachable:
            doing = "waiting for the network to come back"
        else:
            doing = f"retrying ({self.failures} failures in a row)"
        return {"error": self.last.error, "retryable": self.last.retryable, "doing": doing}

    async def wait(
        self,
        decision: Decision,
        window: WaitWindow,
        *,
        slack_s: float = 0.0,
        unless: Iterable[asyncio.Event] = (),
    ) -> None:
        """Wait out `decision`'s delay, then for `window` (a wake window at most `slack_s`
        later); cut short when the service comes back or any of `unless` is set, but never
        below what the service's Retry-After asked for."""
        back = self._comeback.event
        due = self._clock.monotonic() + decision.delay_s
        if decision.hold_s > 0:
            await self._clock.sleep(decision.hold_s)
        await first_of(window(due, due + slack_s), back.wait(), *map(_set, unless))


def record_failure(worker: str, write: Callable[..., object], *args: Any) -> bool:
    """`write(*args)`: a failure's record to the store, surviving a store that fails too (a
    full disk): the failure is logged either way, and the worker goes on. Whether it was."""
    try:
        write(*args)
    except StoreError as e:
        log_event(_LOG, logging.WARNING, "failure_not_recorded", worker=worker, error=str(e))
        return False
    return True


async def _set(event: asyncio.Event) -> None:
    await event.wait()


async def first_of(*work: Awaitable[Any]) -> None:
    """Wait until the first of `work` ends; cancel and await the rest."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # a wait that failed says so
