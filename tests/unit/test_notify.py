"""The sd_notify sender, against a real AF_UNIX datagram socket as systemd binds it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.notify import Notifier
from tests.fake_clock import FakeClock, settle


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A socket bound where $NOTIFY_SOCKET would point, like systemd's."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def _received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(5)


def test_ready_status_reloading_and_stopping_are_datagrams_of_key_value_lines(
    manager: tuple[str, socket.socket],
) -> None:
    path, sock = manager
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.ready("offline; 0 on the device, last sync never")
    notifier.status("online; 2 books downloading, 0 on the device, last sync 12:04")
    notifier.status("online; 2 books downloading, 0 on the device, last sync 12:04")  # unchanged
    notifier.reloading(123_456)
    notifier.stopping()
    notifier.close()
    assert _received(sock) == [
        "READY=1\nSTATUS=offline; 0 on the device, last sync never",
        "STATUS=online; 2 books downloading, 0 on the device, last sync 12:04",
        "RELOADING=1\nMONOTONIC_USEC=123456",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_an_abstract_socket_name_is_written_with_an_at_sign() -> None:
    name = f"shelfsync-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("starting")
        notifier.close()
        assert sock.recv(4096) == b"READY=1\nSTATUS=starting"


async def test_the_watchdog_is_pinged_at_half_its_interval_from_the_event_loop(
    manager: tuple[str, socket.socket],
) -> None:
    path, sock = manager
    clock = FakeClock()
    notifier = Notifier.from_environ(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.ping_interval_s == 15.0
    states = iter(["online; 0 on the device, last sync never"] * 2 + ["offline; 1 on the device"])
    task = asyncio.create_task(notifier.run(clock, lambda: next(states)))
    try:
        for _ in range(3):
            await settle()
            await clock.advance(15.0)
        await settle()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
    assert _received(sock) == [
        "STATUS=online; 0 on the device, last sync never",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STATUS=offline; 1 on the device",
        "WATCHDOG=1",
    ]


def test_a_watchdog_meant_for_another_process_is_not_pinged() -> None:
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(environ, pid=4242).ping_interval_s is None
    assert Notifier.from_environ({**environ, "WATCHDOG_PID": "4242"}, pid=4242).ping_interval_s


def test_without_a_service_manager_nothing_is_sent_and_a_vanished_one_is_not_an_error(
    tmp_path: Path,
) -> None:
    Notifier.from_environ({}).ready("starting")  # no socket: a no-op
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    gone.ready("starting")  # ENOENT: logged once, the daemon goes on
    gone.stopping()
    gone.close()
