"""An idle daemon with a large library leaves its database alone (issue 16): counted in SQL
statements run, the way a scan in a loop would show, not in seconds of CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from daemon.client import AccountClient
from server_stub.app import running_stub
from tests.integration.harness import running_device

ARCHIVED = 5_000
QUIET_S = 5.0  # longer than the receipt worker's 2 s check, which once ran for 10 minutes
AT_MOST = 3  # statements in that while: a look at the library in a loop is thousands of rows


class StatementCount:
    def __init__(self) -> None:
        self.n = 0

    def hook(self, connection: apsw.Connection) -> None:
        connection.exec_trace = self.trace

    def trace(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        self.n += 1
        return True  # run it


@pytest.fixture
def statements() -> Iterator[StatementCount]:
    """Every SQL statement any new apsw connection runs, counted."""
    count = StatementCount()
    apsw.connection_hooks.append(count.hook)
    try:
        yield count
    finally:
        apsw.connection_hooks.remove(count.hook)


async def test_an_idle_daemon_with_5000_archived_books_runs_no_queries(
    tmp_path: Path, corpus_stub_data: Path, statements: StatementCount
) -> None:
    async with running_stub(corpus_stub_data, port=0) as stub:
        account = AccountClient(stub.url)
        await account.create_account("collector")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        seeded = (f"bk_old{i:06d}" for i in range(ARCHIVED))
        stub.store.seed_library(account_id, seeded, at=time.time() - 86400)
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "d", account=account
        ) as device:
            deadline = time.monotonic() + 60
            while (await device.api.status())["books"].get("in_cloud", 0) < ARCHIVED:
                assert time.monotonic() < deadline, "the library never synced"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # the last page's wake-ups (highlights, receipts) settle
            before = statements.n
            await asyncio.sleep(QUIET_S)
            during = statements.n - before
            status = await device.api.status()
    assert during <= AT_MOST, f"{during} statements in {QUIET_S} s of idle"
    assert status["books"] == {"in_cloud": ARCHIVED}
    assert status["not_delivered"] == []
