"""A hostile or broken service against a running daemon (issue 24): the stub, with its fault
rules or with forged library changes, answers the way a compromised service or a hostile
network would; the daemon gives up what cannot succeed, backs off, says why in status, and a
purchase made meanwhile still arrives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.client import AccountClient
from daemon.profile import PROFILES_DIR
from daemon.store import Store
from server_stub.app import HUB, RunningStub
from tests.conftest import StubImport
from tests.integration.harness import admin, running_device
from tests.reliability import Figures

BOOK = "cwa_christmas_carol.epub"


def quick_stall_profile(tmp_path: Path) -> Path:
    """The loopback profile with a 2 s stall timeout, so that a given-up drip takes seconds."""
    text = (PROFILES_DIR / "emulator-loopback.toml").read_text(encoding="utf-8")
    text = text.replace("stall_timeout_s = 10 ", "stall_timeout_s = 2 ")
    assert "stall_timeout_s = 2 " in text
    path = tmp_path / "quick-stall.toml"
    path.write_text(text, encoding="utf-8")
    return path


def at(record: dict[str, Any]) -> float:
    return float(record["at"])


async def requests_to(stub: RunningStub, suffix: str) -> list[dict[str, Any]]:
    log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
    return [r for r in log if r["path"].endswith(suffix)]


@pytest.mark.faults(11)
async def test_a_drip_on_the_feed_and_the_manifest_is_given_up_and_the_purchase_arrives(
    faulty_stub: RunningStub,
    stub_corpus_import: StubImport,
    tmp_path: Path,
    fault_figures: Figures,
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    # Bought before the device starts: a purchase made while it runs comes with its manifest on
    # the push (issue 17), and this is about the feed and the manifest it pulls.
    account = AccountClient(faulty_stub.url)
    await account.create_account("test reader")
    await account.buy(book_id)
    # Two bytes a second: every read gets a byte well within the per-read timeout, so only
    # a minimum rate over the whole exchange gives these requests up.
    drip = {"kind": "drip", "seconds": 0.5, "times": 1}
    rules = [{**drip, "route": "changes"}, {**drip, "route": "manifest"}]
    await admin(faulty_stub.url, "POST", "/v1/admin/faults", {"rules": rules})
    async with running_device(
        faulty_stub.url,
        faulty_stub.public_key_text,
        tmp_path / "device",
        profile=str(quick_stall_profile(tmp_path)),
        account=account,
    ) as device:
        await device.wait_complete(book_id, timeout_s=60)
    for route in ("/library/changes", "/manifest"):
        # By arrival: a given-up drip is logged when the stub notices, maybe after the retry.
        sent = [r["bytes"] for r in sorted(await requests_to(faulty_stub, route), key=at)]
        assert min(sent) < 10, f"{route}: no drip given up ({sent})"  # every body is longer
        assert sent[-1] >= 10, f"{route}: never asked again after the drip"
    fault_figures.record(runs=2, wrong_resources=0)


@pytest.mark.faults(7, 22)
async def test_an_update_to_a_version_the_service_lacks_backs_off_and_says_why(
    faulty_stub: RunningStub, stub_corpus_import: StubImport, tmp_path: Path
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    state = tmp_path / "device"
    key = faulty_stub.public_key_text
    async with running_device(faulty_stub.url, key, state) as device:
        await device.account.buy(book_id)
        await device.wait_complete(book_id)
        # The feed is unsigned: a forged (or premature) entry says version 99 is out.
        account_id = faulty_stub.store.account_for_token(device.account.account_token)
        assert account_id is not None
        forged = faulty_stub.store._append_change(
            account_id, None, book_id, "update", "revised", 99, time.time()
        )
        await faulty_stub.app[HUB].notify(account_id, None, forged.seq)
        book = await device.wait_for(book_id, lambda b: b["retries"] >= 3)
        assert book["state"] == "retrying"
        assert "version 99" in book["last_error"]
        # One manifest request per attempt, each after its backoff (it once looped: 2,966
        # requests in 30 s); the book read in version 1 meanwhile stays readable.
        attempts = await requests_to(faulty_stub, "/manifest")
        assert len(attempts) - 1 <= book["retries"] + 1  # the purchase's own, then the retries
        assert book["readable"]
        account = device.account
    async with running_device(faulty_stub.url, key, state, account=account) as device:
        book = await device.book_state(book_id)
        assert book is not None
        assert book["state"] == "retrying"  # after a restart too, and status says why
        assert "version 99" in book["last_error"]


@pytest.mark.faults(22)
async def test_a_cursor_forged_past_the_feed_rewinds_and_later_purchases_still_arrive(
    faulty_stub: RunningStub, stub_corpus_import: StubImport, tmp_path: Path
) -> None:
    """A forged page can be consistent: one change at seq 10^15 with the cursor there. Once
    stored, every pull asked for changes after 10^15 and no purchase arrived again (issue 24
    #3); the service now says where its feed ends, and the device pulls again from 0."""
    book_id = stub_corpus_import.book_ids[BOOK]
    async with running_device(
        faulty_stub.url, faulty_stub.public_key_text, tmp_path / "device"
    ) as device:
        while (await device.api.status())["last_sync_at"] is None:
            await asyncio.sleep(0.02)  # the first pull is done: nothing overwrites the cursor
        store = Store.open(device.daemon.settings.db_path)
        try:
            store.set_meta("library_cursor", str(10**15))  # what the forged page left
            await device.account.buy(book_id)
            await device.wait_complete(book_id)
            assert store.library.library_cursor() < 10**15
        finally:
            store.close()
