"""Stub fixtures: catalogs imported once per session, copied per test."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server_stub.app import RunningStub, running_stub
from server_stub.cli import SAMPLE_LIBRARY
from tests.conftest import StubImport, import_into_stub
from tests.stub.helpers import Api, epub_files, write_epub


@pytest.fixture(scope="session")
def small_import(tmp_path_factory: pytest.TempPathFactory) -> StubImport:
    """The sample library plus a synthetic book with two versions (test-book.epub)."""
    library = tmp_path_factory.mktemp("small-library")
    for book in SAMPLE_LIBRARY.glob("*.epub"):
        shutil.copy(book, library / book.name)
    data_dir = tmp_path_factory.mktemp("small-data")
    write_epub(library / "test-book.epub", epub_files(text="First edition"))
    import_into_stub(data_dir, library)
    write_epub(library / "test-book.epub", epub_files(text="Second edition"))
    report = import_into_stub(data_dir, library)
    assert len(report.updated) == 1, report
    assert len(report.unchanged) == 3, report
    ids = {b.path.name: b.book_id for b in (*report.updated, *report.unchanged)}
    return StubImport(data_dir, report, ids)


@pytest.fixture
def stub_data(tmp_path: Path, small_import: StubImport) -> Path:
    """A private copy of the small catalog's data directory."""
    return Path(shutil.copytree(small_import.data_dir, tmp_path / "data"))


@pytest.fixture
async def stub(stub_data: Path) -> AsyncIterator[RunningStub]:
    async with running_stub(stub_data) as running:
        yield running


@pytest.fixture
async def fault_stub(stub_data: Path) -> AsyncIterator[RunningStub]:
    async with running_stub(stub_data, faults=True) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Downloads must see the bytes as sent: no transparent decompression.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def api(http: aiohttp.ClientSession, stub: RunningStub) -> Api:
    return Api(http, stub.url)


@pytest.fixture
def fault_api(http: aiohttp.ClientSession, fault_stub: RunningStub) -> Api:
    return Api(http, fault_stub.url)
