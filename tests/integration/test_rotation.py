"""A device fast-forwarded by a broken signing key recovers when the service rotates its key
(FAULTS.md #18, through the real daemon and stub)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.client import AccountClient
from server_stub.app import running_stub
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for
from tests.integration.harness import admin, running_device
from tests.integration.test_delivery import assert_reads_back

BOOK = "se_h-g-wells_the-time-machine.epub"
FAST_FORWARD = 2**53 - 1  # the highest version a manifest may carry


@pytest.mark.faults(18)
async def test_a_fast_forwarded_device_recovers_when_the_service_rotates_its_key(
    tmp_path: Path, corpus_dir: Path
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(corpus_dir / BOOK, library / BOOK)
    epub = read_epub(library / BOOK)
    book_id = book_id_for(epub.identifier, epub.language)
    async with running_stub(
        tmp_path / "stub-data", library_dir=library, port=0, faults=True
    ) as stub:
        # The service's signing key goes wrong once: it signs the book at the highest version.
        # Bought before the device starts, so that the device fetches that manifest: one bought
        # while it runs comes signed with the push, where this fault does not reach.
        rule = {"route": "manifest", "kind": "forge_version", "version": FAST_FORWARD}
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [rule]})
        account = AccountClient(stub.url)
        await account.create_account("test reader")
        await account.buy(book_id)
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "dev", account=account
        ) as device:
            stuck = await device.wait_for(
                book_id, lambda b: "RollbackError" in (b["last_error"] or "")
            )
            assert f"older than the trusted version {FAST_FORWARD}" in stuck["last_error"]
            # The honest version 1 is refused until the service rotates its key.
            rotated = await admin(stub.url, "POST", "/v1/admin/rotate-key")
            assert rotated["version"] == 2
            book = await device.wait_complete(book_id)
            assert book["version"] == 1
            await assert_reads_back(device.api, library / BOOK)
        requests = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        assert "/v1/roots/2" in [r["path"] for r in requests]


@pytest.mark.faults(18)
async def test_a_rotation_reaches_the_device_with_the_next_changes_page(
    tmp_path: Path, corpus_dir: Path
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(corpus_dir / BOOK, library / BOOK)
    epub = read_epub(library / BOOK)
    book_id = book_id_for(epub.identifier, epub.language)
    async with (
        running_stub(tmp_path / "stub-data", library_dir=library, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "dev") as device,
    ):
        await device.account.buy(book_id)
        await device.wait_complete(book_id)
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        await admin(stub.url, "POST", "/v1/admin/rotate-key")
        # A return is the next change: its page names root 2, which the device fetches
        # although no manifest was refused (none was even asked for).
        await device.account.return_book(book_id)
        await device.wait_removed(book_id)
        for _ in range(500):
            requests = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
            if "/v1/roots/2" in (paths := [r["path"] for r in requests]):
                break
            await asyncio.sleep(0.02)
        assert "/v1/roots/2" in paths
        assert not any(p.endswith("/manifest") for p in paths)
        # Bought again, it is verified under the new key.
        await device.account.buy(book_id)
        assert (await device.wait_complete(book_id))["version"] == 1
