"""Reading back a real book packed as the service packs it: many resources share a 2 MiB frame,
and a read decodes that frame only as far as the resource it serves."""

from __future__ import annotations

import dataclasses
import random
import zipfile
from pathlib import Path

import pytest

from daemon.content.reader import FrameOpener, read_resource
from daemon.models import LibraryChange, StoredFrame
from daemon.protocol.crypto import SEAL_CHUNK, WRAP_ALG, wrap_content_key
from daemon.protocol.manifest import Manifest, WrappedKey
from daemon.store import Store
from server_stub.epub import read_epub
from server_stub.packaging import BLOCK_PLAIN_SIZE, build_package
from tests.builders import CONTENT_KEY, DEVICE_KEY, NOW

BOOK = "idpf_moby-dick.epub"  # 154 resources, most of them chapters far smaller than a frame


@pytest.fixture(scope="module")
def packed(corpus_dir: Path) -> tuple[Manifest, bytes]:
    package = build_package(read_epub(corpus_dir / BOOK), 1, CONTENT_KEY, level=3)
    template = package.manifest
    ephemeral, wrapped = wrap_content_key(DEVICE_KEY.public_key(), CONTENT_KEY, template.book_id)
    manifest = dataclasses.replace(
        template,
        issued_at=NOW,
        expires_at=NOW + 86400,
        content_key=WrappedKey(WRAP_ALG, ephemeral, wrapped),
    )
    return manifest, package.data


@pytest.fixture
def store(tmp_path: Path, packed: tuple[Manifest, bytes]) -> Store:
    manifest, package = packed
    store = Store.open(tmp_path / "db")
    store.library.apply_library_changes(
        [LibraryChange(1, manifest.book_id, "add", "bought", 1, NOW)], 1, NOW
    )
    store.frames.record_manifest(manifest, b"envelope", NOW)
    for i, f in enumerate(manifest.frames):
        store.frames.commit_frame(
            manifest.book_id, 1, i, package[f.offset : f.offset + f.length], NOW
        )
    return store


def originals(corpus_dir: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(corpus_dir / BOOK) as z:
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


def test_paging_through_decodes_each_frame_only_as_far_as_the_page(
    store: Store, packed: tuple[Manifest, bytes], corpus_dir: Path
) -> None:
    manifest, _ = packed
    shared = max(manifest.frames, key=lambda f: f.plain_size)
    in_frame = [
        r
        for r in manifest.resources
        if manifest.frames_for(r)
        == range(manifest.frames.index(shared), manifest.frames.index(shared) + 1)
    ]
    assert len(in_frame) > 3, "the test needs a frame shared by several chapters"
    opener = FrameOpener(DEVICE_KEY, 1 << 23)
    first = store.frames.resource(manifest.book_id, in_frame[0].path)
    assert first is not None
    assert read_resource(store, first, opener) == originals(corpus_dir)[first.path]
    decoder = opener.cached(shared.sha256)
    assert decoder is not None
    assert not decoder.complete  # the rest of the frame is decoded when a page needs it
    # The service ends a zstd block at a chapter end past each BLOCK_PLAIN_SIZE, so the first
    # page decoded about that much, not the 128 KiB block zstd would have chosen.
    assert decoder.decoded < 2 * BLOCK_PLAIN_SIZE
    for resource in in_frame[1:]:
        row = store.frames.resource(manifest.book_id, resource.path)
        assert row is not None
        assert read_resource(store, row, opener) == originals(corpus_dir)[row.path]
        assert opener.cached(shared.sha256) is decoder  # one decode goes on, page after page


@pytest.mark.parametrize("cache_bytes", [0, 64 * 1024, 1 << 23])
def test_every_resource_reads_back_byte_identical_whatever_the_cache(
    store: Store, packed: tuple[Manifest, bytes], corpus_dir: Path, cache_bytes: int
) -> None:
    manifest, _ = packed
    expected = originals(corpus_dir)
    opener = FrameOpener(DEVICE_KEY, 1 << 23, plain_cache_bytes=cache_bytes)
    # Reading order, then backwards: a reader paging on, then jumping back.
    for resource in [*manifest.resources, *reversed(manifest.resources)]:
        row = store.frames.resource(manifest.book_id, resource.path)
        assert row is not None
        assert read_resource(store, row, opener) == expected[row.path], row.path
    if cache_bytes == 0:
        assert all(opener.cached(f.sha256) is None for f in manifest.frames)


def test_the_cache_bound_holds_while_a_frame_decodes_not_only_after(
    store: Store, packed: tuple[Manifest, bytes], corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading against the grain, every chunk read from the store (a frame decoding further)
    finds the other cached frames leaving room for that frame whole: before the cache made
    room first, mahabharata read so peaked at 17 MiB over a 4.5 MiB bound."""
    manifest, _ = packed
    bound = 3 * 1024 * 1024
    opener = FrameOpener(DEVICE_KEY, 1 << 23, plain_cache_bytes=bound)
    by_blob = {}
    for resource in manifest.resources:
        row = store.frames.resource(manifest.book_id, resource.path)
        assert row is not None
        for frame, stored in store.frames.resource_frames(row):
            assert stored is not None
            by_blob[stored.blob_id] = frame
    seen = []
    read_frame = store.frames.read_frame

    def watched(stored: StoredFrame, offset: int, size: int) -> bytes:
        frame = by_blob[stored.blob_id]
        seen.append(opener.held_bytes(besides=frame.sha256) + frame.plain_size + SEAL_CHUNK)
        return read_frame(stored, offset, size)

    monkeypatch.setattr(store.frames, "read_frame", watched)
    expected = originals(corpus_dir)
    for resource in random.Random(3).sample(manifest.resources, len(manifest.resources)):
        row = store.frames.resource(manifest.book_id, resource.path)
        assert row is not None
        assert read_resource(store, row, opener) == expected[row.path]
    assert len(seen) > len(manifest.frames)
    assert max(seen) <= bound
    filled = [
        f
        for f in manifest.frames
        if any(
            r.offset <= f.plain_offset and f.plain_offset + f.plain_size <= r.offset + r.size
            for r in manifest.resources
        )
    ]
    assert filled, "the test needs a frame that one resource fills"
    assert all(opener.cached(f.sha256) is None for f in filled)  # streamed out, never kept
