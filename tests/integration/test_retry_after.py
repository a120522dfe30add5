"""A busy service's Retry-After is honoured (issue 24 #5: the device retried after 0.1-0.9 s
against Retry-After: 20): a real daemon against the stub answering the changes feed 503."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.client import AccountClient
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import admin, running_device

RETRY_AFTER_S = 4  # above the library pull's first backoff (at most 2 s)


@pytest.mark.faults(7)
async def test_a_503_with_retry_after_is_retried_no_sooner(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids["idpf_wasteland.epub"]
    async with running_stub(corpus_stub_data, port=0, faults=True) as stub:
        # Bought before the device starts, so that its first pull is what finds the purchase (one
        # bought while it runs comes with the push, and no pull is needed).
        account = AccountClient(stub.url)
        await account.create_account("test reader")
        await account.buy(book_id)
        rule = {"route": "changes", "kind": "error", "status": 503, "retry_after": RETRY_AFTER_S}
        await admin(stub.url, "DELETE", "/v1/admin/requests")
        await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [rule]})
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "d", account=account
        ) as device:
            await device.wait_for(book_id, lambda b: True)
        log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
        pulls = [r for r in log if r["path"] == "/v1/library/changes"]
        assert [r["status"] for r in pulls[:2]] == [503, 200]
        assert pulls[1]["at"] - pulls[0]["at"] >= RETRY_AFTER_S
