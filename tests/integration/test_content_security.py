"""Content at rest: a wrong dictionary, bytes altered on the device, a removed book's space."""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw
import pytest

from daemon.protocol.manifest import parse_manifest
from server_stub.app import RunningStub
from tests.conftest import StubImport
from tests.integration.harness import Device, admin, running_device
from tests.integration.test_delivery import assert_reads_back

SMALL = "calibre_quick_start_eng.epub"  # small frames of markup: the dictionary wins here
BIG = "idpf_moby-dick.epub"


@pytest.fixture
def stub(faulty_stub: RunningStub) -> RunningStub:
    return faulty_stub


@pytest.fixture
def device(corpus_device: Device) -> Device:
    return corpus_device


@pytest.mark.faults(19)
async def test_a_dictionary_that_does_not_match_its_hash_is_refused(
    stub: RunningStub, stub_corpus_import: StubImport, corpus_dir: Path, tmp_path: Path
) -> None:
    book_id = stub_corpus_import.book_ids[SMALL]
    template = stub.store.manifest_template(book_id, 1)
    assert template is not None
    assert parse_manifest(template, template=True).dictionary is not None
    # Corrupt twice: when the push channel's hello names it (fetched while idle), and when the
    # purchase then needs it.
    await admin(
        stub.url,
        "POST",
        "/v1/admin/faults",
        {"rules": [{"route": "dictionary", "kind": "corrupt", "at_byte": 5000, "times": 2}]},
    )
    async with running_device(stub.url, stub.public_key_text, tmp_path / "fresh") as device:
        while not any(
            r["path"].startswith("/v1/dictionaries/")
            for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        ):
            await asyncio.sleep(0.01)
        await device.account.buy(book_id)

        refused = await device.wait_for(
            book_id, lambda b: "DictionaryError" in (b["last_error"] or "")
        )
        assert refused["version"] is None  # nothing of that manifest was stored
        await device.wait_complete(book_id, timeout_s=30)
        await assert_reads_back(device.api, corpus_dir / SMALL)


@pytest.mark.faults(21)
async def test_bytes_altered_on_the_device_are_never_served_and_are_fetched_again(
    device: Device, stub_corpus_import: StubImport, corpus_dir: Path
) -> None:
    book_id = stub_corpus_import.book_ids[BIG]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    details = await device.api.book(book_id)
    chapter = details["first_chapter"]

    # Someone with the flash in hand flips a byte of the frame that holds the first chapter.
    db = apsw.Connection(str(device.daemon.settings.db_path))
    try:
        idx, data = next(
            db.execute(
                "SELECT f.idx, f.data FROM frames f JOIN resources r ON r.book_id = f.book_id"
                " AND r.version = f.version AND f.idx = r.first_frame WHERE r.path = ?",
                (chapter,),
            )
        )
        tampered = bytearray(data)
        tampered[len(tampered) // 2] ^= 0x40
        with db:
            db.execute(
                "UPDATE frames SET data = ? WHERE book_id = ? AND idx = ?",
                (bytes(tampered), book_id, idx),
            )
    finally:
        db.close()

    status, _, body = await device.api.resource(book_id, chapter)
    assert status == 500
    assert b"corrupt_on_device" in body
    book = await device.wait_for(
        book_id, lambda b: b["state"] == "complete" and b["retries"] == 0 and b["bytes_fetched"] > 0
    )
    assert book["frames_held"] == book["frames_total"]
    await assert_reads_back(device.api, corpus_dir / BIG)


def database_bytes(db_path: Path) -> tuple[int, int]:
    """(bytes of the database's pages but the shared dictionaries, frames stored)."""
    db = apsw.Connection(str(db_path))
    try:
        pages = db.execute("PRAGMA page_count").fetchall()[0][0]
        page_size = db.execute("PRAGMA page_size").fetchall()[0][0]
        frames = db.execute("SELECT count(*) FROM frames").fetchall()[0][0]
        shared = db.execute("SELECT total(length(data)) FROM dictionaries").fetchall()[0][0]
        return pages * page_size - int(shared), frames
    finally:
        db.close()


async def test_a_returned_book_leaves_the_device_and_frees_its_space(
    device: Device, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BIG]
    db_path = device.daemon.settings.db_path
    empty, _ = database_bytes(db_path)
    await device.account.buy(book_id)
    book = await device.wait_complete(book_id)
    full, frames = database_bytes(db_path)
    assert frames == book["frames_total"]
    assert full - empty > book["package_size"]

    await device.account.return_book(book_id)
    await device.wait_removed(book_id)
    status, _, _ = await device.api.resource(book_id, "META-INF/container.xml")
    assert status == 404
    after, frames = database_bytes(db_path)
    assert frames == 0
    assert after - empty < 64 * 1024  # the space went back, but for a few rows of bookkeeping
