"""The daemon finds its database damaged at start (FAULTS.md #25): it sets the file aside, starts
on a new one, and the library comes back from the service, byte for byte."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from daemon.api.status import format_status
from server_stub.app import running_stub
from tests.integration.harness import running_device
from tests.integration.notes_helpers import BOOK_FILE
from tests.integration.test_delivery import assert_reads_back, book_id_of
from tests.unit.test_recovery import overwrite_page, pages_of


@pytest.mark.faults(25)
async def test_a_damaged_database_is_set_aside_and_the_library_comes_back_from_the_service(
    corpus_stub_data: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    book_id = book_id_of(corpus_dir / BOOK_FILE)
    state = tmp_path / "device"
    async with running_stub(corpus_stub_data, library_dir=None, port=0) as stub:
        async with running_device(stub.url, stub.public_key_text, state) as device:
            await device.account.buy(book_id)
            await device.wait_complete(book_id)
            account = device.account
        db = state / "shelfsync.db"
        overwrite_page(db, random.Random(7).choice(pages_of(db, ("frames",))), random.Random(7))

        async with running_device(stub.url, stub.public_key_text, state, account=account) as device:
            await device.wait_complete(book_id)
            await assert_reads_back(device.api, corpus_dir / BOOK_FILE)
            set_aside = (await device.api.status())["storage"]["set_aside"]
            assert set_aside["file"].startswith(str(db))
            assert set_aside["reason"]
            assert format_status(await device.api.status()).count("set aside") == 1
    # The damaged file, with its -wal and -shm beside it.
    [set_aside] = [p for p in state.glob(f"{db.name}.corrupt-*") if p.name[-1].isdigit()]
    assert set_aside.stat().st_size > 0
    assert list(state.glob(f"{db.name}.notes-*.json"))
