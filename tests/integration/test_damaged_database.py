"""The daemon finds its database damaged (FAULTS.md #25, issue 21 #10): whatever page is
overwritten it starts and serves; a damaged database is set aside and the library comes back
from the service, a damaged frame is fetched again, never a wrong byte served."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from daemon.api.client import LocalApiClient
from daemon.api.status import format_status
from server_stub.app import running_stub
from server_stub.epub import read_epub
from tests.integration.harness import running_device
from tests.integration.notes_helpers import BOOK_FILE, eventually
from tests.integration.test_delivery import book_id_of
from tests.unit.test_recovery import overwrite_page, pages_of

# (tables whose pages one is drawn from, None for any page but the header; the seed)
VARIANTS = [
    (("frames",), 7),
    (("frames",), 21),
    (("frames",), 33),
    (("library", "deliveries"), 3),
    (("manifests", "resources"), 5),
    (None, 9),
    (None, 12),
]


async def read_back_eventually(api: LocalApiClient, epub_path: Path) -> None:
    """Every resource comes back byte for byte; until then it is refused by name (a damaged
    frame being fetched again), never answered with other bytes."""
    epub = read_epub(epub_path)
    book_id = book_id_of(epub_path)
    for original in epub.files:

        async def served(path: str = original.path) -> bytes | None:
            status, _, body = await api.resource(book_id, path)
            if status == 200:
                return body
            assert (status, b"corrupt_on_device" in body or status == 503) == (status, True)
            return None

        assert await eventually(served, 60) == original.data, original.path


@pytest.mark.faults(25)
@pytest.mark.parametrize(("tables", "seed"), VARIANTS)
async def test_a_damaged_page_never_stops_the_daemon_and_every_book_comes_back(
    corpus_stub_data: Path,
    corpus_dir: Path,
    tmp_path: Path,
    tables: tuple[str, ...] | None,
    seed: int,
) -> None:
    book_id = book_id_of(corpus_dir / BOOK_FILE)
    state = tmp_path / "device"
    async with running_stub(corpus_stub_data, library_dir=None, port=0) as stub:
        async with running_device(stub.url, stub.public_key_text, state) as device:
            await device.account.buy(book_id)
            await device.wait_complete(book_id)
            account = device.account
        db = state / "shelfsync.db"
        rng = random.Random(seed)
        overwrite_page(db, rng.choice(pages_of(db, tables)), rng)

        async with running_device(stub.url, stub.public_key_text, state, account=account) as device:
            await device.wait_complete(book_id)  # listed again, from the service if set aside
            await read_back_eventually(device.api, corpus_dir / BOOK_FILE)
            await device.wait_complete(book_id)
            status = await device.api.status()
    # A damaged file, with its -wal and -shm beside it.
    set_aside = [p for p in state.glob(f"{db.name}.corrupt-*") if p.name[-1].isdigit()]
    marker = status["storage"]["set_aside"]
    if set_aside:
        assert marker["file"] == str(set_aside[0])
        assert marker["reason"]
        assert format_status(status).count("set aside") == 1
        assert list(state.glob(f"{db.name}.notes-*.json"))
    else:  # quick_check found the structure whole: the damage was in a frame's own bytes
        assert marker is None
