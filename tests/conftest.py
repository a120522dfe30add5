"""Fixtures shared by every test: where the real EPUB corpus lives, and a stub catalog of it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.harness import corpus_location
from server_stub.catalog import ImportReport, PackagingSettings, import_library
from server_stub.signing import load_or_create_key
from server_stub.store import Store

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.reliability"]


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real corpus (`bench.harness.corpus_location`: $SHELFSYNC_CORPUS, or
    ../shared/corpus/epub beside the checkout or beside the repository it was cloned from)."""
    path = corpus_location(REPO)
    if not any(path.glob("*.epub")):
        pytest.fail(f"EPUB corpus not found at {path}; set SHELFSYNC_CORPUS")
    return path


@pytest.fixture(scope="session")
def corpus_books(corpus_dir: Path) -> list[Path]:
    return sorted(corpus_dir.glob("*.epub"))


@dataclass(frozen=True)
class StubImport:
    """A stub data directory with a library imported. Never modify it: copy it per test."""

    data_dir: Path
    report: ImportReport
    book_ids: dict[str, str]  # EPUB file name -> book_id


def import_into_stub(data_dir: Path, library: Path) -> ImportReport:
    """Create (or update) a stub data directory: service key, database, imported library."""
    store = Store.open(data_dir)
    try:
        load_or_create_key(data_dir)
        # A low zstd level: the same format in a fraction of level 19's time.
        return import_library(store, library, settings=PackagingSettings(level=3))
    finally:
        store.close()


@pytest.fixture(scope="session")
def stub_corpus_import(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> StubImport:
    """The whole corpus imported into a stub data directory, once per session (~2 s)."""
    data_dir = tmp_path_factory.mktemp("stub-corpus")
    report = import_into_stub(data_dir, corpus_dir)
    books = (*report.imported, *report.updated, *report.unchanged)
    return StubImport(data_dir, report, {b.path.name: b.book_id for b in books})


@pytest.fixture
def corpus_stub_data(tmp_path: Path, stub_corpus_import: StubImport) -> Path:
    """A private copy of the corpus stub data directory: `running_stub(corpus_stub_data)`."""
    return Path(shutil.copytree(stub_corpus_import.data_dir, tmp_path / "stub-data"))
