"""Outage and return of the push channel: a purchase still arrives by polling while push is
refused (a proxy or captive portal that drops WebSockets), and push is used again once back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server_stub.app import HUB, running_stub
from tests.conftest import REPO, StubImport
from tests.integration.harness import admin, running_device

POLL_S = 0.5


def fast_poll_profile(tmp_path: Path) -> Path:
    """The loopback profile, polling every POLL_S while push is down."""
    text = (REPO / "device_profiles" / "emulator-loopback.toml").read_text()
    assert "poll_interval_s = 30 " in text
    path = tmp_path / "fast-poll.toml"
    path.write_text(text.replace("poll_interval_s = 30 ", f"poll_interval_s = {POLL_S} "))
    return path


async def until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def requests(url: str, path: str) -> list[dict[str, Any]]:
    log = (await admin(url, "GET", "/v1/admin/requests"))["requests"]
    return [r for r in log if r["path"] == path]


async def test_a_purchase_arrives_by_polling_while_push_is_refused_and_push_comes_back(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    during_outage = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    after_return = stub_corpus_import.book_ids["calibre_quick_start_eng.epub"]
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(
            stub.url, stub.public_key_text, tmp_path / "d", profile=str(fast_poll_profile(tmp_path))
        ) as device,
    ):
        runtime = device.daemon.runtime
        await until(lambda: runtime()["online"])

        # Push dies: every new channel is refused, and the live one is dropped.
        rule = {"route": "push", "kind": "error", "status": 503, "times": 1_000_000}
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [rule]})
        await stub.app[HUB].close_all()
        await until(lambda: not runtime()["online"])
        await admin(stub.url, "DELETE", "/v1/admin/requests")

        ordered = await device.account.buy(during_outage)
        book = await device.wait_complete(during_outage, timeout_s=20)
        heard_after = book["notified_at"] - ordered
        pushes = await requests(stub.url, "/v1/push")
        polls = await requests(stub.url, "/v1/library/changes")
        # No channel was served: the device heard of the purchase from a poll, within about
        # one poll interval, and kept trying push meanwhile (with backoff).
        assert pushes
        assert {r["status"] for r in pushes} == {503}
        assert polls
        assert heard_after < POLL_S + 1.0, heard_after
        assert not runtime()["online"]

        # Push returns: the device reconnects within a poll interval or so and stops polling;
        # the next purchase is pushed, so the feed is asked right after it.
        await admin(stub.url, "DELETE", "/v1/admin/faults")
        await until(lambda: runtime()["online"], timeout_s=5)
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        await device.account.buy(after_return)
        await device.wait_complete(after_return, timeout_s=20)
        paths = [
            r["path"] for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        ]
        assert "/v1/library/changes" in paths[paths.index("/v1/library/buy") :]
        assert runtime()["online"]
