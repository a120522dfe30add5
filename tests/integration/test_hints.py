"""The service's hints on a real device: buying book 1 of a series brings book 2 as likely
next, after the purchase and never in its way; it is the first to go when space runs short,
and buying it later makes it a purchase."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon.protocol.manifest import parse_manifest
from daemon.store import Store
from server_stub.app import running_stub
from server_stub.faults import FAULTS
from tests.conftest import StubImport, import_into_stub
from tests.integration.harness import admin, running_device
from tests.integration.test_delivery import assert_reads_back
from tests.integration.test_planning import ALICE, MOBY, WELLS, profile_with
from tests.integration.test_push_fallback import until
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
            assert store.frames.books_bytes() <= 2 * 1024 * 1024
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


async def test_a_hint_downloading_when_a_purchase_arrives_pauses_and_resumes_after_it(
    tmp_path: Path,
    series_data: Path,
    series_catalog: StubImport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shelfsync.delivery")
    ids = series_catalog.book_ids
    library = series_catalog.report.imported[0].path.parent
    async with (
        running_stub(series_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        faults = stub.app[FAULTS]
        hint = parse_manifest(stub.store.manifest_template(ids[ALICE], 1) or b"", template=True)
        bought = parse_manifest(stub.store.manifest_template(ids[WELLS], 1) or b"", template=True)
        # Each package stops after a few frames until released: the purchase (book 1) first,
        # then the hint it brings (book 2), which is mid-download when the next purchase comes.
        cut = hint.frames[len(hint.frames) // 2].offset
        assert cut < bought.package_size
        rule = {"route": "package", "kind": "pause", "after_bytes": cut, "times": 2}
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [rule]})
        await device.account.buy(ids[WELLS])
        await until(lambda: faults.paused == 1)
        await admin(stub.url, "POST", "/v1/admin/release")
        await device.wait_complete(ids[WELLS])
        await until(lambda: faults.paused == 1)  # the hint's package, held mid-way
        partial = await device.wait_for(ids[ALICE], lambda b: b["frames_held"] > 0)
        assert partial["reason"] == "series_next"

        # The purchase arrives, and is itself held mid-way so the pause can be looked at.
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [{**rule, "times": 1}]})
        await device.account.buy(ids[MOBY])
        await until(lambda: faults.paused == 2)
        paused = await device.book_state(ids[ALICE])
        assert paused is not None
        held = paused["frames_held"]
        assert 0 < held < len(hint.frames)
        assert paused["state"] == "downloading", paused  # not a failure: no backoff, no error
        assert paused["last_error"] is None
        waiting = device.daemon.runtime()["waiting"]
        assert waiting[ids[ALICE]] == "paused: a new purchase is downloading", waiting
        assert any(
            "delivery_paused" in r.getMessage() and ids[ALICE] in r.getMessage()
            for r in caplog.records
        )

        await admin(stub.url, "POST", "/v1/admin/release")
        purchase = await device.wait_complete(ids[MOBY])
        book = await device.wait_complete(ids[ALICE])
        assert book["completed_at"] >= purchase["completed_at"]
        await assert_reads_back(device.api, library / ALICE)
        log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]

    def package(book_id: str) -> list[dict[str, Any]]:
        return sorted(
            (r for r in log if r["path"].endswith(f"/{book_id}/versions/1/package")),
            key=lambda r: r["at"],
        )

    first, *resumed = package(ids[ALICE])
    assert first["range"].startswith("bytes=0-")
    # The hint resumed after the purchase's package, at its first missing frame: no frame
    # committed before the pause came down again.
    assert resumed, log
    assert resumed[0]["at"] > package(ids[MOBY])[-1]["at"]
    starts = [int(r["range"].removeprefix("bytes=").split("-")[0]) for r in resumed]
    assert starts[0] == hint.frames[held].offset, (starts, held)
    assert all(start >= hint.frames[held].offset for start in starts)
    assert not [r for r in caplog.records if "delivery_failed" in r.getMessage()]
