"""Fixtures the workers' unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real device database in the test's own folder."""
    store = Store.open(tmp_path / "db")
    yield store
    store.close()
