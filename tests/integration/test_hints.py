"""The service's hints on a real device: buying book 1 of a series brings book 2 as likely
next, after the purchase and never in its way; it is the first to go when space runs short,
and buying it later makes it a purchase."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.store import Store
from server_stub.app import running_stub
from tests.conftest import StubImport, import_into_stub
from tests.integration.harness import admin, running_device
from tests.integration.test_delivery import assert_reads_back
from tests.integration.test_planning import ALICE, MOBY, WELLS, profile_with
from tests.stub.helpers import with_series

SERIES = "Voyages Extraordinaires"


@pytest.fixture(scope="module")
def series_catalog(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> StubImport:
    """Wells is book 1 of a series, Alice book 2 (calibre's metadata); Moby-Dick has none."""
    library = tmp_path_factory.mktemp("series-library")
    with_series(corpus_dir / WELLS, library / WELLS, SERIES, "1")
    with_series(corpus_dir / ALICE, library / ALICE, SERIES, "2", "calibre")
    shutil.copy(corpus_dir / MOBY, library / MOBY)
    data_dir = tmp_path_factory.mktemp("series-data")
    report = import_into_stub(data_dir, library)
    assert not report.refused, report.refused
    return StubImport(data_dir, report, {b.path.name: b.book_id for b in report.imported})


@pytest.fixture
def series_data(tmp_path: Path, series_catalog: StubImport) -> Path:
    return Path(shutil.copytree(series_catalog.data_dir, tmp_path / "stub-data"))


async def test_the_next_book_of_a_series_comes_after_the_purchase_and_goes_first(
    tmp_path: Path, series_data: Path, series_catalog: StubImport
) -> None:
    ids = series_catalog.book_ids
    library = series_catalog.report.imported[0].path.parent
    profile = profile_with(tmp_path, quota_mb=2, reserve_mb=0)  # 2 MiB: two of the three books
    async with (
        running_stub(series_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", profile=profile) as device,
    ):
        await device.account.buy(ids[WELLS])
        hint = await device.wait_complete(ids[ALICE])
        bought = await device.wait_complete(ids[WELLS])
        assert hint["reason"] == "series_next"
        # Heard of in the same page as the purchase, on a device with four download slots,
        # the hint still waited until the purchase was whole: it never shared its link.
        assert hint["started_at"] >= bought["completed_at"]
        await assert_reads_back(device.api, library / ALICE)

        # Space runs short: the hint the reader never opened goes, not the older purchase.
        await device.account.buy(ids[MOBY])
        await device.wait_complete(ids[MOBY])
        await device.wait_for(ids[ALICE], lambda b: b["state"] == "evicted")
        assert (await device.book_state(ids[WELLS]) or {})["state"] == "complete"
        await assert_reads_back(device.api, library / WELLS)

        # The reader buys it after all: a new purchase, so it comes back (making room).
        await device.account.buy(ids[ALICE])
        book = await device.wait_complete(ids[ALICE])
        assert book["reason"] == "bought"
        await assert_reads_back(device.api, library / ALICE)
        store = Store.open(device.daemon.settings.db_path, readonly=True)
        try:
            assert store.books_bytes() <= 2 * 1024 * 1024
        finally:
            store.close()


async def test_buying_a_hint_already_on_the_device_delivers_it_at_once(
    tmp_path: Path, series_data: Path, series_catalog: StubImport
) -> None:
    ids = series_catalog.book_ids
    async with (
        running_stub(series_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        await device.account.buy(ids[WELLS])
        await device.wait_complete(ids[ALICE])
        await admin(stub.url, "DELETE", "/v1/admin/requests")

        await device.account.buy(ids[ALICE])
        book = await device.wait_for(ids[ALICE], lambda b: b["reason"] == "bought")
        assert book["state"] == "complete"
        assert book["completed_at"] is not None
        requests = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        assert not [r for r in requests if ids[ALICE] in r["path"]], requests
        # The device reports the purchase delivered, and the service counts a promise kept.
        for _ in range(200):
            report = await admin(stub.url, "GET", "/v1/admin/promises")
            if report["kept"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert (report["kept"], report["broken"]) == (2, 0), report
