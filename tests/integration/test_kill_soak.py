"""A real daemon SIGKILLed at random times while notes are saved and books download (FAULTS.md
#1, #2, #3): not one acknowledged note lost, the database whole, every book read back exact.

Only with SHELFSYNC_KILL_SOAK=<kills> (`python -m bench faults --soak` sets it): each kill costs a
daemon start, so CI runs the named kill points (test_kill.py, test_annotation_kills.py) instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

import aiohttp
import pytest

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.notes.store import NotesStore
from daemon.store import Store
from server_stub.app import running_stub
from tests.conftest import import_into_stub
from tests.integration.harness import spawn_daemon
from tests.integration.notes_helpers import BOOK_FILE, anchor
from tests.integration.test_annotation_kills import serving, stop
from tests.integration.test_delivery import assert_reads_back
from tests.reliability import Figures

KILLS = int(os.environ.get("SHELFSYNC_KILL_SOAK", "0"))
SEED = int(os.environ.get("SHELFSYNC_FAULTS_SEED", "20261203"))
LARGE_BOOKS = 3  # the corpus's largest: downloads long enough to be cut many times


async def write_notes(
    api: LocalApiClient, book_id: str, acked: list[str], run: int, stop_writing: asyncio.Event
) -> None:
    """Save notes one after another; an id goes in `acked` only once the API answered 201."""
    i = 0
    while not stop_writing.is_set():
        note_id = f"an_soak{run:05d}x{i:04d}"
        body = {"id": note_id, "kind": "note", "anchor": anchor(), "note": f"soak {run} {i}"}
        try:
            status, _ = await api.send("POST", f"/v1/books/{book_id}/annotations", body)
        except (aiohttp.ClientError, OSError):
            return  # killed: this one was never acknowledged
        if status == 201:
            acked.append(note_id)
        i += 1


@pytest.mark.faults(1, 2, 3)
@pytest.mark.skipif(KILLS <= 0, reason="a soak: set SHELFSYNC_KILL_SOAK=<kills> (bench --soak)")
async def test_random_sigkills_during_note_saves_and_downloads_lose_nothing(
    tmp_path: Path, corpus_dir: Path, fault_figures: Figures
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    largest = sorted(corpus_dir.glob("*.epub"), key=lambda p: p.stat().st_size)[-LARGE_BOOKS:]
    for path in {corpus_dir / BOOK_FILE, *largest}:
        shutil.copy(path, library / path.name)
    report = await asyncio.to_thread(import_into_stub, tmp_path / "stub", library)
    books = {b.path.name: b.book_id for b in report.imported}
    note_book = books[BOOK_FILE]
    rng = random.Random(SEED)
    state = tmp_path / "device"
    acked: list[str] = []
    async with running_stub(tmp_path / "stub") as stub:
        account = AccountClient(stub.url)
        await account.create_account("soak")
        await account.buy(note_book)
        for run in range(KILLS + 1):
            daemon = await spawn_daemon(stub, state, account.account_token, None)
            async with LocalApiClient(state / "api.sock") as api:
                await serving(api, daemon)
                if run == 0:  # notes need their book on the device; the large ones then come
                    while not any(b["book_id"] == note_book for b in await api.library()):
                        await asyncio.sleep(0.01)
                    for name, book_id in books.items():
                        if name != BOOK_FILE:
                            await account.buy(book_id)
                if run == KILLS:
                    break  # the last run is the clean one, checked below
                stop_writing = asyncio.Event()
                writer = asyncio.create_task(write_notes(api, note_book, acked, run, stop_writing))
                await asyncio.sleep(rng.uniform(0.05, 1.5))
                daemon.kill()
                await daemon.communicate()
                stop_writing.set()
                await writer
        try:
            async with LocalApiClient(state / "api.sock") as api:
                for _ in range(12_000):
                    entries = {b["book_id"]: b for b in await api.library()}
                    if all(entries.get(b, {}).get("state") == "complete" for b in books.values()):
                        break
                    await asyncio.sleep(0.05)
                for name in books:
                    await assert_reads_back(api, library / name)
        finally:
            await stop(daemon)
    store = Store.open(state / "shelfsync.db")
    assert store.integrity_check() == "ok"
    store.close()
    notes = NotesStore.open(state / "shelfsync.db")
    lost = [note_id for note_id in acked if notes.item(note_id) is None]
    notes.close()
    fault_figures.record(runs=KILLS, lost_notes=len(lost), wrong_resources=0)
    assert not lost
    assert len(acked) > 0
