"""Wake windows on the real daemon and stub (PLANNING.md "Radio"): an idle online device sends
deferrable work in clusters, not as it trickles in, and a purchase still goes at once, taking
the deferred work with it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from daemon.radio.windows import RIDE_S
from server_stub.app import running_stub
from tests.conftest import REPO, StubImport
from tests.integration.harness import Device, admin, running_device
from tests.integration.notes_helpers import BOOK_FILE, anchor, eventually

BATCH_S = 2.0
OPS = "/v1/annotations/ops"


def batching_profile(tmp_path: Path) -> Path:
    """The loopback profile, with deferrable work waiting up to BATCH_S."""
    text = (REPO / "device_profiles" / "emulator-loopback.toml").read_text()
    assert "batch_window_s = 1 " in text
    path = tmp_path / "batching.toml"
    path.write_text(text.replace("batch_window_s = 1 ", f"batch_window_s = {BATCH_S} "))
    return path


async def request_log(url: str) -> list[dict[str, Any]]:
    return list((await admin(url, "GET", "/v1/admin/requests"))["requests"])


async def note(device: Device, book_id: str, text: str) -> float:
    """The reader writes a note; returns when (the stub's clock, the same process)."""
    body = {"kind": "note", "anchor": anchor(), "note": text}  # one note each
    status, doc = await device.api.send("POST", f"/v1/books/{book_id}/annotations", body)
    assert status == 201, doc
    return time.monotonic()


async def quiet(url: str) -> None:
    """Wait until the device's radio would be asleep: nothing sent for longer than its tail."""
    while True:
        log = await request_log(url)
        last = max((r["at"] for r in log if r["path"] != "/v1/push"), default=0.0)
        if time.monotonic() - last > RIDE_S + 0.3:
            return
        await asyncio.sleep(0.2)


async def test_notes_wait_for_one_window_and_ride_a_purchase_that_goes_at_once(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    noted_book = stub_corpus_import.book_ids[BOOK_FILE]
    bought_later = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(
            stub.url, stub.public_key_text, tmp_path / "d", profile=str(batching_profile(tmp_path))
        ) as device,
    ):
        await device.account.buy(noted_book)
        await device.wait_complete(noted_book)
        await quiet(stub.url)
        windows = device.daemon.windows
        assert windows is not None

        # 1. Idle: three notes typed a few tenths of a second apart (the old settle delay was
        # 0.2 s: three pushes) leave together, one request, when the first may wait no longer.
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        wakeups = windows.wakeups
        first = await note(device, noted_book, "one")
        for text in ("two", "three"):
            await asyncio.sleep(0.3)
            await note(device, noted_book, text)
        await eventually(lambda: _outbox_empty(device))
        everything = await request_log(stub.url)
        # The push's "annotations changed" brings a shared-highlights refresh: it rides too.
        shared = [r for r in everything if r["path"] == "/v1/popular-highlights"]
        log = [r for r in everything if r["path"] != "/v1/popular-highlights"]
        assert [r["path"] for r in log] == [OPS, "/v1/annotations/changes"]
        assert BATCH_S - 0.1 <= log[0]["at"] - first <= BATCH_S + 1.0, log[0]["at"] - first
        assert log[1]["at"] - log[0]["at"] < 1.0  # the pull rides the same window
        assert all(r["at"] - log[0]["at"] < 1.0 for r in shared)
        assert windows.wakeups == wakeups + 1

        # 2. Idle again: a note waits, then a purchase opens a window at once; the device hears
        # of it and fetches it without waiting, and the note goes in the same window.
        await quiet(stub.url)
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        noted = await note(device, noted_book, "four")
        await asyncio.sleep(0.5)
        assert not [r for r in await request_log(stub.url) if r["path"] == OPS]
        ordered = await device.account.buy(bought_later)
        book = await device.wait_complete(bought_later, timeout_s=10)
        assert book["notified_at"] - ordered < 1.0
        await eventually(lambda: _outbox_empty(device))
        log = await request_log(stub.url)
        bought_at = next(r["at"] for r in log if r["path"] == "/v1/library/buy")
        [pushed] = [r for r in log if r["path"] == OPS]
        # Within the purchase's window (the radio's tail), before the note's own latest time.
        assert bought_at <= pushed["at"] <= bought_at + RIDE_S
        assert pushed["at"] < noted + BATCH_S


async def _outbox_empty(device: Device) -> bool:
    return int((await device.api.status())["annotations"]["outbox_depth"]) == 0
