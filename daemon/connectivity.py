"""Connectivity: the push channel from the service, and the online/offline state it implies.

While the channel is up, every message from the service (including the hello on connect) asks
for a library sync. When it drops, the daemon reconnects with jittered backoff and, meanwhile,
polls the changes feed at the profile's poll interval, so a purchase still arrives when push is
blocked (a captive portal, a proxy that drops WebSockets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from daemon.backoff import Backoff
from daemon.client import ServiceClient
from daemon.clock import Clock
from daemon.errors import TransportError
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.connectivity")


class Connectivity:
    def __init__(
        self,
        client: ServiceClient,
        clock: Clock,
        request_sync: Callable[[], None],
        *,
        keepalive_s: float,
        poll_interval_s: float,
        backoff: Backoff | None = None,
        on_event: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._client = client
        # Told "online" when the channel connects, each message's type, and "poll" while down:
        # the annotation and popular-highlight workers sync on these.
        self._on_event = on_event
        self._clock = clock
        self._request_sync = request_sync
        self._keepalive_s = keepalive_s
        self._poll_interval_s = poll_interval_s
        self._backoff = backoff or Backoff(base_s=1.0, cap_s=600.0)
        self.online = False
        self.push_connected_since: float | None = None

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                async with self._client.push_channel(self._keepalive_s) as channel:
                    self.online = True
                    self.push_connected_since = self._clock.wall()
                    failures = 0
                    log_event(_LOG, logging.INFO, "push_connected")
                    self._on_event("online")
                    async for message in channel.messages():
                        if message.get("type") in ("hello", "library_changed"):
                            self._request_sync()
                        self._on_event(str(message.get("type")))
                log_event(_LOG, logging.INFO, "push_closed")
            except TransportError as e:
                level = logging.WARNING if failures == 0 else logging.DEBUG
                log_event(_LOG, level, "push_unavailable", detail=str(e))
            self.online = False
            self.push_connected_since = None
            failures += 1
            # Poll while push is down: the pull doubles as the probe for the link's return.
            self._request_sync()
            self._on_event("poll")
            await self._clock.sleep(min(self._backoff.delay(failures), self._poll_interval_s))
