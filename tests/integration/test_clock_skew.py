"""A device whose clock disagrees with the service's still gets its purchases (issue 23 #1).

The order time comes from the service's clock, the device judges with its own: a purchase
must never depend on the two agreeing. 5 minutes ahead once worked and 20 minutes did not (the
book stayed in_cloud for good): the fresh window and "ordered since this device joined" each
compared a service time with a device time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.clock import SystemClock
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.harness import running_device

ALICE = "epubjs_alice.epub"


class SkewedClock(SystemClock):
    """The device's wall clock, set `skew_s` away from the true time (the service's)."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s

    def wall(self) -> float:
        return super().wall() + self.skew_s


@pytest.mark.parametrize("skew_s", [20 * 60.0, 86400.0, -86400.0], ids=["20min", "1day", "-1day"])
async def test_a_purchase_arrives_whatever_the_device_clock_says(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport, skew_s: float
) -> None:
    book = stub_corpus_import.book_ids[ALICE]
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(
            stub.url, stub.public_key_text, tmp_path / "d", clock=SkewedClock(skew_s)
        ) as device,
    ):
        await device.account.buy(book)
        entry = await device.wait_complete(book)
        assert entry["archived"] is False  # bought after the device joined: its to fetch
