"""The store: migrations, frame-by-frame commits, milestones, removal, read-back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import apsw
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from daemon.content.plan import is_fresh
from daemon.content.reader import FrameOpener, read_resource
from daemon.errors import (
    FrameAuthError,
    FrameHashError,
    KeyUnwrapError,
    SchemaTooNewError,
    StoreError,
)
from daemon.models import LibraryChange
from daemon.protocol.crypto import FRAME_AAD
from daemon.store import Store
from daemon.store.database import latest_schema_version
from tests.builders import DEVICE_KEY, NOW, make_manifest


def opener() -> FrameOpener:
    return FrameOpener(DEVICE_KEY, 1 << 23)  # fresh per test: it caches content keys


FILES = [
    ("OEBPS/ch1.xhtml", b"<p>one</p>" * 3000),
    ("OEBPS/ch2.xhtml", b"<p>two</p>" * 3000),
    ("OEBPS/ch3.xhtml", b"<p>three</p>" * 3000),
]


def bought(book_id: str = "bk_test", seq: int = 1, action: str = "add") -> LibraryChange:
    return LibraryChange(seq, book_id, action, "bought", 1, NOW)


def frames_of(package: bytes, manifest_frames: tuple) -> list[bytes]:  # type: ignore[type-arg]
    return [package[f.offset : f.offset + f.length] for f in manifest_frames]


def test_a_new_database_is_private_and_at_the_latest_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state" / "db")
    assert store.schema_version() == latest_schema_version()
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    store.close()
    reopened = Store.open(tmp_path / "state" / "db")  # reopen: nothing re-run
    assert reopened.schema_version() == latest_schema_version()


def schema(path: Path) -> list[tuple[str, str]]:
    db = apsw.Connection(str(path))
    try:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        db.close()


@pytest.mark.parametrize("folder", ["daemon/sql", "server_stub/sql"])
def test_migrations_are_numbered_once_each_from_one(folder: str) -> None:
    """Two branches that each add migration 11 would apply one of them and skip the other on
    every device already past it: numbers are unique and leave no gap."""
    root = Path(__file__).resolve().parents[2] / folder
    numbers = sorted(int(p.name.split("_", 1)[0]) for p in root.glob("*.sql"))
    assert numbers == list(range(1, len(numbers) + 1))


def test_a_version_1_database_migrates_to_the_fresh_schema(tmp_path: Path) -> None:
    old = apsw.Connection(str(tmp_path / "old.db"))
    old.execute((Path(__file__).parents[2] / "daemon" / "sql" / "0001_init.sql").read_text())
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO meta (key, value) VALUES ('library_cursor', '42')")
    old.close()
    migrated = Store.open(tmp_path / "old.db")
    assert migrated.schema_version() == latest_schema_version()
    assert migrated.library.library_cursor() == 42
    migrated.close()
    Store.open(tmp_path / "fresh.db").close()
    assert schema(tmp_path / "old.db") == schema(tmp_path / "fresh.db")


def test_a_database_from_a_newer_shelfsync_is_refused(tmp_path: Path) -> None:
    db = apsw.Connection(str(tmp_path / "db"))
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SchemaTooNewError, match="schema version 99"):
        Store.open(tmp_path / "db")


def test_frames_commit_one_by_one_and_milestones_are_recorded(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    manifest, package = make_manifest(FILES)
    store.library.apply_library_changes([bought()], 1, NOW + 1)
    store.frames.record_manifest(manifest, b"envelope", NOW + 2)
    frames = frames_of(package, manifest.frames)
    assert [f.idx for f in store.frames.missing_frames("bk_test", 1)] == [0, 1, 2]

    first = store.frames.commit_frame("bk_test", 1, 0, frames[0], NOW + 3)
    assert (first.first_chapter_ready, first.complete) == (True, False)
    assert (
        store.frames.commit_frame("bk_test", 1, 0, frames[0], NOW + 3).first_chapter_ready is False
    )
    [book] = store.views.library_view()
    assert (book["state"], book["readable"], book["frames_held"]) == ("downloading", True, 1)

    store.frames.commit_frame("bk_test", 1, 1, frames[1], NOW + 4)
    assert store.frames.commit_frame("bk_test", 1, 2, frames[2], NOW + 5).complete
    [book] = store.views.library_view()
    assert book["state"] == "complete"
    assert (book["first_chapter_at"], book["completed_at"]) == (NOW + 3, NOW + 5)
    for path, data in FILES:
        resource = store.frames.resource("bk_test", path)
        assert resource is not None
        assert read_resource(store, resource, opener()) == data
    assert store.library.delivery_candidates() == []


def test_a_removed_book_leaves_but_its_trusted_version_stays(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    manifest, package = make_manifest(FILES, version=4)
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(manifest, b"envelope", NOW)
    assert store.library.apply_library_changes([bought(seq=2, action="remove")], 2, NOW) == [
        "bk_test"
    ]
    assert store.views.library_view() == []
    assert store.frames.resource("bk_test", "OEBPS/ch1.xhtml") is None
    assert store.frames.trusted_version("bk_test") == 4
    with pytest.raises(StoreError, match="no longer held"):
        store.frames.commit_frame("bk_test", 4, 0, package[:10], NOW)


def test_a_page_applied_twice_changes_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    store.library.apply_library_changes([bought(seq=5)], 5, NOW)
    store.library.apply_library_changes([bought(seq=6, action="remove")], 6, NOW)
    store.library.apply_library_changes([bought(seq=5)], 6, NOW)  # replayed old page
    assert store.views.library_view() == []
    assert store.library.library_cursor() == 6


def test_a_new_version_reuses_unchanged_frames_and_replaces_the_old(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    v1, package1 = make_manifest(FILES)
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(v1, b"e1", NOW)
    for i, data in enumerate(frames_of(package1, v1.frames)):
        store.frames.commit_frame("bk_test", 1, i, data, NOW)
    revised = [FILES[0], ("OEBPS/ch2.xhtml", b"<p>TWO</p>" * 3000), FILES[2]]
    v2, package2 = make_manifest(revised, version=2)
    store.frames.record_manifest(v2, b"e2", NOW)
    assert [f.idx for f in store.frames.missing_frames("bk_test", 2)] == [1]
    assert store.frames.readable_version("bk_test") == 1  # the old one reads until the new is whole
    store.frames.commit_frame("bk_test", 2, 1, frames_of(package2, v2.frames)[1], NOW)
    assert store.frames.readable_version("bk_test") == 2
    assert store.frames.frame_hashes("bk_test", 1) is None
    resource = store.frames.resource("bk_test", "OEBPS/ch2.xhtml")
    assert resource is not None
    assert read_resource(store, resource, opener()) == revised[1][1]


@pytest.mark.faults(19)
def test_a_frame_sealed_for_another_book_is_never_served(tmp_path: Path) -> None:
    """Its hash matches the (signed) manifest, but the AEAD binds it to the other book."""
    store = Store.open(tmp_path / "db")
    manifest, package = make_manifest(FILES[:1], sealed_for="bk_other")
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(manifest, b"envelope", NOW)
    store.frames.commit_frame("bk_test", 1, 0, package, NOW)
    resource = store.frames.resource("bk_test", FILES[0][0])
    assert resource is not None
    with pytest.raises(FrameAuthError, match="failed authentication"):
        read_resource(store, resource, opener())


def complete_book(path: Path) -> Store:
    store = Store.open(path)
    manifest, package = make_manifest(FILES)
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(manifest, b"envelope", NOW)
    for i, data in enumerate(frames_of(package, manifest.frames)):
        store.frames.commit_frame("bk_test", 1, i, data, NOW)
    return store


@pytest.mark.faults(19, 21)
def test_frames_swapped_at_rest_are_refused_and_named_for_fetching_again(tmp_path: Path) -> None:
    """FAULTS #19: same book, same key, yet each blob's chunks fail their tags under the nonce
    prefix committed for the row; the manifest's hash then says the row was altered."""
    store = complete_book(tmp_path / "db")
    raw = apsw.Connection(str(tmp_path / "db"))
    blobs = dict(raw.execute("SELECT idx, data FROM frames WHERE idx IN (0, 1)"))
    raw.execute("UPDATE frames SET data = ? WHERE idx = 0", (blobs[1],))
    raw.execute("UPDATE frames SET data = ? WHERE idx = 1", (blobs[0],))
    raw.close()
    for idx in (0, 1):
        resource = store.frames.resource("bk_test", FILES[idx][0])
        assert resource is not None
        with pytest.raises(FrameHashError, match="no longer matches its manifest") as caught:
            read_resource(store, resource, opener())
        assert (caught.value.book_id, caught.value.version, caught.value.idx) == ("bk_test", 1, idx)
    resource = store.frames.resource("bk_test", FILES[2][0])
    assert resource is not None
    assert read_resource(store, resource, opener()) == FILES[2][1]


