"""Delivery receipts: the promise rule, receipts reaching the service exactly once through
failures, and a broken promise answered with an apology the reader sees."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.client import AccountClient, ClientLimits, ServiceClient
from daemon.models import LibraryChange
from daemon.protocol.crypto import x25519_public_text
from daemon.store import Store
from server_stub.app import running_stub
from server_stub.receipts import Bounds, Receipt, judge, promise_bounds
from tests.conftest import StubImport
from tests.integration.harness import admin, running_device

ORDERED = 1_764_000_000.0
NORMAL = Bounds(first_chapter_s=5.0, complete_s=60.0)


def receipt(
    outcome: str = "complete",
    first: float | None = 1.0,
    complete: float | None = 10.0,
    reason: str = "bought",
    retries: int = 0,
    link_up: float | None = None,
) -> Receipt:
    """A receipt whose times are seconds after the order, on a device clock equal to ours."""
    return Receipt(
        receipt_id="bk_x.v1.1764000000000.complete",
        outcome=outcome,
        book_id="bk_x",
        version=1,
        reason=reason,
        ordered_at=ORDERED,
        link_up_at=None if link_up is None else ORDERED + link_up,
        first_chapter_at=None if first is None else ORDERED + first,
        completed_at=None if complete is None else ORDERED + complete,
        retries=retries,
        last_error=None,
    )


def test_a_normal_book_gets_the_promise_on_every_link() -> None:
    # A 1 MB book: 8 s of bytes even on 3G (1000 kbps), so the promise itself applies.
    for kbps in (1000, 10_000, 1_000_000):
        assert promise_bounds(kbps, 1_000_000, 40_000) == NORMAL


def test_a_book_too_big_for_the_link_is_judged_against_its_bytes_plus_a_margin() -> None:
    # 10 MB on 3G: 80 s of bytes, 100 s with the margin; 1 MB before the first chapter: 10 s.
    assert promise_bounds(1000, 10_000_000, 1_000_000) == Bounds(10.0, 100.0)
    # A device claiming a slower link than any class the service serves is judged as 3G.
    assert promise_bounds(8, 10_000_000, 1_000_000) == Bounds(10.0, 100.0)
    # On Wi-Fi the same book is a normal book.
    assert promise_bounds(20_000, 10_000_000, 1_000_000) == NORMAL


def test_verdicts() -> None:
    now = ORDERED + 200
    assert judge(receipt(), 0, now, NORMAL, "Emma").verdict == "kept"
    late = judge(receipt(complete=94.2), 0, now, NORMAL, "Emma")
    assert late.verdict == "broken"
    assert late.apology == "Your book 'Emma' took 94 s to arrive; we are sorry."
    slow_start = judge(receipt(first=6.25), 0, now, NORMAL, "Emma")
    assert slow_start.verdict == "broken"
    assert slow_start.apology is not None
    assert "first chapter of 'Emma' took 6.2 s" in slow_start.apology
    # A device clock 5 minutes slow: its times are moved by the offset measured on arrival.
    behind = receipt(complete=30.0 - 300, first=2.0 - 300)
    assert judge(behind, 300, now, NORMAL, "Emma").complete_s == pytest.approx(30.0)
    # Failing: pending while within the bound, broken after it, with the attempts counted.
    failing = receipt("failed", first=None, complete=None, retries=3)
    assert judge(failing, 0, ORDERED + 50, NORMAL, "Emma").verdict == "pending"
    stuck = judge(failing, 0, ORDERED + 94, NORMAL, "Emma")
    assert stuck.verdict == "broken"
    assert stuck.apology is not None
    assert "3 failed attempts" in stuck.apology
    # Bought while the device was out of coverage for 3 days: the clock starts on its return.
    away = 3 * 86400.0
    back = receipt(first=away + 1, complete=away + 20, link_up=away)
    assert judge(back, 0, ORDERED + away + 30, NORMAL, "Emma").complete_s == pytest.approx(20)
    assert judge(back, 0, ORDERED + away + 30, NORMAL, "Emma").verdict == "kept"
    # In contact since before the order: the clock starts at the order.
    assert judge(receipt(complete=70, link_up=-5), 0, now, NORMAL, "E").verdict == "broken"
    # A revision, or a book from before the device joined the account, starts no clock.
    for reason in ("revised", "archived"):
        assert judge(receipt(complete=500, reason=reason), 0, now, NORMAL, "E").verdict == (
            "not_promised"
        )


def test_a_failing_delivery_is_reported_once_a_promise_after_the_device_heard_of_it(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "device.db")
    try:
        store.set_meta("registered_at", "500")
        store.receipts.mark_link_up(900.0)  # the daemon started, or push connected
        bought = LibraryChange(
            seq=1, book_id="bk_a", action="add", reason="bought", version=2, at=600
        )
        old = LibraryChange(seq=2, book_id="bk_old", action="add", reason="bought", version=1, at=1)
        store.library.apply_library_changes([bought, old], cursor=2, now=1000.0)
        assert store.receipts.make_failed_receipts(1100.0, 60) == 0  # no failure yet
        assert store.receipts.has_open_deliveries(notified_since=400.0)
        assert not store.receipts.has_open_deliveries(notified_since=1000.0)
        for book_id in ("bk_a", "bk_old"):
            store.library.record_delivery_failure(
                book_id, "TransportError: HTTP 503", retry_at=1101.0
            )
        assert store.receipts.make_failed_receipts(1059.0, 60) == 0  # not yet due
        assert store.receipts.make_failed_receipts(1061.0, 60) == 2
        assert store.receipts.make_failed_receipts(1200.0, 60) == 0  # made once
        made = {r.book_id: r for r in store.receipts.unsent_receipts(10)}
        a = made["bk_a"]
        assert (a.outcome, a.version, a.retries, a.reason) == ("failed", 2, 1, "bought")
        assert a.receipt_id == "bk_a.v2.600000.failed"
        assert a.last_error == "TransportError: HTTP 503"
        assert a.link_up_at == 900.0  # in contact since before it heard of the order
        assert made["bk_old"].reason == "archived"  # ordered before the device joined
        ids = [r.receipt_id for r in made.values()]
        assert store.receipts.mark_sent(ids, {}, 1300.0) == 2
        assert store.receipts.unsent_receipts(10) == []
        assert store.receipts.receipt_status() == {
            "unsent": 0,
            "rejected": 0,
            "last_sent_at": 1300.0,
        }
        # The previous pull of the feed failed: the device was out of contact until this one.
        store.set_meta("last_sync_error", "TransportError: unreachable")
        store.receipts.mark_contact_lost(1900.0)  # as the library sync does
        back = LibraryChange(seq=3, book_id="bk_b", action="add", reason="sent", version=1, at=1500)
        store.library.apply_library_changes([back], cursor=3, now=2000.0)
        store.library.record_delivery_failure("bk_b", "StalledError: no byte", retry_at=2001.0)
        assert store.receipts.make_failed_receipts(2100.0, 60) == 1
        [b] = store.receipts.unsent_receipts(10)
        assert (b.book_id, b.link_up_at) == ("bk_b", 2000.0)
    finally:
        store.close()


async def test_the_service_judges_real_orders_only_and_each_receipt_once(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["cwa_christmas_carol.epub"]
    async with running_stub(corpus_stub_data, port=0) as stub:
        account = AccountClient(stub.url)
        await account.create_account("reader")
        key = x25519_public_text(X25519PrivateKey.generate())
        client = ServiceClient(stub.url, await account.register_device("r", key), ClientLimits())
        try:
            at = await account.buy(book_id)
            skew = -3600.0  # the device's clock is an hour slow: its times are moved back

            def doc(receipt_id: str, book: str, **fields: Any) -> dict[str, Any]:
                return {
                    "receipt_id": receipt_id,
                    "outcome": "complete",
                    "book_id": book,
                    "version": 1,
                    "reason": "seeded",  # the service uses its own reason: bought
                    "ordered_at": at,
                    "notified_at": at + skew + 0.1,
                    "link_up_at": at + skew - 100,
                    "started_at": at + skew + 0.2,
                    "first_chapter_at": at + skew + 1.0,
                    "completed_at": at + skew + 94.4,
                    "bytes_fetched": 1000,
                    "retries": 2,
                    "last_error": "StalledError: no byte for 10 s",
                    **fields,
                }

            batch = {
                "sent_at": time.time() + skew,
                "device": {"profile": "Kindle Keyboard 3G", "down_kbps": 1000},
                "receipts": [
                    doc(f"{book_id}.v1.1.complete", book_id),
                    doc("bk_forged.v1.1.complete", "bk_forged"),
                    doc("bk_bad.v1.1.complete", book_id, outcome="lost"),
                ],
            }
            answer = await client.send_receipts(batch)
            assert answer.acked == [f"{book_id}.v1.1.complete"]
            assert answer.rejected == {
                "bk_forged.v1.1.complete": "the service made no such order for this device",
                "bk_bad.v1.1.complete": "'outcome' must be 'complete' or 'failed'",
            }
            again = await client.send_receipts(batch)  # an answer lost: the same batch again
            assert again.acked == answer.acked
            page = await client.notices(0, 10)
            assert [n.message for n in page.notices] == [
                "Your book 'A Christmas Carol in Prose; Being a Ghost Story of Christmas' took 94 s"
                " to arrive; we are sorry."
            ]
            assert (await client.notices(page.cursor, 10)).notices == []
            report = await admin(stub.url, "GET", "/v1/admin/promises")
            assert (report["deliveries"], report["broken"]) == (1, 1)
            [broken] = report["broken_recent"]
            assert broken["complete_s"] == pytest.approx(94.4, abs=1)
            assert broken["retries"] == 2
            assert report["by_link_class"] == [
                {
                    "link_class": "Kindle Keyboard 3G",
                    "kept": 0,
                    "broken": 1,
                    "pending": 0,
                    "not_promised": 0,
                }
            ]
        finally:
            await client.close()


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return result


async def fault(url: str, **rule: Any) -> None:
    await admin(url, "POST", "/v1/admin/faults", {"rules": [rule]})


async def receipt_posts(url: str) -> list[dict[str, Any]]:
    log = (await admin(url, "GET", "/v1/admin/requests"))["requests"]
    return [r for r in log if r["path"] == "/v1/receipts"]


async def test_a_receipt_reaches_the_service_exactly_once_through_failed_sends(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    first_book = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    second_book = stub_corpus_import.book_ids["calibre_quick_start_eng.epub"]
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):

        async def deliveries() -> int:
            return int((await admin(stub.url, "GET", "/v1/admin/promises"))["deliveries"])

        # 1. The first send is refused: nothing stored, the receipt stays unsent, and goes again.
        await fault(stub.url, route="receipts", kind="error", status=503)
        await device.account.buy(first_book)
        await device.wait_complete(first_book)
        await until(lambda: _equals(deliveries(), 1))
        assert [r["status"] for r in await receipt_posts(stub.url)] == [503, 200]

        # 2. The service stores the receipt but its answer is lost: the device sends it again,
        # the service recognises the id, and nothing is counted twice.
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        await fault(stub.url, route="receipts", kind="truncate", after_bytes=0)
        await device.account.buy(second_book)
        await device.wait_complete(second_book)
        await until(lambda: _equals(deliveries(), 2))
        status = await until(_unsent_is(device.api.status, 0))
        posts = await receipt_posts(stub.url)
        assert [(r["status"], r["bytes"] > 0) for r in posts] == [(200, False), (200, True)]
        report = await admin(stub.url, "GET", "/v1/admin/promises")
        assert (report["deliveries"], report["kept"], report["broken"]) == (2, 2, 0)
        assert report["by_link_class"][0]["link_class"] == "Emulator (loopback)"
        assert status["receipts"]["rejected"] == 0
        # That a later round sends nothing more is checked on a fake clock instead of by a
        # sleep: tests/unit/test_worker_receipts.py.


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


def _unsent_is(
    status: Callable[[], Awaitable[dict[str, Any]]], expected: int
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    async def check() -> dict[str, Any] | None:
        report = await status()
        return report if report["receipts"]["unsent"] == expected else None

    return check


def shelfsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, check=False
    )


async def test_a_slow_delivery_breaks_the_promise_and_the_reader_gets_an_apology(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    # Its first chapter (518 KB) is too large to ride the purchase's push: it comes by Range.
    book_id = stub_corpus_import.book_ids["idpf_moby-dick.epub"]
    state = tmp_path / "d"
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, state) as device,
    ):
        # The package takes 5.5 s to answer: the first chapter cannot be readable within 5 s.
        await fault(stub.url, route="package", kind="delay", seconds=5.5)
        await device.account.buy(book_id)
        book = await device.wait_complete(book_id)
        assert book["first_chapter_at"] - book["ordered_at"] > 5.5

        notices = await until(_notices(device.api.get_json))
        [notice] = notices
        assert notice["kind"] == "apology"
        assert notice["book_id"] == book_id
        assert notice["title"] == "Moby-Dick"
        assert notice["message"].startswith("The first chapter of 'Moby-Dick' took 5.")
        assert notice["message"].endswith("(we promise 5.0 s); we are sorry.")

        report = await admin(stub.url, "GET", "/v1/admin/promises")
        assert (report["deliveries"], report["broken"], report["kept"]) == (1, 1, 0)
        [broken] = report["broken_recent"]
        assert broken["book_id"] == book_id
        assert broken["why"].startswith("first chapter after 5.")
        assert broken["apology"] == notice["message"]
        assert 5.5 < broken["first_chapter_s"] < 10

        running = await asyncio.to_thread(shelfsync, "status", "--state", str(state), "--json")
        assert running.returncode == 0, running.stderr
        assert json.loads(running.stdout)["notices"][0]["message"] == notice["message"]
        assert "power" in json.loads(running.stdout)
    stopped = await asyncio.to_thread(shelfsync, "status", "--state", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert f"): {notice['message']}" in stopped.stdout


def _notices(
    get_json: Callable[[str], Awaitable[Any]],
) -> Callable[[], Awaitable[list[dict[str, Any]] | None]]:
    async def check() -> list[dict[str, Any]] | None:
        notices: list[dict[str, Any]] = (await get_json("/v1/notices"))["notices"]
        return notices or None

    return check
