"""The push channel (PROTOCOL.md "Push channel"): one WebSocket hub for every device.

Version 1 (`/v1/push`): a message only says "pull the changes feed"; it carries the cursor so a
device can skip a pull it already made. Version 2 (`/v1/push?version=2`): `library_changed` is a
binary message carrying the changes themselves and, for an order, the signed manifest made for
that device (`library_message`), then the package's first frames one a message
(`frames_message`), so a purchase costs the device no round trip before its first chapter.
Each socket is served by its own request handler (aiohttp owns and awaits it); the hub only
sends to sockets and closes them all on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import WSCloseCode, web

from server_stub.logs import kv

HEARTBEAT = 30.0  # seconds between WebSocket pings; a device that misses a pong is dropped
CLOSE_TIMEOUT = 2.0  # seconds to wait for a device's close reply on shutdown
MAX_INCOMING = 64 * 1024  # bytes: devices send nothing the service acts on
VERSIONS = (1, 2)  # the push protocols served (PROTOCOL.md "Push channel")
MAX_PUSHED_PREFIX = 256 * 1024  # bytes of an order's first frames a push may carry

log = logging.getLogger("server_stub.push")


class PushHub:
    def __init__(self) -> None:
        # account_id -> device_id -> the device's live sockets
        self._sockets: dict[str, dict[str, set[web.WebSocketResponse]]] = {}
        self._versions: dict[web.WebSocketResponse, int] = {}  # each live socket's protocol
        # Each version 2 socket's room for an order's first frames (what the device said).
        self._room: dict[web.WebSocketResponse, int] = {}

    def prefix_room(self, account_id: str, device_id: str) -> int:
        """The bytes of first frames every version 2 socket of the device has room for."""
        sockets = self._sockets.get(account_id, {}).get(device_id, set())
        rooms = [self._room.get(ws, 0) for ws in sockets if self._versions.get(ws) == 2]
        return min(rooms, default=0)

    def carrying(self, account_id: str, device_id: str | None) -> list[str]:
        """The devices (one, or every device of the account for None) with a live socket of
        version 2: those a library change is sent to whole."""
        devices = self._sockets.get(account_id, {})
        return [
            dev
            for dev, sockets in devices.items()
            if (device_id is None or dev == device_id)
            and any(self._versions.get(ws) == 2 for ws in sockets)
        ]

    def connected(self, account_id: str, device_id: str) -> int:
        """How many live sockets a device has (for tests and logs)."""
        return len(self._sockets.get(account_id, {}).get(device_id, ()))

    async def serve(
        self,
        request: web.Request,
        account_id: str,
        device_id: str,
        latest_cursor: Callable[[], int],
        silence: Callable[[], Awaitable[None]] | None = None,
        hello_first: bool = False,
        version: int = 1,
        hello_extra: Mapping[str, Any] | None = None,
        prefix_room: int = 0,
    ) -> web.WebSocketResponse:
        """Serve one device's socket until it closes: hello first, then notifications.

        With `silence` (fault injection), the socket is accepted (and says hello, if
        `hello_first`) and then passes nothing until `silence()` returns, when it is closed: not
        registered (no notification), not read (the device's pings go unanswered), no heartbeat
        of ours. Version 2's hello also carries `hello_extra` (the catalog's dictionaries)."""
        # Version 1's hello is as it always was; version 2's says so and adds `hello_extra`.
        extra = {"version": 2, **(hello_extra or {})} if version == 2 else {}
        hello = {"type": "hello", "cursor": 0, **extra}
        ws = web.WebSocketResponse(
            heartbeat=None if silence else HEARTBEAT,
            timeout=CLOSE_TIMEOUT,
            max_msg_size=MAX_INCOMING,
            compress=False,
        )
        await ws.prepare(request)
        if silence is not None:
            log.info(kv("push_silenced", account_id=account_id, device_id=device_id))
            if hello_first:
                await ws.send_json({**hello, "cursor": latest_cursor()})
            await silence()
            with contextlib.suppress(ConnectionError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"link back")
            return ws
        devices = self._sockets.setdefault(account_id, {})
        devices.setdefault(device_id, set()).add(ws)
        self._versions[ws] = version
        self._room[ws] = min(prefix_room, MAX_PUSHED_PREFIX)
        log.info(kv("push_connected", account_id=account_id, device_id=device_id, version=version))
        try:
            # Registered before the cursor is read, so no change falls between hello and the
            # first notification.
            await ws.send_json({**hello, "cursor": latest_cursor()})
            async for _message in ws:
                pass  # nothing to act on; iterating answers pings and notices the close
        except ConnectionError:
            pass  # the device went away mid-send; the finally below forgets the socket
        finally:
            self._versions.pop(ws, None)
            self._room.pop(ws, None)
            sockets = devices.get(device_id, set())
            sockets.discard(ws)
            if not sockets:
                devices.pop(device_id, None)
            if not devices:
                self._sockets.pop(account_id, None)
            log.info(kv("push_disconnected", account_id=account_id, device_id=device_id))
        return ws

    async def notify(
        self,
        account_id: str,
        device_id: str | None,
        cursor: int,
        kind: str = "library_changed",
        whole: Mapping[str, Sequence[bytes]] | None = None,
    ) -> None:
        """Tell one device (or every device of the account, for None) that a feed changed:
        `kind` is library_changed or annotations_changed, `cursor` that feed's new seq.
        `whole` holds, by device, the version 2 messages that carry the change itself
        (`library_message`, then any `frames_message`), sent in order; a device's version 2
        sockets get them, every other socket the plain notice."""
        devices = self._sockets.get(account_id, {})
        notice = {"type": kind, "cursor": cursor}
        sends = []
        for dev, sockets in devices.items():
            if device_id is not None and dev != device_id:
                continue
            carried = (whole or {}).get(dev)
            for ws in sockets:
                if carried is not None and self._versions.get(ws) == 2:
                    sends.append(self._send(ws, carried))
                else:
                    sends.append(self._send(ws, [notice]))
        await asyncio.gather(*sends)

    async def send_carried(self, account_id: str, messages: Mapping[str, Sequence[bytes]]) -> None:
        """Send, by device, more version 2 messages (an order's frames) to its version 2
        sockets only: the others were told with the plain notice."""
        devices = self._sockets.get(account_id, {})
        await asyncio.gather(
            *(
                self._send(ws, carried)
                for dev, carried in messages.items()
                for ws in devices.get(dev, ())
                if self._versions.get(ws) == 2
            )
        )

    @staticmethod
    async def _send(ws: web.WebSocketResponse, messages: Sequence[dict[str, Any] | bytes]) -> None:
        # A socket closing under us is forgotten by its handler; the device pulls on reconnect.
        with contextlib.suppress(ConnectionError):
            for message in messages:
                if ws.closed:
                    return
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_json(message)

    async def close_all(self) -> None:
        """Close every socket (on shutdown), so their handlers return."""
        sockets = [ws for devices in self._sockets.values() for s in devices.values() for ws in s]
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"service shutting down")
                for ws in sockets
            )
        )


def library_message(
    cursor: int,
    after: int,
    changes: list[dict[str, Any]],
    manifests: list[tuple[str, bytes]],
    frames_follow: Sequence[tuple[str, int, int]] = (),
    *,
    root_version: int = 1,
    now: float | None = None,
) -> bytes:
    """Version 2's `library_changed`: `u32be(n) ‖ n bytes of JSON ‖ each manifest envelope`.

    The JSON is `{"type": "library_changed", "cursor", "after", "changes": [feed entries],
    "manifests": [{"book_id", "length"}], "frames_follow": [{"book_id", "version", "length"}],
    "root_version", "now"}` (the last two as a changes page has them): the device's changes
    after seq `after` up to `cursor` (what a pull from `after` would bring), then the signed
    envelopes, raw (base64 would add a third to what arrives before the first chapter).
    `frames_follow` announces, for an order, the package's first bytes that `frames_message`s
    bring next: kept out of this message, so that the device hears of the order and asks for
    the rest of the package while they are still arriving."""
    header = json.dumps(
        {
            "type": "library_changed",
            "cursor": cursor,
            "after": after,
            "changes": changes,
            "manifests": [{"book_id": b, "length": len(e)} for b, e in manifests],
            "frames_follow": [
                {"book_id": b, "version": v, "length": n} for b, v, n in frames_follow
            ],
            "root_version": root_version,
            **({} if now is None else {"now": now}),
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((len(header).to_bytes(4, "big"), header, *(e for _, e in manifests)))


def frames_message(book_id: str, version: int, offset: int, data: bytes) -> bytes:
    """`u32be(n) ‖ {"type": "package_frames", "book_id", "version", "offset", "length"} ‖
    the package's bytes from `offset`: whole frames of what `frames_follow` announced, one
    message each, so the device commits each as it lands (the first chapter reads as soon as
    its own frames are in, not when the whole prefix is)."""
    header = json.dumps(
        {
            "type": "package_frames",
            "book_id": book_id,
            "version": version,
            "offset": offset,
            "length": len(data),
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((len(header).to_bytes(4, "big"), header, data))
