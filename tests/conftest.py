"""Fixtures shared by every test: which EPUB corpus the tests read, and a stub catalog of it.

Two corpora. The shipped one, tests/corpus/ (ten real books, SOURCES.md), is enough for every
kind of test, so a clone with nothing beside it passes `make test`. The full developer corpus
(`bench.harness.corpus_location`: $SHELFSYNC_CORPUS, or ../shared/corpus/epub beside the checkout
or beside the repository it was cloned from) is used whenever it is there; it holds every shipped
book and more. A test that needs a book only the full corpus holds says so with
`@pytest.mark.needs_books(name, ...)` and skips, with the reason, on the shipped one.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from bench.harness import CORPUS_VARIABLE, CorpusError, corpus_location
from server_stub.catalog import ImportReport, PackagingSettings, import_library
from server_stub.signing import load_or_create_key
from server_stub.store import Store

REPO = Path(__file__).resolve().parent.parent
# `make arm-check` runs the tests under qemu-user, several times slower: there example generation
# trips hypothesis's too-slow health check and examples its deadline, neither of which is what a
# property test checks (speed claims are benchmarks). `--hypothesis-profile=emulated` lifts both.
settings.register_profile("emulated", deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytest_plugins = ["tests.reliability"]
SHIPPED_CORPUS = REPO / "tests" / "corpus"


@dataclass(frozen=True)
class Corpus:
    path: Path
    where: str  # how it was found, for the report header
    shipped: bool  # the small corpus in tests/corpus, not the full one

    def describe(self) -> str:
        books = len(list(self.path.glob("*.epub")))
        malformed = len(list(self.path.glob("malformed/*.epub")))
        kind = "the shipped test corpus" if self.shipped else "the full corpus"
        line = f"corpus: {self.path} ({kind}, {self.where}: {books} books + {malformed} malformed)"
        if self.shipped:
            line += f"; tests needing the full corpus skip (point ${CORPUS_VARIABLE} at it)"
        return line


def find_corpus() -> Corpus:
    """The full corpus if there is one, else the shipped one.

    Raises:
        CorpusError: $SHELFSYNC_CORPUS names no folder of EPUB files, or one that lacks books of
            the shipped corpus (the tests buy those by name).
    """
    found = corpus_location(REPO)
    if found is None:
        return Corpus(SHIPPED_CORPUS, "no full corpus found", shipped=True)
    path, where = found
    if path.resolve() == SHIPPED_CORPUS.resolve():
        return Corpus(SHIPPED_CORPUS, where, shipped=True)
    lacking = [
        book.relative_to(SHIPPED_CORPUS).as_posix()
        for book in sorted(SHIPPED_CORPUS.rglob("*.epub"))
        if not (path / book.relative_to(SHIPPED_CORPUS)).is_file()
    ]
    if lacking:
        raise CorpusError(
            f"the corpus at {path} ({where}) lacks books of the shipped corpus that the tests"
            f" read: {', '.join(lacking)}"
        )
    return Corpus(path, where, shipped=False)


_CORPUS = pytest.StashKey[Corpus]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[_CORPUS] = find_corpus()
    except CorpusError as e:
        raise pytest.UsageError(
            f"{e}. Unset {CORPUS_VARIABLE} to use the corpus beside the checkout, or else the"
            " shipped one (tests/corpus)."
        ) from e


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_CORPUS].describe()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if config.get_verbosity() < 0:  # -q (make test) shows no header: say it at the end instead
        terminalreporter.write_line(config.stash[_CORPUS].describe())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip (with the reason, at the test's own line) what needs books this corpus lacks."""
    corpus = config.stash[_CORPUS]
    for item in items:
        for marker in item.iter_markers("needs_books"):
            missing = ", ".join(name for name in marker.args if not (corpus.path / name).is_file())
            if missing:
                reason = (
                    f"needs {missing}, which only the full corpus holds"
                    f" (point ${CORPUS_VARIABLE} at it)"
                    if corpus.shipped
                    else f"needs {missing}, which the corpus at {corpus.path} lacks"
                )
                item.add_marker(pytest.mark.skip(reason=reason))


STRAGGLERS_S = 2.0  # a task still running this long after its test is a leak, not a closing


@pytest.fixture(autouse=True)
def _no_task_left(request: pytest.FixtureRequest) -> None:
    """Every async test ends with no task of its own still running (DESIGN.md: every task owned,
    cancelled and awaited): set up before the test's other fixtures, checked after theirs."""
    if inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        request.getfixturevalue("_tasks_checked")


@pytest.fixture
async def _tasks_checked() -> AsyncIterator[None]:
    yield
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:  # what was cancelled or closed just now (a server's handlers) may still be ending
        await asyncio.wait(others, timeout=STRAGGLERS_S)
    left = [t for t in others if not t.done()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    assert not left, "the test left tasks running: " + ", ".join(
        f"{t.get_name()} ({t.get_coro()})" for t in left
    )


@pytest.fixture(scope="session")
def corpus_dir(pytestconfig: pytest.Config) -> Path:
    """The corpus the tests read (`find_corpus`): the full one if found, else tests/corpus."""
    return pytestconfig.stash[_CORPUS].path


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
    """The whole corpus imported into a stub data directory, once per session."""
    data_dir = tmp_path_factory.mktemp("stub-corpus")
    report = import_into_stub(data_dir, corpus_dir)
    books = (*report.imported, *report.updated, *report.unchanged)
    return StubImport(data_dir, report, {b.path.name: b.book_id for b in books})


@pytest.fixture
def corpus_stub_data(tmp_path: Path, stub_corpus_import: StubImport) -> Path:
    """A private copy of the corpus stub data directory: `running_stub(corpus_stub_data)`."""
    return Path(shutil.copytree(stub_corpus_import.data_dir, tmp_path / "stub-data"))
