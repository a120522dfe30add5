"""Outage and return of the push channel: a purchase still arrives by polling while push is
refused (a proxy or captive portal that drops WebSockets) or open but silent (a NAT that dropped
the mapping, a proxy that blackholes), and push is used again once back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server_stub.app import HUB, running_stub
from tests.conftest import REPO, StubImport
from tests.integration.harness import admin, running_device

POLL_S = 0.5


def fast_poll_profile(tmp_path: Path, poll_s: float = POLL_S) -> Path:
    """The loopback profile, polling every `poll_s` while push is down."""
    text = (REPO / "device_profiles" / "emulator-loopback.toml").read_text()
    assert "poll_interval_s = 30 " in text
    path = tmp_path / "fast-poll.toml"
    path.write_text(text.replace("poll_interval_s = 30 ", f"poll_interval_s = {poll_s} "))
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
        # the next purchase comes whole on the channel (this small book's frames are all its
        # first chapter's), with no pull of the feed and no request for the book.
        await admin(stub.url, "DELETE", "/v1/admin/faults")
        await until(lambda: runtime()["online"], timeout_s=5)
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        await device.account.buy(after_return)
        await device.wait_complete(after_return, timeout_s=20)
        paths = [
            r["path"] for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        ]
        after_buy = paths[paths.index("/v1/library/buy") + 1 :]
        assert [p for p in after_buy if p.startswith(("/v1/books/", "/v1/library/"))] == []
        assert runtime()["online"]


KEEPALIVE_S = 2.0  # the loopback profile's 15 s, shortened: a ping every 2 s, 1 s for its pong


async def test_a_silent_push_channel_is_noticed_polled_around_and_replaced_once_it_works(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    during_outage = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    profile = fast_poll_profile(tmp_path, poll_s=1.0)
    text = profile.read_text()
    assert "keepalive_s = 15 " in text
    profile.write_text(text.replace("keepalive_s = 15 ", f"keepalive_s = {KEEPALIVE_S} "))
    async with running_stub(corpus_stub_data, port=0, faults=True) as stub:
        # The link goes silent after the device's first hello (a NAT that dropped the mapping),
        # and every channel after it is accepted and then says nothing (a proxy blackholing).
        rules = [
            {"route": "push", "kind": "silence", "after_hello": True},
            {"route": "push", "kind": "silence", "times": 1_000_000},
        ]
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": rules})
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "d", profile=str(profile)
        ) as device:
            runtime = device.daemon.runtime
            await until(lambda: runtime()["online"])
            up = time.monotonic()
            # Nothing closes the channel: the daemon notices the missing pong by itself,
            # within one keep-alive period and the pong's timeout.
            await until(lambda: not runtime()["online"], timeout_s=3 * KEEPALIVE_S)
            noticed = time.monotonic() - up
            assert KEEPALIVE_S / 2 <= noticed <= 1.5 * KEEPALIVE_S + 0.5, noticed

            # Silent channels from now on: the device reports offline throughout, and a
            # purchase made meanwhile comes through the poll.
            online_seen: list[bool] = []
            ordered = await device.account.buy(during_outage)
            deadline = time.monotonic() + 20
            while (book := await device.book_state(during_outage)) is None or book[
                "state"
            ] != "complete":
                online_seen.append(runtime()["online"])
                assert time.monotonic() < deadline, book
                await asyncio.sleep(0.02)
            assert not any(online_seen)
            heard_after = book["notified_at"] - ordered
            assert heard_after < KEEPALIVE_S / 2 + 1.0 + 1.0, heard_after
            await asyncio.sleep(2 * KEEPALIVE_S)
            assert not runtime()["online"]

            # The channel works again: the device reconnects on its backoff (capped by the poll
            # interval) and reports online.
            await admin(stub.url, "DELETE", "/v1/admin/faults")
            await admin(stub.url, "POST", "/v1/admin/release")
            back = time.monotonic()
            await until(lambda: runtime()["online"], timeout_s=2 * KEEPALIVE_S + 1.0)
            assert time.monotonic() - back < KEEPALIVE_S / 2 + 1.0 + 0.5
        # Stopped, the daemon keeps no part of its run: no radio owner, not online.
        assert device.daemon.windows is None
        assert not runtime()["online"]
        log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        pushes = sorted(r["at"] for r in log if r["path"] == "/v1/push" and r["at"] < back)
        # Every silent channel cost the device a hello's wait and then its backoff before the
        # next try: no reconnect storm against a blackhole.
        assert len(pushes) >= 4, pushes
        gaps = [b - a for a, b in itertools.pairwise(pushes)]
        assert all(gap >= KEEPALIVE_S / 2 for gap in gaps), gaps
