"""Packages are stored in chunks (server_stub/sql/0007): any range of a package reads back as
packaged, across chunk boundaries, whatever its size."""

from __future__ import annotations

import random
from pathlib import Path

from server_stub.store import Store
from server_stub.store.catalog import PACKAGE_CHUNK, NewVersion


def test_any_range_of_a_chunked_package_reads_back(tmp_path: Path) -> None:
    package = random.Random(1).randbytes(3 * PACKAGE_CHUNK + 123)
    store = Store.open(tmp_path)
    try:
        store.put_version(
            NewVersion("bk_chunks", 1, "Chunks", (), "en", b"{}", package, "0" * 64, "e", 1, "x"),
            at=1.0,
        )
        info = store.package_info("bk_chunks", 1)
        assert info is not None
        assert info.size == len(package)
        edges = [0, 1, PACKAGE_CHUNK - 1, PACKAGE_CHUNK, 2 * PACKAGE_CHUNK + 7, len(package) - 1]
        for start in edges:
            for length in (1, 100, PACKAGE_CHUNK, 2 * PACKAGE_CHUNK + 5, len(package)):
                wanted = package[start : start + length]
                assert store.read_package(info.rowid, start, len(wanted)) == wanted
    finally:
        store.close()
