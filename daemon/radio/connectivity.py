"""Connectivity: the push channel from the service, and the online/offline state it implies.

While the channel is up, every message from the service (including the hello on connect) asks
for a library sync, and the channel is kept alive by a ping at least every `keepalive_s`; a ping
without a pong within half a period, or a channel without its hello within that time, is dead (a
NAT that dropped the mapping, a proxy that blackholes). The daemon is online from the hello on.
When the channel drops or dies, the daemon reconnects with jittered backoff (reset only by a
channel that spoke) and, meanwhile, polls the changes feed at the profile's poll interval, so a
purchase still arrives when push is blocked (a captive portal, a proxy that drops WebSockets).
A channel refused or cut by whatever answers for the service (the network is there, the service
is not: an outage) is tried again within SERVICE_DOWN_RECONNECT_S however long the outage, so
the service's return is heard of within the 60-second promise (issue 22 #1); one that timed out
(a radio searching in vain) or found no network at all (NoRouteError: no route, no name lookup,
the radio off) keeps the full backoff, up to the poll interval: where a dial may bring the radio
up, a week without signal is not a dial every 40 s. A
channel that could not connect at all (UnreachableError) is the daemon's one probe for the
return: no pull goes with it (it would fail the same) and every other worker waits for the
return (daemon/retry.py), which the system's "network is back" (`comeback`) also brings at once.

Push version 2: a `library_changed` that carries the changes themselves (and an order's signed
manifest) is handed on whole, to be applied without a pull; the hello names the catalog's
dictionaries, fetched while idle.

Radio: the keep-alive ping and the poll are the daemon's only idle wake-ups. Both go through the
radio's owner (daemon/radio/windows.py), so deferred work rides them; the ping may go up to half a
period early, to ride a radio that is awake anyway.

On a trip the reader has traded the 60-second promise for the battery (issue 18: a book bought
during a trip lands in the next window). Each connection is a window: once its work is done
(`RadioWindows.work_done`: the library pulled, downloads ended, notes synced, receipts sent, the
shared highlights asked for refreshed), the channel is closed, no keep-alive holds the radio up,
and the next window opens a poll interval later, or at once when the system says the network is
back (the comeback). A trip that begins while the channel is up ends the window at its next
quiet moment. Outside a trip nothing of this applies: the channel is kept with its keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from daemon.backoff import Backoff
from daemon.client import LibraryPush, PushedFrames
from daemon.clock import Clock, within
from daemon.errors import NoRouteError, ShelfsyncError, StalledError, TransportError
from daemon.logs import log_event
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry, first_of
from daemon.service import PushStream, ServiceAPI

_LOG = logging.getLogger("shelfsync.connectivity")
# The longest wait between reconnects while the service is down but the network is up: the
# 60-second promise less what the reconnect, its hello and a pull take on a slow link.
SERVICE_DOWN_RECONNECT_S = 40.0


class Connectivity:
    def __init__(
        self,
        client: ServiceAPI,
        clock: Clock,
        windows: RadioWindows,
        request_sync: Callable[[], None],
        *,
        keepalive_s: float,
        poll_interval_s: float,
        backoff: Backoff | None = None,
        on_event: Callable[[str], None] = lambda kind: None,
        on_library_push: Callable[[LibraryPush], None] | None = None,
        on_pushed_frames: Callable[[PushedFrames], None] | None = None,
        on_dictionaries: Callable[[list[Any]], None] = lambda refs: None,
        prefix_room: Callable[[], int] = lambda: 0,
        comeback: Comeback | None = None,
        on_trip: Callable[[], bool] = lambda: False,
    ) -> None:
        self._client = client
        self._on_trip = on_trip  # a trip is under way: each connection is one window
        # A change the push carried whole (else a pull is asked for), and the dictionaries
        # the hello names (fetched while idle, off the first purchase's path).
        self._on_library_push = on_library_push
        self._on_pushed_frames = on_pushed_frames  # the first frames a push announced
        self._on_dictionaries = on_dictionaries
        self._prefix_room = prefix_room  # room for an order's first frames, said on connect
        # Told "online" when the channel connects, each message's type, and "poll" while down:
        # the annotation and popular-highlight workers sync on these.
        self._on_event = on_event
        self._clock = clock
        self._windows = windows
        self._request_sync = request_sync
        self._keepalive_s = keepalive_s
        self._poll_interval_s = poll_interval_s
        # Failures: channels in a row that failed or never said a word.
        self._comeback = comeback or Comeback()
        self.retry = Retry(
            "connectivity",
            clock,
            backoff or Backoff(base_s=1.0, cap_s=600.0),
            self._comeback,
            probes=True,
        )
        self.online = False  # the channel is up and the service has spoken on it
        self.push_connected_since: float | None = None
        self.next_attempt_at: float | None = None  # wall clock, while the channel is down
        self.between_windows = False  # a trip's window ended: offline by choice, not by fault
        self._spoke = asyncio.Event()  # the open channel's hello came

    async def run(self) -> None:
        while True:
            first = self.retry.failures == 0
            self.next_attempt_at = None
            self.between_windows = False
            try:
                async with self._client.push_channel(self._prefix_room()) as channel:
                    window_ended = await self._serve(channel)
                if window_ended:
                    await self._between_windows()
                    continue
                log_event(_LOG, logging.INFO, "push_closed")
                error: BaseException = TransportError("the push channel closed")
                decision = self.retry.failed(error)
            except (ShelfsyncError, OSError) as e:
                error, decision = e, self.retry.failed(e)
                log_event(
                    _LOG,
                    logging.WARNING if first else logging.DEBUG,
                    "push_unavailable",
                    error=decision.kind,
                    detail=decision.detail,
                    retryable=decision.retryable,
                )
            self.online = False
            self.push_connected_since = None
            if not decision.unreachable:
                # Poll while push is down: the pull doubles as the probe for the link's return.
                self._request_sync()
                self._on_event("poll")
            # Its own time, not a range: the jittered backoff is what spreads a thousand devices
            # (their phases stay spread when the cap holds them). A refusal (401, 403) is not
            # retried on the poll's cadence but as the helper says.
            if decision.retryable:
                ceiling = self._poll_interval_s
                if not isinstance(error, StalledError | NoRouteError):  # the network is there
                    ceiling = min(ceiling, SERVICE_DOWN_RECONNECT_S)
                decision = dataclasses.replace(decision, delay_s=min(decision.delay_s, ceiling))
            self.next_attempt_at = self._clock.wall() + decision.delay_s
            await self.retry.wait(decision, partial(self._windows.wait, "poll"))

    def _connected(self) -> None:
        """The service spoke on the channel: push works, the backoff starts over."""
        self.online = True
        self._spoke.set()
        self.push_connected_since = self._clock.wall()
        self.retry.succeeded()
        log_event(_LOG, logging.INFO, "push_connected")
        self._on_event("online")

    async def _between_windows(self) -> None:
        """A trip's window ended: the radio may sleep until the next one, a poll interval away,
        or until the system says the network is back."""
        self.online = False
        self.push_connected_since = None
        self.between_windows = True
        log_event(_LOG, logging.INFO, "trip_window_ended", next_in_s=self._poll_interval_s)
        due = self._clock.monotonic() + self._poll_interval_s
        self.next_attempt_at = self._clock.wall() + self._poll_interval_s
        await first_of(self._windows.wait("poll", due, due), self._comeback.event.wait())

    async def _serve(self, channel: PushStream) -> bool:
        """Act on the channel's messages and keep it alive, until it closes or its keep-alive
        fails (raised: TransportError), or on a trip until the window's work is done (True)."""
        self._spoke = asyncio.Event()
        tasks = [
            asyncio.create_task(self._read(channel), name="push messages"),
            asyncio.create_task(self._keep_alive(channel), name="push keep-alive"),
        ]
        window = asyncio.create_task(self._trip_window(), name="trip window")
        try:
            done, _ = await asyncio.wait((*tasks, window), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, window):
                task.cancel()
            await asyncio.gather(*tasks, window, return_exceptions=True)
        for task in done:
            task.result()
        return window in done

    async def _trip_window(self) -> None:
        """Return when, on a trip, this connection's window has done its work. Off a trip it
        looks again whenever the radio next carries something (a ping at the latest), so a trip
        that begins meanwhile ends the window at its next quiet moment."""
        await self._spoke.wait()
        while True:
            if self._on_trip():
                await self._windows.work_done()
                if self._on_trip():
                    return
            await self._windows.carried()

    async def _read(self, channel: PushStream) -> None:
        # Online only once the service speaks (its hello comes first): a proxy may accept the
        # upgrade and pass nothing on, and a channel that says nothing within a pong's wait is
        # as dead as a ping without a pong.
        async with contextlib.aclosing(channel.messages()) as messages:
            try:
                message = await within(self._clock, self._keepalive_s / 2, anext(messages, None))
            except TimeoutError as e:
                raise StalledError(
                    f"push channel: no hello within {self._keepalive_s / 2:g} s"
                ) from e
            if message is None:
                return  # closed before a word
            self._connected()
            self._act_on(message)
            async for message in messages:
                self._act_on(message)

    def _act_on(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        carried = message.get("carried")
        if isinstance(carried, LibraryPush) and self._on_library_push is not None:
            self._on_library_push(carried)
        elif isinstance(carried, PushedFrames):
            if self._on_pushed_frames is not None:
                self._on_pushed_frames(carried)
            return  # the tail of a library_changed, which was the event
        elif kind in ("hello", "library_changed"):
            self._request_sync()
        if kind == "hello" and isinstance(message.get("dictionaries"), list):
            self._on_dictionaries(message["dictionaries"])
        self._on_event(str(kind))

    async def _keep_alive(self, channel: PushStream) -> None:
        while True:
            last = self._clock.monotonic()
            await self._windows.wait(
                "keepalive", last + self._keepalive_s / 2, last + self._keepalive_s
            )
            await channel.ping(timeout_s=self._keepalive_s / 2)
