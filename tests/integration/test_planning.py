"""Storage and trips on a real device: the quota holds, protected books stay, a full disk
pauses downloads without damage, and trip mode fetches from the archive and says so."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.client import AccountClient
from daemon.protocol.manifest import parse_manifest
from daemon.radio.power import FakePower
from daemon.store import Store
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import admin, running_device
from tests.integration.test_delivery import assert_reads_back

PROFILES = Path(__file__).parents[2] / "device_profiles"
MOBY, WELLS, ALICE = (
    "idpf_moby-dick.epub",
    "se_h-g-wells_the-time-machine.epub",
    "epubjs_alice.epub",
)


def profile_with(tmp_path: Path, **storage: int) -> str:
    """The emulator profile with other storage numbers, as a file."""
    text = (PROFILES / "emulator-loopback.toml").read_text()
    for field, value in storage.items():
        lines = text.splitlines()
        text = "\n".join(
            f"{field} = {value}  # changed by the test" if line.startswith(f"{field} =") else line
            for line in lines
        )
    path = tmp_path / "profile.toml"
    path.write_text(text + "\n")
    return str(path)


@pytest.mark.parametrize("protect", [None, "pin", "opened"])
async def test_a_purchase_evicts_the_least_likely_unprotected_book_within_the_quota(
    tmp_path: Path,
    corpus_stub_data: Path,
    stub_corpus_import: StubImport,
    corpus_dir: Path,
    protect: str | None,
) -> None:
    ids = stub_corpus_import.book_ids
    profile = profile_with(tmp_path, quota_mb=2, reserve_mb=0)  # 2 MiB: two of the three books
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", profile=profile) as device,
    ):
        for name in (MOBY, WELLS):
            await device.account.buy(ids[name])
            await device.wait_complete(ids[name])
        if protect == "pin":
            await device.api.post_json(f"/v1/books/{ids[MOBY]}/pin", {"pinned": True})
        elif protect == "opened":
            await device.api.post_json(f"/v1/books/{ids[MOBY]}/opened")

        await device.account.buy(ids[ALICE])
        await device.wait_complete(ids[ALICE])
        evicted = WELLS if protect else MOBY  # the older order goes, unless it is protected
        kept = MOBY if protect else WELLS
        book = await device.wait_for(ids[evicted], lambda b: b["state"] == "evicted")
        assert "room" in (await device.api.status())["not_delivered"][0]["why"] or book
        await assert_reads_back(device.api, corpus_dir / kept)
        await assert_reads_back(device.api, corpus_dir / ALICE)
        store = Store.open(device.daemon.settings.db_path, readonly=True)
        try:
            assert store.frames.books_bytes() <= 2 * 1024 * 1024
        finally:
            store.close()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


DISK_FULL_PAUSE_S = 5.0  # the daemon's 60 s, shortened: long enough to look while paused


@pytest.mark.faults(24)
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
async def test_a_full_disk_pauses_downloads_damages_nothing_and_resumes_by_itself(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport, corpus_dir: Path
) -> None:
    book_id = stub_corpus_import.book_ids[MOBY]
    profile = profile_with(tmp_path, quota_mb=4096, reserve_mb=0)
    with small_filesystem(tmp_path / "flash", "8m") as flash:
        async with (
            running_stub(corpus_stub_data, port=0, faults=True) as stub,
            running_device(
                stub.url,
                stub.public_key_text,
                flash / "d",
                profile=profile,
                disk_full_pause_s=DISK_FULL_PAUSE_S,
            ) as device,
        ):
            manifest = parse_manifest(
                stub.store.manifest_template(book_id, 1) or b"", template=True
            )
            held_back = manifest.frames[manifest.first_chapter_frames()]
            await admin(
                stub.url,
                "POST",
                "/v1/admin/faults",
                {"rules": [{"route": "package", "kind": "pause", "after_bytes": held_back.offset}]},
            )
            await device.account.buy(book_id)
            await device.wait_for(book_id, lambda b: b["readable"])
            # Another program fills the flash while the rest of the book is on its way.
            free = os.statvfs(flash).f_bavail * os.statvfs(flash).f_frsize
            (flash / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
            await admin(stub.url, "POST", "/v1/admin/release")

            deadline = time.monotonic() + 60
            status = await device.api.status()
            while not status.get("downloads_paused"):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.05)
                status = await device.api.status()
            assert "disk is full" in status["downloads_paused"]
            # What was committed still reads, whole; nothing half-written is served.
            status_code, _, body = await device.api.resource(book_id, manifest.first_chapter)
            assert status_code == 200
            chapter = manifest.resource(manifest.first_chapter)
            assert chapter is not None
            assert len(body) == chapter.size
            last = manifest.resources[-1]
            assert (await device.api.resource(book_id, last.path))[0] == 503
            store = Store.open(device.daemon.settings.db_path, readonly=True)
            try:
                assert store.integrity_check() == "ok"
                # Frames commit in order: the ones held now are a prefix of the package.
                first_missing = store.frames.missing_frames(book_id, 1)[0]
            finally:
                store.close()
            assert first_missing.idx > 0

            # The space comes back. Nobody tells the daemon: once the pause is over it looks
            # again by itself (not at its next 30 s recheck) and fetches only what is missing.
            (flash / "filler").unlink()
            book = await device.wait_complete(book_id, timeout_s=DISK_FULL_PAUSE_S + 15)
            assert (await device.api.status())["downloads_paused"] is None
            await assert_reads_back(device.api, corpus_dir / MOBY)
            package = [
                r
                for r in (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
                if r["path"].endswith(f"/{book_id}/versions/1/package")
            ]
            assert package[0]["range"].startswith("bytes=0-")
            resumed = [int(r["range"].removeprefix("bytes=").split("-")[0]) for r in package[1:]]
            assert resumed, package
            # No frame committed before the pause came down again.
            assert all(start >= first_missing.package_offset for start in resumed), package
            assert package[-1]["bytes"] == manifest.package_size - resumed[-1]
            assert book["bytes_fetched"] <= manifest.package_size


async def test_trip_mode_fetches_from_the_archive_and_reports_readiness(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    ids = stub_corpus_import.book_ids
    archive = [
        "calibre_quick_start_eng.epub",
        "idpf_wasteland.epub",
        "idpf_regime-anticancer-arabic.epub",
    ]
    async with running_stub(corpus_stub_data, port=0) as stub:
        account = AccountClient(stub.url)
        await account.create_account("traveller")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        # Bought long before this device: the archive, in the cloud.
        for age, name in enumerate(archive):
            stub.store.seed_library(account_id, [ids[name]], at=time.time() - 86400 * (age + 1))
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "d", account=account
        ) as device:
            await device.wait_for(ids[archive[0]], lambda b: b["state"] == "in_cloud")
            assert (await device.api.status())["not_delivered"] == []  # archive is not missing

            result = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "daemon",
                    "trip",
                    "--days",
                    "4",
                    "--wait",
                    "60",
                    "--state",
                    str(tmp_path / "d"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.startswith("Ready for 4 days offline: 2 books,"), result.stdout
            assert "all highlights, notes and bookmarks synced" in result.stdout
            # The two most recent orders of the archive came down; the oldest stayed up.
            states = {b["book_id"]: b["state"] for b in await device.api.library()}
            assert states[ids[archive[0]]] == states[ids[archive[1]]] == "complete"
            assert states[ids[archive[2]]] == "in_cloud"


async def test_on_a_low_battery_only_purchases_download_until_charging(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    ids = stub_corpus_import.book_ids
    archived, bought = ids["idpf_wasteland.epub"], ids["calibre_quick_start_eng.epub"]
    profile = profile_with(tmp_path, min_percent=20)
    power = FakePower(percent=12, charging=False)
    async with running_stub(corpus_stub_data, port=0) as stub:
        account = AccountClient(stub.url)
        await account.create_account("reader")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        stub.store.seed_library(account_id, [archived], at=time.time() - 86400)
        async with running_device(
            stub.url,
            stub.public_key_text,
            tmp_path / "d",
            profile=profile,
            account=account,
            power=power,
        ) as device:
            await device.wait_for(archived, lambda b: b["state"] == "in_cloud")
            await device.api.post_json(f"/v1/books/{archived}/download")
            await device.account.buy(bought)
            await device.wait_complete(bought)  # a purchase runs on a low battery
            status = await device.api.status()
            [waiting] = status["not_delivered"]
            assert waiting["book_id"] == archived
            assert "battery low" in waiting["why"]

            power.set(12, charging=True)
            await device.api.post_json(f"/v1/books/{archived}/download")  # look again now
            await device.wait_complete(archived)


async def test_a_book_not_on_the_device_answers_with_its_title_and_state(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    """Issue 23 #8 and #7: a book listed in the library but not delivered answered 404 "not on
    the device" on GET /v1/books/{id}, and had no title anywhere before its manifest came."""
    ids = stub_corpus_import.book_ids
    archived = ids["idpf_wasteland.epub"]
    async with running_stub(corpus_stub_data, port=0) as stub:
        account = AccountClient(stub.url)
        await account.create_account("reader")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        stub.store.seed_library(account_id, [archived], at=time.time() - 86400)
        catalog_book = stub.store.book(archived)
        assert catalog_book is not None
        title = catalog_book.title
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "d", account=account
        ) as device:
            entry = await device.wait_for(archived, lambda b: b["state"] == "in_cloud")
            assert entry["title"] == title
            status, book = await device.api.send("GET", f"/v1/books/{archived}")
            assert status == 200, book
            assert (book["title"], book["state"], book["readable"]) == (title, "in_cloud", False)
            assert book["resources"] == []
            assert book["version"] is None
            report = await device.api.start_trip(2)  # the trip names it by its title too
            assert title in report["sentence"]
            assert archived not in report["sentence"]
            await device.api.post_json(f"/v1/books/{archived}/download")
            await device.wait_complete(archived)
            status, book = await device.api.send("GET", f"/v1/books/{archived}")
            assert (book["state"], book["readable"], book["version"]) == ("complete", True, 1)
            assert (await device.api.send("GET", "/v1/books/bk_nosuchbook"))[0] == 404
