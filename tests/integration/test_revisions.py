"""A revised edition: only changed frames travel, and an old manifest replayed is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.client import AccountClient
from daemon.protocol.manifest import parse_manifest
from server_stub.app import running_stub
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for
from tests.integration.harness import admin, running_device
from tests.integration.test_delivery import assert_reads_back
from tests.stub.helpers import rewrite_epub

BOOK = "se_h-g-wells_the-time-machine.epub"


def revise_epub(src: Path, dst: Path, path: str, old: bytes, new: bytes) -> None:
    """Write `src` to `dst` with one typo corrected in `path`, as a publisher would."""

    def correct(name: str, data: bytes) -> bytes:
        if name != path:
            return data
        assert old in data
        return data.replace(old, new, 1)

    rewrite_epub(src, dst, correct)


@pytest.mark.faults(2, 16)
@pytest.mark.parametrize("via", ["push", "fetch"])
async def test_a_revision_fetches_only_changed_frames_and_a_replayed_old_one_is_refused(
    tmp_path: Path, corpus_dir: Path, via: str
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(corpus_dir / BOOK, library / BOOK)
    epub = read_epub(library / BOOK)
    book_id = book_id_for(epub.identifier, epub.language)
    chapter = "epub/text/chapter-5.xhtml"
    data_dir = tmp_path / "stub-data"

    async with (
        running_stub(data_dir, library_dir=library, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "dev") as device,
    ):
        await device.account.buy(book_id)
        await device.wait_complete(book_id)
        token = device.account.account_token
    # The publisher corrects a typo in one chapter; the service re-imports and notifies.
    revise_epub(corpus_dir / BOOK, library / BOOK, chapter, b"burned a match", b"burnt a match")
    async with running_stub(data_dir, library_dir=library, port=0, faults=True) as stub:
        account = AccountClient(stub.url, token)  # the restarted service has a new port
        v1 = parse_manifest(stub.store.manifest_template(book_id, 1) or b"", template=True)
        v2 = parse_manifest(stub.store.manifest_template(book_id, 2) or b"", template=True)
        changed = [f for f in v2.frames if f.sha256 not in {g.sha256 for g in v1.frames}]
        assert 0 < len(changed) < len(v2.frames)
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "dev", account=account
        ) as device:
            book = await device.wait_for(
                book_id, lambda b: b["version"] == 2 and b["state"] == "complete"
            )
            fetched = sum(
                r["bytes"]
                for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
                if r["path"].endswith("/versions/2/package")
            )
            assert fetched == book["bytes_fetched"] == sum(f.length for f in changed)
            await assert_reads_back(device.api, library / BOOK)

            # Returned and bought again: the service now replays the old, validly signed v1.
            await account.return_book(book_id)
            await device.wait_removed(book_id)
            # Replayed in the purchase's push, and (`fetch`) in the retry's fetch as well.
            replay = {"kind": "replay_manifest", "version": 1}
            rules = [{"route": "pushed_manifest", **replay}]
            if via == "fetch":
                rules.append({"route": "manifest", **replay})
            await admin(stub.url, "POST", "/v1/admin/faults", {"rules": rules})
            await account.buy(book_id)
            refused = await device.wait_for(
                book_id, lambda b: "RollbackError" in (b["last_error"] or "")
            )
            assert refused["version"] is None
            assert "older than the trusted version 2" in refused["last_error"]
            book = await device.wait_complete(book_id)
            assert book["version"] == 2
            await assert_reads_back(device.api, library / BOOK)
