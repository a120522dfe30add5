"""Debian's headless Chromium driven over the Chrome DevTools Protocol, with the standard
library and aiohttp: the browser test needs a handful of commands (navigate, evaluate, reload,
screenshot), not a WebDriver stack, and nothing here downloads a browser of its own.

The browser listens on a loopback port it picks and writes to DevToolsActivePort in its fresh
profile directory; the client speaks JSON over the page target's WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

INSTALL = "apt-get install -y chromium"
# What Chromium needs here: no sandbox (root in a container), no GPU, and no network but the
# page's own loopback (the network is closed; every background fetch would only wait).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,760",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class PageError(AssertionError):
    """A script in the page threw, or a condition never came true."""


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loads = 0

    async def listen(self) -> None:
        """Dispatch the browser's answers and count page loads, until the socket closes."""
        async for message in self._ws:
            doc = json.loads(message.data)
            if "id" in doc:
                future = self._waiting.pop(doc["id"], None)
                if future is not None and not future.done():
                    future.set_result(doc)
            elif doc.get("method") == "Page.loadEventFired":
                self._loads += 1

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        doc = await asyncio.wait_for(future, 30)
        if "error" in doc:
            raise PageError(f"{method}: {doc['error']}")
        result: dict[str, Any] = doc["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise PageError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20) -> Any:
        """Evaluate until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise PageError(f"never true: {expression}")
            await asyncio.sleep(0.05)

    async def goto(self, url: str) -> None:
        loads = self._loads
        await self.send("Page.navigate", url=url)
        await self._loaded(loads)

    async def reload(self) -> None:
        loads = self._loads
        await self.send("Page.reload")
        await self._loaded(loads)

    async def _loaded(self, loads: int) -> None:
        deadline = time.monotonic() + 20
        while self._loads == loads:
            if time.monotonic() > deadline:
                raise PageError("the page never finished loading")
            await asyncio.sleep(0.02)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


START_ATTEMPTS = 2


@asynccontextmanager
async def chromium_page(binary: str, profile_dir: Path) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh profile, and its one page; closed on exit.

    A browser that never opens its DevTools port is started once more, with a fresh profile:
    its start is not what the tests check (seen once, in one of nine clean-clone runs)."""
    profile_dir.mkdir(parents=True)
    log = (profile_dir.parent / "chromium.log").open("wb")
    for attempt in range(1, START_ATTEMPTS + 1):
        profile = profile_dir / f"start-{attempt}"
        browser = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            port = await _devtools_port(profile / "DevToolsActivePort", browser)
            break
        except PageError:
            if browser.returncode is None:
                browser.kill()
            await browser.wait()
            if attempt == START_ATTEMPTS:
                log.close()
                raise
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                listener = asyncio.create_task(page.listen(), name="devtools listener")
                try:
                    await page.send("Page.enable")
                    yield page
                finally:
                    listener.cancel()
                    with suppress(asyncio.CancelledError):
                        await listener
    finally:
        if browser.returncode is None:
            browser.terminate()
        await browser.wait()
        log.close()


async def _devtools_port(port_file: Path, browser: asyncio.subprocess.Process) -> int:
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if browser.returncode is not None:
            raise PageError(f"chromium exited ({browser.returncode}); see chromium.log")
        if time.monotonic() > deadline:
            raise PageError("chromium did not open its DevTools port")
        await asyncio.sleep(0.05)
    return int(port_file.read_text().split()[0])
