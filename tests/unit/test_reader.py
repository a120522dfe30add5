"""Reading back a real book packed as the service packs it: many resources share a 2 MiB frame,
and a read decodes that frame only as far as the resource it serves."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest

from daemon.crypto import WRAP_ALG, wrap_content_key
from daemon.manifest import Manifest, WrappedKey
from daemon.models import LibraryChange
from daemon.reader import FrameOpener, read_resource
from daemon.store import Store
from server_stub.epub import read_epub
from server_stub.packaging import build_package
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
    store.apply_library_changes(
        [LibraryChange(1, manifest.book_id, "add", "bought", 1, NOW)], 1, NOW
    )
    store.record_manifest(manifest, b"envelope", NOW)
    for i, f in enumerate(manifest.frames):
        store.commit_frame(manifest.book_id, 1, i, package[f.offset : f.offset + f.length], NOW)
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
    first = store.resource(manifest.book_id, in_frame[0].path)
    assert first is not None
    assert read_resource(store, first, opener) == originals(corpus_dir)[first.path]
    decoder = opener.cached(shared.sha256)
    assert decoder is not None
    assert not decoder.complete  # the rest of the frame is decoded when a page needs it
    for resource in in_frame[1:]:
        row = store.resource(manifest.book_id, resource.path)
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
        row = store.resource(manifest.book_id, resource.path)
        assert row is not None
        assert read_resource(store, row, opener) == expected[row.path], row.path
    if cache_bytes == 0:
        assert all(opener.cached(f.sha256) is None for f in manifest.frames)


def test_the_cache_makes_room_before_a_frame_decodes_not_after(
    store: Store, packed: tuple[Manifest, bytes]
) -> None:
    """A frame about to decode further gets room for what it may grow to first (the least
    recently used others go), so the bound holds while it decodes: reading mahabharata against
    the grain peaked at 17 MiB over a 4.5 MiB bound without this, 7 MiB with it."""
    manifest, _ = packed
    text = [f for f in manifest.frames if f.codec != "raw"]
    opener = FrameOpener(DEVICE_KEY, 1 << 23, plain_cache_bytes=1 << 30)
    for frame in text:  # decode the first page of every text frame: all cached, part-decoded
        first = next(
            r
            for r in manifest.resources
            if manifest.frames_for(r)[:1]
            == range(manifest.frames.index(frame), manifest.frames.index(frame) + 1)
        )
        row = store.resource(manifest.book_id, first.path)
        assert row is not None
        read_resource(store, row, opener)
    cached = [f for f in text if opener.cached(f.sha256) is not None]
    assert len(cached) >= 3
    newest = cached[-1]
    held = [opener.cached(f.sha256) for f in cached]
    total = sum(d.memory_bytes() for d in held if d is not None)
    # Room for them all and their bookkeeping, not for the newest grown to its end beside them.
    tight = FrameOpener(DEVICE_KEY, 1 << 23, plain_cache_bytes=total + 4096 * len(cached))
    for frame, decoder in zip(cached, held, strict=True):
        assert decoder is not None
        tight.remember(frame.sha256, decoder)
    assert all(tight.cached(f.sha256) is not None for f in cached)
    need = 2 * newest.plain_size
    tight.make_room(newest.sha256, need)
    memory = dict(
        zip([f.sha256 for f in cached], [d.memory_bytes() for d in held if d], strict=True)
    )
    kept = [f for f in cached if tight.cached(f.sha256) is not None]
    evicted = [f for f in cached if f not in kept]
    assert newest in kept  # the one about to grow stays
    assert evicted
    assert evicted == cached[: len(evicted)]  # the least recently used went first
    assert sum(memory[f.sha256] for f in kept if f != newest) + need <= total
