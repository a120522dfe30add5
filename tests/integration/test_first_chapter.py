"""Readable means the first page renders: never true while a resource it shows answers 503.

Each corpus book is packed as the service packs it and its frames committed one at a time, in
package order, into a real device store; after every commit the library's `readable` flag is
compared with what the local API would serve (a resource whose frames are missing is the
503 not_yet_on_device answer).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from daemon.content.reader import FrameOpener, read_resource
from daemon.errors import NotOnDeviceError
from daemon.models import LibraryChange
from daemon.protocol.crypto import WRAP_ALG, wrap_content_key
from daemon.protocol.manifest import WrappedKey
from daemon.store import Store
from server_stub.epub import read_epub
from server_stub.packaging import build_package
from tests.builders import CONTENT_KEY, DEVICE_KEY, NOW


def _served(store: Store, book_id: str, path: str, opener: FrameOpener) -> bool:
    row = store.frames.resource(book_id, path)
    assert row is not None, path
    try:
        read_resource(store, row, opener)
    except NotOnDeviceError:
        return False
    return True


def test_readable_turns_true_exactly_when_the_first_page_can_be_served(
    tmp_path: Path, corpus_books: list[Path]
) -> None:
    opener = FrameOpener(DEVICE_KEY, 1 << 23)
    for number, book in enumerate(corpus_books):
        epub = read_epub(book)
        package = build_package(epub, 1, CONTENT_KEY, level=1)
        ephemeral, wrapped = wrap_content_key(
            DEVICE_KEY.public_key(), CONTENT_KEY, package.manifest.book_id
        )
        manifest = dataclasses.replace(
            package.manifest,
            issued_at=NOW,
            expires_at=NOW + 86400,
            content_key=WrappedKey(WRAP_ALG, ephemeral, wrapped),
        )
        assert manifest.first_chapter_needs == epub.first_chapter_needs
        store = Store.open(tmp_path / f"{number}.db")
        store.library.apply_library_changes(
            [LibraryChange(1, manifest.book_id, "add", "bought", 1, NOW)], 1, NOW
        )
        store.frames.record_manifest(manifest, b"envelope", NOW)
        page = (manifest.first_chapter, *manifest.first_chapter_needs)
        was_readable = False
        for index, frame in enumerate(manifest.frames):
            data = package.data[frame.offset : frame.offset + frame.length]
            store.frames.commit_frame(manifest.book_id, 1, index, data, NOW)
            (view,) = [b for b in store.views.library_view() if b["book_id"] == manifest.book_id]
            if view["readable"] == was_readable:
                continue
            # It turned readable at this commit: every resource of the first page serves now,
            # and did not all serve before it (so it is not late either).
            assert all(_served(store, manifest.book_id, p, opener) for p in page), book.name
            assert index + 1 == manifest.first_chapter_frames(), book.name
            was_readable = True
        assert was_readable, book.name
        store.close()
