"""SIGKILL in the middle of a download: the restarted daemon resumes at the first missing frame
and never serves a byte that is not verified."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.protocol.manifest import parse_manifest
from daemon.store import Store
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import admin, spawn_daemon
from tests.integration.test_delivery import assert_reads_back

BOOK = "idpf_moby-dick.epub"  # 7 frames when packaged: frames to die between


async def wait_until_serving(api: LocalApiClient, daemon: asyncio.subprocess.Process) -> None:
    """The killed daemon left its socket file behind: wait until the new one answers."""
    for _ in range(1500):
        assert daemon.returncode is None, "daemon exited"
        try:
            await api.status()
            return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.02)
    raise AssertionError("the restarted daemon never answered")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 30)


@pytest.mark.faults(1, 2)
@pytest.mark.parametrize(
    ("point", "nth", "frames_kept"),
    [("after_frame_commit", 5, 5), ("before_frame_commit", 4, 3), ("after_frame_commit", 1, 1)],
)
async def test_killed_mid_download_resumes_without_refetching_committed_frames(
    corpus_stub_data: Path,
    stub_corpus_import: StubImport,
    corpus_dir: Path,
    tmp_path: Path,
    point: str,
    nth: int,
    frames_kept: int,
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    state = tmp_path / "device"
    async with running_stub(corpus_stub_data, port=0, faults=True) as stub:
        manifest = parse_manifest(stub.store.manifest_template(book_id, 1) or b"", template=True)
        assert len(manifest.frames) > nth, "the book must outlast the kill point"
        account = AccountClient(stub.url)
        await account.create_account("reader")
        daemon = await spawn_daemon(stub, state, account.account_token, f"{point}:{nth}")
        try:
            while not (state / "api.sock").exists():
                assert daemon.returncode is None, "daemon failed to start"
                await asyncio.sleep(0.02)
            await account.buy(book_id)
            await asyncio.wait_for(daemon.communicate(), 60)
        finally:
            await stop(daemon)
        assert daemon.returncode == -signal.SIGKILL

        # What survived the kill: exactly the committed frames, and a sound database. Which
        # frames those are depends on the race of the frames the push brings with the Range
        # for the rest (a busy machine delays either); how many does not.
        store = Store.open(state / "shelfsync.db")
        assert store.integrity_check() == "ok"
        missing = [f.idx for f in store.frames.missing_frames(book_id, 1)]
        store.close()
        assert len(manifest.frames) - len(missing) == frames_kept
        missing_bytes = sum(manifest.frames[i].length for i in missing)

        await admin(stub.url, "DELETE", "/v1/admin/requests")
        daemon = await spawn_daemon(stub, state, account.account_token, None)
        try:
            async with LocalApiClient(state / "api.sock") as api:
                await wait_until_serving(api, daemon)
                for _ in range(3000):
                    [book] = await api.library()
                    if book["state"] == "complete":
                        break
                    await asyncio.sleep(0.02)
                assert book["state"] == "complete"
                log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
                packages = [r for r in log if r["path"].endswith("/package")]
                resume_at = manifest.frames[missing[0]].offset
                assert packages[0]["range"].startswith(f"bytes={resume_at}-")
                fetched = sum(r["bytes"] for r in packages)
                if missing == list(range(missing[0], len(manifest.frames))):
                    assert fetched == missing_bytes  # not one committed byte again
                else:
                    # Held frames between missing ones may be read past (plan.fetch_span: a
                    # short gap costs less than a round trip), never those before the first.
                    assert missing_bytes <= fetched <= manifest.package_size - resume_at
                await assert_reads_back(api, corpus_dir / BOOK)
        finally:
            await stop(daemon)
