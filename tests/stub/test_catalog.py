"""Catalog import: the corpus imports, malformed files are refused, restarts repackage nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server_stub import catalog
from server_stub.catalog import PackagingSettings, import_library
from server_stub.packaging import PACKAGE_LAYOUT
from server_stub.store import Store
from tests.conftest import StubImport
from tests.stub.helpers import epub_files, write_epub

SMALL = ["calibre_quick_start_eng.epub", "idpf_wasteland.epub", "cwa_christmas_carol.epub"]
# Why each malformed file of the corpora is refused (the shipped corpus has the second only).
REFUSALS = {
    "epubjs_moby-dick_mimetype-not-first.epub": (
        "'mimetype' is not the first ZIP entry (the first is 'META-INF/')"
    ),
    "idpf_kusamakura-japanese-vertical-writing_missing-audio.epub": (
        "2 manifest item(s) missing from the ZIP: 'OPS/audio/fmse004b.mp3', "
        "'OPS/audio/ulnr0036.mp3'"
    ),
}


def test_whole_stub_corpus_imports(
    stub_corpus_import: StubImport, corpus_books: list[Path]
) -> None:
    report = stub_corpus_import.report
    assert report.refused == []
    assert sorted(b.path for b in report.imported) == corpus_books
    # The calibre guides share one UUID but not a language: one book each.
    assert len(set(stub_corpus_import.book_ids.values())) == len(corpus_books)


def test_reimport_of_the_corpus_packages_nothing(
    corpus_stub_data: Path,
    corpus_dir: Path,
    corpus_books: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unchanged files must be skipped by hash, not repackaged")

    monkeypatch.setattr(catalog, "build_package", refuse)
    store = Store.open(corpus_stub_data)
    try:
        report = import_library(store, corpus_dir)
    finally:
        store.close()
    assert (len(report.imported), len(report.updated), len(report.refused)) == (0, 0, 0)
    assert len(report.unchanged) == len(corpus_books)


def test_malformed_files_are_refused_and_the_rest_import(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    for name in SMALL:
        (library / name).symlink_to(corpus_dir / name)
    malformed = sorted((corpus_dir / "malformed").glob("*.epub"))
    assert malformed
    for path in malformed:
        (library / path.name).symlink_to(path)
    store = Store.open(tmp_path / "data")
    try:
        with caplog.at_level(logging.WARNING, logger="server_stub.catalog"):
            report = import_library(store, library)
        assert sorted(b.path.name for b in report.imported) == sorted(SMALL)
        refused = {p.name: problem for p, problem in report.refused}
        assert refused == {p.name: REFUSALS[p.name] for p in malformed}
        logged = [r.getMessage() for r in caplog.records if "epub_refused" in r.getMessage()]
        assert len(logged) == len(malformed)
        assert all("file=" in m and "problem=" in m for m in logged)
        assert len(store.catalog()) == 3

        again = import_library(store, library)
        assert len(again.unchanged) == 3
        assert not again.imported
        assert not again.updated
        assert len(again.refused) == len(malformed)
    finally:
        store.close()


def test_changed_file_becomes_a_new_version_and_notifies_holders(tmp_path: Path) -> None:
    library = tmp_path / "library"
    book = write_epub(library / "book.epub", epub_files(text="First edition"))
    store = Store.open(tmp_path / "data")
    try:
        first = import_library(store, library)
        book_id = first.imported[0].book_id
        holder, _ = store.create_account("holder", 1.0)
        store.create_account("bystander", 1.0)
        [added] = store.add_to_library(holder, book_id, None, "bought", 2.0)
        assert added.version == 1

        write_epub(book, epub_files(text="Second edition"))
        second = import_library(store, library)
        assert [(b.book_id, b.version) for b in second.updated] == [(book_id, 2)]
        assert [(c.account_id, c.action, c.version) for c in second.changes] == [
            (holder, "update", 2)
        ]
        current = store.book(book_id)
        assert current is not None
        assert current.version == 2
        assert store.manifest_template(book_id, 1) is not None  # old versions stay servable

        # The same content rezipped (other timestamps, other order) is not a new version.
        files = epub_files(text="Second edition")
        write_epub(book, dict(reversed(list(files.items()))))
        third = import_library(store, library)
        assert [b.version for b in third.unchanged] == [2]
        assert not third.updated
        assert len(import_library(store, library).unchanged) == 1
    finally:
        store.close()


def test_a_catalog_packaged_by_an_older_layout_is_repackaged_as_new_versions(
    tmp_path: Path,
) -> None:
    """A stub data folder from before a packaging change (there: manifest format 1) must not keep
    serving what devices can no longer read; devices fetch the new version as an update."""
    library = tmp_path / "library"
    write_epub(library / "book.epub", epub_files(text="Chapter " * 2000))
    store = Store.open(tmp_path / "data")
    try:
        # Level 1 stands for the older layout: the same EPUB, other package bytes.
        first = import_library(store, library, settings=PackagingSettings(level=1))
        book_id = first.imported[0].book_id
        holder, _ = store.create_account("holder", 1.0)
        store.add_to_library(holder, book_id, None, "bought", 2.0)
        assert len(import_library(store, library).unchanged) == 1  # same layout: nothing to do

        store.set_package_layout(PACKAGE_LAYOUT - 1)
        again = import_library(store, library, settings=PackagingSettings(level=3))
        assert [(b.book_id, b.version) for b in again.updated] == [(book_id, 2)]
        assert [(c.account_id, c.action, c.version) for c in again.changes] == [
            (holder, "update", 2)
        ]
        assert store.package_layout() == PACKAGE_LAYOUT
        assert len(import_library(store, library).unchanged) == 1
    finally:
        store.close()


def test_two_files_of_one_book_keep_the_first(tmp_path: Path) -> None:
    library = tmp_path / "library"
    write_epub(library / "a.epub", epub_files(text="one"))
    write_epub(library / "b.epub", epub_files(text="two"))
    store = Store.open(tmp_path / "data")
    try:
        for _ in range(2):  # stable across restarts: no version flip-flop
            report = import_library(store, library)
            assert [p.name for p, _ in report.refused] == ["b.epub"]
            assert "same" in report.refused[0][1]
            assert "a.epub" in report.refused[0][1]
        assert len(store.catalog()) == 1
        assert store.catalog()[0].version == 1
    finally:
        store.close()


def test_missing_library_folder_is_reported(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        report = import_library(store, tmp_path / "nope")
    finally:
        store.close()
    assert report.refused == [(tmp_path / "nope", "the library folder does not exist")]
