"""The library feed: 20,000 books in bounded pages; a purchase pushed; the status told honestly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import server_stub.app
from daemon.client import AccountClient, ClientLimits, ServiceClient
from daemon.clock import SystemClock
from daemon.content.library_sync import PAGE_SIZE, LibrarySync
from daemon.protocol.crypto import public_key_to_text, x25519_public_text
from daemon.protocol.manifest import parse_manifest
from daemon.radio.windows import RadioWindows
from daemon.store import Store
from server_stub.app import RunningStub, running_stub
from tests.conftest import StubImport
from tests.integration.harness import Device, admin, running_device


async def test_a_library_of_20000_books_syncs_in_bounded_pages(
    tmp_path: Path, corpus_stub_data: Path
) -> None:
    async with running_stub(corpus_stub_data, port=0, faults=True) as stub:
        account = AccountClient(stub.url)
        await account.create_account("collector")
        key = X25519PrivateKey.generate()
        credentials = await account.register_device("e-reader", x25519_public_text(key))
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        book_ids = [f"bk_seeded{i:08d}" for i in range(20_000)]
        stub.store.seed_library(account_id, book_ids, at=time.time() - 86400)

        store = Store.open(tmp_path / "device.db")
        client = ServiceClient(stub.url, credentials, ClientLimits())
        wakes = []
        try:
            clock = SystemClock()
            sync = LibrarySync(
                store, client, clock, RadioWindows(clock), on_change=lambda: wakes.append(1)
            )
            applied = await sync.sync_once()
            assert await sync.sync_once() == 0  # nothing new: one request, no change
        finally:
            await client.close()
        log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        pages = [r for r in log if r["path"] == "/v1/library/changes"]
        assert applied == 20_000
        # 40 full pages (the last says has_more=false), then one re-sync that finds nothing.
        assert len(pages) == 20_000 // PAGE_SIZE + 1
        assert len(wakes) == 20_000 // PAGE_SIZE  # delivery woken page by page
        assert {b["book_id"] for b in store.views.library_view()} == set(book_ids)
        store.close()


async def _requests_after_purchase(
    stub: RunningStub, device: Device, book_id: str, *, prefetched: bool = True
) -> list[str]:
    """The paths the device asked for between the purchase and the complete book, once it
    is online (and, if `prefetched`, once it has fetched the catalog's dictionary while idle)."""
    while not device.daemon.runtime()["online"]:
        await asyncio.sleep(0.01)
    while prefetched and not any(
        r["path"].startswith("/v1/dictionaries/")
        for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
    ):
        await asyncio.sleep(0.01)
    await admin(stub.url, "DELETE", "/v1/admin/requests")
    await device.account.buy(book_id)
    book = await device.wait_complete(book_id)
    assert book["notified_at"] - book["ordered_at"] < 5  # long before the 30 s poll
    log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
    paths = [r["path"] for r in log]
    return [
        p
        for p in paths[paths.index("/v1/library/buy") + 1 :]
        if p.startswith(("/v1/books/", "/v1/library/", "/v1/dictionaries/"))
    ]


async def test_a_purchase_arrives_whole_on_the_push_channel(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        # The change, its signed manifest and the first chapter's frame came with the push,
        # the dictionary before the purchase: the one request is for the package's rest.
        assert await _requests_after_purchase(stub, device, book_id) == [
            f"/v1/books/{book_id}/versions/1/package"
        ]
        manifest = parse_manifest(stub.store.manifest_template(book_id, 1) or b"", template=True)
        assert manifest.first_chapter_frames() == 1
        log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        [package] = [r for r in log if r["path"].endswith("/package")]
        assert package["range"] == f"bytes={manifest.frames[1].offset}-{manifest.package_size - 1}"
        book = await device.api.library_entry(book_id)
        assert book is not None
        assert book["bytes_fetched"] == manifest.package_size  # pushed frames count as fetched


async def test_a_service_that_speaks_push_version_1_only_still_delivers(
    tmp_path: Path,
    corpus_stub_data: Path,
    stub_corpus_import: StubImport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_stub.app, "VERSIONS", (1,))  # the service before version 2
    book_id = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    async with (
        running_stub(corpus_stub_data, port=0, faults=True) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        # Told by push, the device pulls the feed, then fetches the manifest and the package.
        paths = await _requests_after_purchase(stub, device, book_id, prefetched=False)
        manifest = parse_manifest(stub.store.manifest_template(book_id, 1) or b"", template=True)
        assert manifest.dictionary is not None
        assert paths == [
            "/v1/library/changes",
            f"/v1/books/{book_id}/manifest",
            f"/v1/dictionaries/{manifest.dictionary.sha256}",
            f"/v1/books/{book_id}/versions/1/package",
        ]


def shelfsync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, check=False
    )


async def test_status_tells_what_is_on_the_device_with_the_daemon_running_or_not(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    state = tmp_path / "d"
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, state) as device,
    ):
        await device.account.buy(book_id)
        await device.wait_complete(book_id)
        running = await asyncio.to_thread(shelfsync, "status", "--state", str(state), "--json")
        assert running.returncode == 0, running.stderr
        report = json.loads(running.stdout)
        assert report["daemon"]["running"] is True
        assert report["books"] == {"complete": 1}
        assert report["last_sync_at"] is not None
    stopped = await asyncio.to_thread(shelfsync, "status", "--state", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert "daemon: not running" in stopped.stdout
    assert "books: 1 complete" in stopped.stdout


def test_a_malformed_profile_or_key_is_refused_with_the_field_and_reason(tmp_path: Path) -> None:
    profile = tmp_path / "bad.toml"
    good = (Path(__file__).parents[2] / "device_profiles" / "paperwhite-wifi.toml").read_text()
    profile.write_text(good.replace("concurrency = 2 ", "concurrency = 0 "))
    key = public_key_to_text(Ed25519PrivateKey.generate().public_key())
    common = ("run", "--state", str(tmp_path / "s"), "--service", "http://127.0.0.1:9")

    bad_profile = shelfsync(*common, "--service-key", key, "--profile", str(profile))
    assert bad_profile.returncode == 2
    assert "field 'downloads.concurrency'" in bad_profile.stderr

    bad_key = shelfsync(*common, "--service-key", "AAAA", "--profile", "paperwhite-wifi")
    assert bad_key.returncode == 2
    assert "not a base64 Ed25519 public key" in bad_key.stderr
