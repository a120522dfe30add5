"""SIGKILL while notes are saved, pushed and pulled (FAULTS.md #3): nothing lost, nothing twice.

The daemon runs as a real subprocess and kills itself at a named kill point (daemon.killpoints),
the n-th time it passes it. Each test arms one point and chains its counts on one device: before
each run the device has new offline edits waiting (written as the local API writes them) and
another device of the account has pushed new changes to pull; then the daemon starts, syncs and
dies at the point. A last clean run syncs everything. Then every op the device made is on the
service exactly once (its stored op count), the device and the service hold the same states,
and nothing is left in the outbox. 53 kill points in all, on a one-book stub.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.notes.store import NotesStore
from daemon.protocol import annotation_input, merge
from daemon.protocol.hlc import HybridClock
from daemon.store import Store
from server_stub.app import RunningStub, running_stub
from tests.conftest import StubImport
from tests.integration.harness import spawn_daemon
from tests.integration.notes_helpers import BOOK_FILE, BareDevice, anchor, import_one_book

POINTS: dict[str, range] = {
    "annotation_saved": range(1, 11),  # committed, before the API's answer
    "annotation_push_sending": range(1, 2),
    "annotation_push_acked": range(1, 2),  # the service applied the batch, the outbox is whole
    "annotation_trim_row": range(1, 19),  # inside the outbox trim transaction
    "annotation_trimmed": range(1, 2),
    "annotation_pull_received": range(1, 2),
    "annotation_pull_row": range(1, 19),  # inside the transaction joining a page
    "annotation_pull_applied": range(1, 2),
    "popular_received": range(1, 2),
    "popular_cursor_saved": range(1, 2),  # inside the transaction storing a page
}
SEEDED_PER_RUN = 20  # offline edits waiting before each run (more than any trim_row count)
PEER_PER_RUN = 20  # changes by the other device before each run (more than any pull_row count)


def test_there_are_at_least_50_kill_points() -> None:
    assert sum(len(counts) for counts in POINTS.values()) >= 50


@pytest.fixture(scope="module")
def one_book(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> StubImport:
    return import_one_book(
        tmp_path_factory.mktemp("kill-library"), tmp_path_factory.mktemp("kill-stub"), corpus_dir
    )


@dataclass
class Rig:
    stub: RunningStub
    account: AccountClient
    account_id: str
    peer: BareDevice
    book_id: str
    state: Path
    device_id: str = ""
    made: int = 0  # ops the device committed: what the service must end up holding
    runs: int = 0


async def start_daemon(rig: Rig, kill_at: str | None) -> asyncio.subprocess.Process:
    return await spawn_daemon(rig.stub, rig.state, rig.account.account_token, kill_at)


async def stop(daemon: asyncio.subprocess.Process) -> None:
    if daemon.returncode is None:
        daemon.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(daemon.communicate(), 30)
    assert daemon.returncode == 0, err


async def serving(api: LocalApiClient, daemon: asyncio.subprocess.Process) -> None:
    """The killed daemon left its socket file behind: wait until the new one answers."""
    for _ in range(1000):
        assert daemon.returncode is None, "daemon exited"
        try:
            await api.status()
            return
        except (aiohttp.ClientConnectionError, OSError):
            await asyncio.sleep(0.01)
    raise AssertionError("the daemon never answered")


def seed_offline_edits(rig: Rig) -> None:
    """Edits made while the daemon was not running, written as the local API writes them."""
    notes = NotesStore.open(rig.state / "shelfsync.db")
    clock = HybridClock(rig.device_id, notes.clock_floor())
    try:
        existing = [item for item, _ in notes.items(rig.book_id, False) if merge.is_created(item)][
            :4
        ]
        for i in range(SEEDED_PER_RUN):
            stamp = clock.tick(int(time.time() * 1000))
            op_id = f"op_seed{rig.runs:03d}x{i:03d}"
            if i < len(existing):  # a note edit of something known (maybe the peer's)
                delta = merge.edit_delta(
                    existing[i], stamp, merge.Edit({}, f"run {rig.runs} edit {i}", None)
                )
            else:
                new = annotation_input.parse_new(
                    {"kind": "note", "anchor": anchor(), "note": f"run {rig.runs} new {i}"}
                )
                delta = merge.create_delta(
                    f"an_seed{rig.runs:03d}x{i:03d}", rig.book_id, stamp, new
                )
            notes.commit_item_edit(delta, op_id, stamp, time.time())
            rig.made += 1
    finally:
        notes.close()


async def peer_changes(rig: Rig) -> None:
    ops = []
    for i in range(PEER_PER_RUN):
        _, op = rig.peer.highlight(f"an_peer{rig.runs:03d}x{i:03d}", rig.book_id, f"words {i}")
        ops.append(op)
    result = await rig.peer.client.push_annotation_ops(ops)
    assert len(result.acked) == len(ops)


async def api_writes(rig: Rig, daemon: asyncio.subprocess.Process, count: int) -> None:
    """Create notes through the local API until the daemon dies on the `count`-th."""
    async with LocalApiClient(rig.state / "api.sock") as api:
        await serving(api, daemon)
        for i in range(count):
            body = {
                "id": f"an_api{rig.runs:03d}x{i:03d}",
                "kind": "note",
                "anchor": anchor(),
                "note": f"typed {i}",
            }
            try:
                status, _ = await api.send("POST", f"/v1/books/{rig.book_id}/annotations", body)
            except (aiohttp.ClientError, OSError):
                rig.made += 1  # committed before the kill point, never answered
                return
            assert status == 201
            rig.made += 1


async def run_killed(rig: Rig, point: str, count: int) -> None:
    rig.runs += 1
    seed_offline_edits(rig)
    await peer_changes(rig)
    daemon = await start_daemon(rig, f"{point}:{count}")
    try:
        if point == "annotation_saved":
            await api_writes(rig, daemon, count)
        _, err = await asyncio.wait_for(daemon.communicate(), 30)
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.communicate()
    assert daemon.returncode == -signal.SIGKILL, f"{point}:{count} never reached: {err!r}"


async def run_clean_and_check(rig: Rig) -> None:
    started = time.time()
    daemon = await start_daemon(rig, None)
    try:
        async with LocalApiClient(rig.state / "api.sock") as api:
            await serving(api, daemon)
            for _ in range(3000):
                status = (await api.status())["annotations"]
                if status["outbox_depth"] == 0 and (status["last_sync_at"] or 0) > started:
                    break
                await asyncio.sleep(0.01)
            assert status["outbox_depth"] == 0, status
            assert status["rejected"] == 0, status
    finally:
        await stop(daemon)

    # Nothing applied twice, nothing lost: the service holds each op the device made once.
    assert rig.stub.store.annotation_op_count(rig.account_id, rig.device_id) == rig.made
    # And the device holds what the service holds.
    service = rig.stub.store.annotation_changes(rig.account_id, "nobody", 0, 100_000, 2**40)
    store = Store.open(rig.state / "shelfsync.db")
    assert store.integrity_check() == "ok"
    store.close()
    notes = NotesStore.open(rig.state / "shelfsync.db")
    try:
        for _, target, state in service.entries:
            local = notes.item(target)
            assert local is not None, target
            assert merge.item_to_doc(local) == merge.item_to_doc(
                annotation_input.item_from_doc(json.loads(state))
            )
        assert len(notes.items(rig.book_id, True)) == len(service.entries)
    finally:
        notes.close()


@asynccontextmanager
async def rig_for(one_book: StubImport, tmp_path: Path) -> AsyncIterator[Rig]:
    data = Path(shutil.copytree(one_book.data_dir, tmp_path / "stub-data"))
    async with running_stub(data) as stub:
        account = AccountClient(stub.url)
        await account.create_account("reader")
        book_id = one_book.book_ids[BOOK_FILE]
        await account.buy(book_id)
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        peer = await BareDevice.register(stub.url, account, tmp_path / "peer")
        rig = Rig(stub, account, account_id, peer, book_id, tmp_path / "device")
        try:
            # A first run registers the device and brings the book (notes need it on board).
            daemon = await start_daemon(rig, None)
            try:
                async with LocalApiClient(rig.state / "api.sock") as api:
                    await serving(api, daemon)
                    for _ in range(3000):
                        if any(b["book_id"] == book_id for b in await api.library()):
                            break
                        await asyncio.sleep(0.01)
                    rig.device_id = str((await api.status())["device_id"])
            finally:
                await stop(daemon)
            yield rig
        finally:
            await peer.client.close()


@pytest.mark.faults(3)
@pytest.mark.parametrize("point", list(POINTS))
async def test_killed_while_syncing_notes_loses_nothing_and_applies_nothing_twice(
    one_book: StubImport, tmp_path: Path, point: str
) -> None:
    async with rig_for(one_book, tmp_path) as rig:
        for count in POINTS[point]:
            await run_killed(rig, point, count)
        await run_clean_and_check(rig)
