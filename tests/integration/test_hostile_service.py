"""A hostile or broken service against a running daemon (issue 24): the stub, with its fault
rules or with forged library changes, answers the way a compromised service or a hostile
network would; the daemon gives up what cannot succeed, backs off, says why in status, and a
purchase made meanwhile still arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.profile import PROFILES_DIR
from server_stub.app import RunningStub
from tests.conftest import StubImport
from tests.integration.harness import admin, running_device
from tests.reliability import Figures

BOOK = "cwa_christmas_carol.epub"


def quick_stall_profile(tmp_path: Path) -> Path:
    """The loopback profile with a 2 s stall timeout, so that a given-up drip takes seconds."""
    text = (PROFILES_DIR / "emulator-loopback.toml").read_text(encoding="utf-8")
    text = text.replace("stall_timeout_s = 10 ", "stall_timeout_s = 2 ")
    assert "stall_timeout_s = 2 " in text
    path = tmp_path / "quick-stall.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def requests_to(stub: RunningStub, suffix: str) -> list[dict[str, Any]]:
    log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
    return [r for r in log if r["path"].endswith(suffix)]


@pytest.mark.faults(11)
async def test_a_drip_on_the_feed_and_the_manifest_is_given_up_and_the_purchase_arrives(
    faulty_stub: RunningStub,
    stub_corpus_import: StubImport,
    tmp_path: Path,
    fault_figures: Figures,
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    async with running_device(
        faulty_stub.url,
        faulty_stub.public_key_text,
        tmp_path / "device",
        profile=str(quick_stall_profile(tmp_path)),
    ) as device:
        # Two bytes a second: every read gets a byte well within the per-read timeout, so only
        # a minimum rate over the whole exchange gives these requests up.
        drip = {"kind": "drip", "seconds": 0.5, "times": 1}
        rules = [{**drip, "route": "changes"}, {**drip, "route": "manifest"}]
        await admin(faulty_stub.url, "POST", "/v1/admin/faults", {"rules": rules})
        await device.account.buy(book_id)
        await device.wait_complete(book_id, timeout_s=60)
    for route in ("/library/changes", "/manifest"):
        sent = [r["bytes"] for r in await requests_to(faulty_stub, route)]
        assert min(sent) < 10, f"{route}: no drip given up ({sent})"  # every body is longer
        assert sent[-1] >= 10, f"{route}: never asked again after the drip"
    fault_figures.record(runs=2, wrong_resources=0)
