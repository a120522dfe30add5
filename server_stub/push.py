"""The push channel (PROTOCOL.md "Push channel"): one WebSocket hub for every device.

A message only says "pull the changes feed"; it carries the cursor so a device can skip a pull it
already made. Each socket is served by its own request handler (aiohttp owns and awaits it); the
hub only sends to sockets and closes them all on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web

from server_stub.logs import kv

HEARTBEAT = 30.0  # seconds between WebSocket pings; a device that misses a pong is dropped
CLOSE_TIMEOUT = 2.0  # seconds to wait for a device's close reply on shutdown
MAX_INCOMING = 64 * 1024  # bytes: devices send nothing the service acts on

log = logging.getLogger("server_stub.push")


class PushHub:
    def __init__(self) -> None:
        # account_id -> device_id -> the device's live sockets
        self._sockets: dict[str, dict[str, set[web.WebSocketResponse]]] = {}

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
    ) -> web.WebSocketResponse:
        """Serve one device's socket until it closes: hello first, then notifications.

        With `silence` (fault injection), the socket is accepted (and says hello, if
        `hello_first`) and then passes nothing until `silence()` returns, when it is closed: not
        registered (no notification), not read (the device's pings go unanswered), no heartbeat
        of ours."""
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
                await ws.send_json({"type": "hello", "cursor": latest_cursor()})
            await silence()
            with contextlib.suppress(ConnectionError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"link back")
            return ws
        devices = self._sockets.setdefault(account_id, {})
        devices.setdefault(device_id, set()).add(ws)
        log.info(kv("push_connected", account_id=account_id, device_id=device_id))
        try:
            # Registered before the cursor is read, so no change falls between hello and the
            # first notification.
            await ws.send_json({"type": "hello", "cursor": latest_cursor()})
            async for _message in ws:
                pass  # nothing to act on; iterating answers pings and notices the close
        except ConnectionError:
            pass  # the device went away mid-send; the finally below forgets the socket
        finally:
            sockets = devices.get(device_id, set())
            sockets.discard(ws)
            if not sockets:
                devices.pop(device_id, None)
            if not devices:
                self._sockets.pop(account_id, None)
            log.info(kv("push_disconnected", account_id=account_id, device_id=device_id))
        return ws

    async def notify(
        self, account_id: str, device_id: str | None, cursor: int, kind: str = "library_changed"
    ) -> None:
        """Tell one device (or every device of the account, for None) that a feed changed:
        `kind` is library_changed or annotations_changed, `cursor` that feed's new seq."""
        devices = self._sockets.get(account_id, {})
        targets = [
            ws
            for dev, sockets in devices.items()
            if device_id is None or dev == device_id
            for ws in sockets
        ]
        message = {"type": kind, "cursor": cursor}
        await asyncio.gather(*(self._send(ws, message) for ws in targets))

    @staticmethod
    async def _send(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        if ws.closed:
            return
        # A socket closing under us is forgotten by its handler; the device pulls on reconnect.
        with contextlib.suppress(ConnectionError):
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
