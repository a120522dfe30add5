"""Telling systemd how the daemon is doing: the sd_notify protocol, spoken directly.

The protocol (sd_notify(3)) is one datagram of `KEY=value` lines to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'); no library is needed.
The daemon says READY=1 once its store is open and its local API listens, STATUS= with a short
state ("3 books downloading, 12 on the device, last sync 12:04"), WATCHDOG=1 at half of
$WATCHDOG_USEC, RELOADING=1 around a SIGHUP, and STOPPING=1 when it begins to stop.

The watchdog pings come from a task on the event loop (`run`), not from a thread, so a loop that
blocks stops the pings and systemd restarts the daemon. Without $NOTIFY_SOCKET every call does
nothing. A datagram that cannot be sent is logged once and dropped: the daemon never stops or
waits for its supervisor.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from daemon.clock import Clock
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.notify")
# Without a watchdog, how often STATUS= is refreshed (only sent when its text changed).
STATUS_INTERVAL_S = 15.0


class Notifier:
    """The daemon's channel to its service manager (`Notifier(None)` when there is none)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        # Ping at half the interval, as sd_watchdog_enabled(3) advises.
        self.ping_interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._socket: socket.socket | None = None
        self._failed = False
        self._status: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, pid: int = 0) -> Notifier:
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the watchdog is meant for this
        process only when its pid is named, or none is)."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log_event(_LOG, logging.WARNING, "notify_socket_unsupported", address=address)
            address = None
        watchdog_pid = environ.get("WATCHDOG_PID")
        usec = environ.get("WATCHDOG_USEC", "")
        mine = watchdog_pid is None or watchdog_pid == str(pid or os.getpid())
        return cls(address, int(usec) if usec.isdigit() and int(usec) > 0 and mine else None)

    def send(self, message: str) -> None:
        """One datagram, never blocking; a failure is logged once, then ignored."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), target)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log_event(_LOG, logging.WARNING, "notify_failed", address=self.address, error=e)

    def ready(self, status: str) -> None:
        self._status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def reloading(self, monotonic_usec: int) -> None:
        self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def extend_timeout(self, seconds: float) -> None:
        """Still starting (registering with an unreachable service): do not time out yet."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run(self, clock: Clock, status: Callable[[], str]) -> None:
        """Until cancelled: WATCHDOG=1 every ping interval, and STATUS= when it changed."""
        if self.address is None:
            return
        while True:
            await clock.sleep(self.ping_interval_s or STATUS_INTERVAL_S)
            self.status(status())
            if self.ping_interval_s:
                self.send("WATCHDOG=1")
