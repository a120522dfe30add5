"""Fixtures for integration tests: the stub with the corpus and fault injection, and a device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server_stub.app import RunningStub, running_stub
from tests.integration.harness import Device, running_device


@pytest.fixture
async def faulty_stub(corpus_stub_data: Path) -> AsyncIterator[RunningStub]:
    """The stub serving the whole corpus, with its fault-injection routes."""
    async with running_stub(corpus_stub_data, port=0, faults=True) as running:
        yield running


@pytest.fixture
async def corpus_device(faulty_stub: RunningStub, tmp_path: Path) -> AsyncIterator[Device]:
    """A device of a new account on `faulty_stub`."""
    async with running_device(
        faulty_stub.url, faulty_stub.public_key_text, tmp_path / "device"
    ) as d:
        yield d
