"""A full disk (issue 21 #9, FAULTS.md #24) with a real `shelfsync run` process: the daemon
stays up and serves every book it holds, saves fail visibly (507), and it starts on a disk that
is already full, in a read-mostly mode whose reason is in status."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import spawn_daemon
from tests.integration.notes_helpers import BOOK_FILE, anchor, eventually
from tests.integration.test_delivery import assert_reads_back
from tests.integration.test_kill import stop, wait_until_serving
from tests.integration.test_planning import profile_with, small_filesystem

LATER_BOOK = "idpf_moby-dick.epub"  # bought once the disk is full: cannot come in


def fill(flash: Path) -> None:
    """Another program takes every last block of the flash."""
    fd = os.open(flash / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with pytest.raises(OSError, match="No space left on device") as full:
            _write_forever(fd)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC


def _write_forever(fd: int) -> None:
    while True:
        os.write(fd, b"\0" * 4096)


async def assert_alive(daemon: asyncio.subprocess.Process, ended: bool = False) -> None:
    if ended:  # it no longer answers: wait for it to be gone, and say why it went
        await asyncio.wait_for(daemon.wait(), 30)
    await asyncio.sleep(0)  # let a process that ended be reaped
    if daemon.returncode is not None:
        assert daemon.stderr is not None
        log = (await daemon.stderr.read()).decode()
        raise AssertionError(f"the daemon ended (rc {daemon.returncode}): {log[-3000:]}")


async def serving(api: LocalApiClient, daemon: asyncio.subprocess.Process) -> None:
    try:
        await wait_until_serving(api, daemon)
    except AssertionError:
        await assert_alive(daemon, ended=True)
        raise


async def save_note(api: LocalApiClient, book_id: str, daemon: asyncio.subprocess.Process) -> int:
    try:
        status, _ = await api.send(
            "POST",
            f"/v1/books/{book_id}/annotations",
            {"kind": "note", "anchor": anchor(), "note": "written on a full disk"},
        )
    except aiohttp.ClientConnectionError:
        await assert_alive(daemon, ended=True)
        raise
    return status


@pytest.mark.faults(24)
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
async def test_a_full_disk_keeps_the_daemon_serving_and_it_starts_on_one(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport, corpus_dir: Path
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK_FILE]
    later_id = stub_corpus_import.book_ids[LATER_BOOK]
    profile = profile_with(tmp_path, reserve_mb=0)
    with small_filesystem(tmp_path / "flash", "12m") as flash:
        state = flash / "device"
        async with running_stub(corpus_stub_data, port=0) as stub:
            account = AccountClient(stub.url)
            await account.create_account("reader")
            daemon = await spawn_daemon(stub, state, account.account_token, None, profile)
            try:
                async with LocalApiClient(state / "api.sock") as api:
                    await serving(api, daemon)
                    await account.buy(book_id)

                    async def complete(book: str = book_id) -> bool:
                        entry = await api.library_entry(book)
                        return entry is not None and entry["state"] == "complete"

                    await eventually(complete, 60)
                    fill(flash)
                    # Every worker now meets the full disk: the purchase to sync and fetch,
                    # the note to save and push, the status to record.
                    await account.buy(later_id)
                    await assert_alive(daemon)
                    assert await save_note(api, book_id, daemon) == 507

                    async def storage_full() -> dict[str, Any] | None:
                        status = await api.status()
                        return status if (status.get("storage") or {}).get("full") else None

                    status = await eventually(storage_full, 30)
                    assert "disk is full" in str(status["storage"]["reason"])
                    await assert_alive(daemon)
                    await assert_reads_back(api, corpus_dir / BOOK_FILE)
                    assert await save_note(api, book_id, daemon) == 507
                    await assert_alive(daemon)
            finally:
                await stop(daemon)
            assert daemon.returncode == 0

            # Started again, on the disk still full.
            daemon = await spawn_daemon(stub, state, account.account_token, None, profile)
            try:
                async with LocalApiClient(state / "api.sock") as api:
                    await serving(api, daemon)
                    status = await api.status()
                    assert status["storage"]["full"], status
                    assert status["storage"]["mode"] == "read_mostly"
                    assert "disk is full" in status["storage"]["reason"]
                    await assert_reads_back(api, corpus_dir / BOOK_FILE)
                    assert await save_note(api, book_id, daemon) == 507
                    await assert_alive(daemon)

                    # Space comes back: writes work again, and the purchase arrives.
                    (flash / "filler").unlink()

                    async def writable() -> bool:
                        return await save_note(api, book_id, daemon) == 201

                    await eventually(writable, 60)
                    assert not (await api.status())["storage"]["full"]
            finally:
                await stop(daemon)
            assert daemon.returncode == 0
