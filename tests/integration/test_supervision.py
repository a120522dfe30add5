"""No worker error ends the daemon (issue 19): a full disk during a library sync, or a bug that
escapes a worker, is reported in status while the daemon keeps serving, and the worker goes on
(retried, or restarted by the supervisor) once the cause is gone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import DiskFullError
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import Device, running_device

BOOK = "idpf_wasteland.epub"
LATER = "calibre_quick_start_eng.epub"


async def worker_problem(device: Device, worker: str, timeout_s: float = 20) -> dict[str, Any]:
    """The worker's problem as GET /v1/status reports it, once it does."""
    deadline = time.monotonic() + timeout_s
    while True:
        problems = (await device.api.status())["daemon"]["workers"]
        if worker in problems:
            return dict(problems[worker])
        assert time.monotonic() < deadline, f"status never reported {worker}: {problems}"
        await asyncio.sleep(0.05)


async def test_a_full_disk_in_library_sync_leaves_the_daemon_running(
    tmp_path: Path,
    corpus_stub_data: Path,
    stub_corpus_import: StubImport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        store = device.daemon._store
        assert store is not None

        def disk_full(*args: object, **kwargs: object) -> Any:
            raise DiskFullError("the disk is full: database or disk is full")

        # The pull fails, and so does writing down why (the failure path of issue 19).
        monkeypatch.setattr(store.library, "apply_library_changes", disk_full)
        monkeypatch.setattr(store, "set_meta", disk_full)
        await device.account.buy(book_id)
        problem = await worker_problem(device, "library sync")
        assert problem["error"].startswith("DiskFullError")
        assert "retrying" in problem["doing"]
        status = await device.api.status()
        assert status["daemon"]["running"]
        assert "crashed" not in problem  # handled by its retries, not by a restart

        monkeypatch.undo()
        book = await device.wait_complete(book_id)
        assert book["state"] == "complete"
        assert "library sync" not in (await device.api.status())["daemon"]["workers"]


async def test_a_worker_that_fails_is_restarted_and_reported(
    tmp_path: Path,
    corpus_stub_data: Path,
    stub_corpus_import: StubImport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d") as device,
    ):
        store = device.daemon._store
        assert store is not None

        def bug(*args: object, **kwargs: object) -> Any:
            raise ZeroDivisionError("a bug in the pull")

        monkeypatch.setattr(store.library, "apply_library_changes", bug)
        await device.account.buy(book_id)
        crash = (await worker_problem(device, "library sync"))["crashed"]
        assert crash["error"] == "ZeroDivisionError: a bug in the pull"
        assert crash["restarts"] >= 1
        assert (await device.api.status())["daemon"]["running"]

        monkeypatch.undo()
        # The restarted worker pulls at the next push: the next purchase's.
        await device.account.buy(stub_corpus_import.book_ids[LATER])
        await device.wait_complete(book_id)
        await device.wait_complete(stub_corpus_import.book_ids[LATER])
