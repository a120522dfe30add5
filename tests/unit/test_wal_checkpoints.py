"""Who copies the -wal into the database: the writer itself, or the store's checkpointer thread
(daemon.store.database.WalCheckpointer); either way the -wal is then started over, cut back
(kept whole while a download runs)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from daemon.store import Store
from daemon.store.database import (
    PAGE_BYTES,
    WAL_CHECKPOINT_PAGES,
    WAL_KEPT_BYTES,
    WAL_KEPT_DOWNLOADING_BYTES,
)

BLOB_BYTES = 1 << 20  # a media frame's size
BLOB_PAGES = BLOB_BYTES // PAGE_BYTES
WAL_FRAME_BYTES = PAGE_BYTES + 24  # a page in the -wal, with its frame header


def write_blobs(store: Store, count: int) -> int:
    """`count` commits of one incompressible blob each; the bytes written."""
    for _ in range(count):
        data = os.urandom(BLOB_BYTES)
        store.frames.put_dictionary(hashlib.sha256(data).hexdigest(), data)
    return count * BLOB_BYTES


def wal_bytes(store: Store) -> int:
    return os.path.getsize(f"{store.path}-wal")


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wal checkpointer"]


def test_without_a_checkpointer_the_writer_checkpoints_past_the_threshold(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "shelfsync.db")
    try:
        write_blobs(store, WAL_CHECKPOINT_PAGES * PAGE_BYTES // BLOB_BYTES + 2)
        # Copied at the commit that crossed the threshold, before that commit returned.
        assert os.path.getsize(store.path) >= (WAL_CHECKPOINT_PAGES - 2 * BLOB_PAGES) * PAGE_BYTES
        assert wal_bytes(store) <= (WAL_CHECKPOINT_PAGES + 2 * BLOB_PAGES) * (WAL_FRAME_BYTES)
    finally:
        store.close()


def test_while_downloading_a_wal_started_over_keeps_its_length_then_is_cut_back_again(
    tmp_path: Path,
) -> None:
    """Written over in place, its pages stay in the page cache: cut back at every start, each
    round of frames had them allocated afresh."""
    a_round = WAL_CHECKPOINT_PAGES * PAGE_BYTES // BLOB_BYTES + 1  # checkpointed at its last
    store = Store.open(tmp_path / "shelfsync.db")
    try:
        with store.downloading():
            write_blobs(store, a_round)
            grown = wal_bytes(store)
            assert WAL_KEPT_BYTES < grown < WAL_KEPT_DOWNLOADING_BYTES
            write_blobs(store, 1)  # starts the -wal over
            assert wal_bytes(store) == grown
        for _ in range(a_round + 1):  # until checkpointed and started over
            write_blobs(store, 1)
            if wal_bytes(store) < grown:
                break
        assert wal_bytes(store) <= WAL_KEPT_BYTES + 2 * BLOB_PAGES * WAL_FRAME_BYTES
    finally:
        store.close()


def test_a_checkpointer_copies_the_wal_on_its_thread_until_the_store_closes(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "shelfsync.db")
    try:
        store.checkpoint_in_background()
        assert checkpointer_threads() == []  # not before the first checkpoint is due
        written = write_blobs(store, 2 * WAL_CHECKPOINT_PAGES * PAGE_BYTES // BLOB_BYTES)
        assert len(checkpointer_threads()) == 1
        # Once the thread has copied it all, the next commit starts the -wal over, cut back.
        deadline = time.monotonic() + 30
        while wal_bytes(store) > WAL_KEPT_BYTES:
            assert time.monotonic() < deadline, "the checkpointer never copied the -wal"
            time.sleep(0.01)
            store.set_meta("poke", str(time.monotonic()))
        assert os.path.getsize(store.path) >= written
    finally:
        store.close()
    assert checkpointer_threads() == []
    reopened = Store.open(tmp_path / "shelfsync.db")
    try:
        assert reopened.integrity_check() == "ok"
    finally:
        reopened.close()