@pytest.mark.faults(21)
def test_a_byte_altered_at_rest_is_refused_and_named_for_fetching_again(tmp_path: Path) -> None:
    store = complete_book(tmp_path / "db")
    raw = apsw.Connection(str(tmp_path / "db"))
    [(data,)] = raw.execute("SELECT data FROM frames WHERE idx = 1")
    flipped = data[:40] + bytes([data[40] ^ 1]) + data[41:]
    raw.execute("UPDATE frames SET data = ? WHERE idx = 1", (flipped,))
    raw.close()
    resource = store.frames.resource("bk_test", FILES[1][0])
    assert resource is not None
    with pytest.raises(FrameHashError, match="no longer matches its manifest"):
        read_resource(store, resource, opener())


def seal_whole(content_key: bytes, book_id: str, payload: bytes) -> bytes:
    """As a daemon before manifest format 2 stored frames: one AEAD message per frame."""
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(content_key).encrypt(
        nonce, payload, FRAME_AAD + book_id.encode()
    )


def test_frames_stored_sealed_whole_before_schema_7_still_read(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    manifest, package = make_manifest(FILES, seal=seal_whole)
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(manifest, b"envelope", NOW)
    for i, data in enumerate(frames_of(package, manifest.frames)):
        store.frames.commit_frame("bk_test", 1, i, data, NOW)
    raw = apsw.Connection(str(tmp_path / "db"))
    raw.execute("UPDATE manifests SET sealed_in_chunks = 0")  # what migration 7 leaves them
    raw.close()
    for path, data in FILES:
        resource = store.frames.resource("bk_test", path)
        assert resource is not None
        assert read_resource(store, resource, opener()) == data


@pytest.mark.faults(21)
def test_a_book_wrapped_for_another_device_cannot_be_read(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    manifest, package = make_manifest(FILES[:1], device_key=X25519PrivateKey.generate())
    store.library.apply_library_changes([bought()], 1, NOW)
    store.frames.record_manifest(manifest, b"envelope", NOW)
    store.frames.commit_frame("bk_test", 1, 0, package, NOW)
    resource = store.frames.resource("bk_test", FILES[0][0])
    assert resource is not None
    with pytest.raises(KeyUnwrapError):
        read_resource(store, resource, opener())


def hinted(seq: int, reason: str, action: str = "add", version: int = 1) -> LibraryChange:
    return LibraryChange(seq, "bk_test", action, reason, version, NOW + seq)


def test_a_hint_bought_once_whole_on_the_device_is_delivered_at_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    store.set_meta("registered_at", repr(NOW - 86400))
    manifest, package = make_manifest(FILES)
    store.library.apply_library_changes([hinted(1, "series_next")], 1, NOW + 1)
    store.frames.record_manifest(manifest, b"envelope", NOW + 2)
    for idx, data in enumerate(frames_of(package, manifest.frames)):
        store.frames.commit_frame("bk_test", 1, idx, data, NOW + 3)
    # A new edition of a hint is still a hint, not a book the reader ordered.
    store.library.apply_library_changes([hinted(2, "revised", "update", version=1)], 2, NOW + 4)
    assert store.views.library_view()[0]["reason"] == "series_next"

    store.library.apply_library_changes([hinted(3, "bought")], 3, NOW + 10)
    [book] = store.views.library_view()
    assert (book["reason"], book["state"], book["ordered_at"]) == ("bought", "complete", NOW + 3)
    assert book["started_at"] == book["first_chapter_at"] == book["completed_at"] == NOW + 10
    assert store.library.delivery_candidates() == []
    [receipt] = [r for r in store.receipts.unsent_receipts(10) if r.ordered_at == NOW + 3]
    assert (receipt.outcome, receipt.reason, receipt.bytes_fetched) == ("complete", "bought", 0)


def test_an_evicted_hint_bought_is_a_new_purchase(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    manifest, _ = make_manifest(FILES)
    store.library.apply_library_changes([hinted(1, "sample")], 1, NOW + 1)
    store.frames.record_manifest(manifest, b"envelope", NOW + 2)
    store.library.evict_book("bk_test", NOW + 3)
    [candidate] = store.library.delivery_candidates()
    assert (candidate.reason, candidate.evicted) == ("sample", True)
    store.library.apply_library_changes([hinted(2, "bought")], 2, NOW + 4)
    [candidate] = store.library.delivery_candidates()
    assert (candidate.reason, candidate.evicted, candidate.ordered_at) == ("bought", False, NOW + 2)
    assert is_fresh(candidate, NOW + 5)
