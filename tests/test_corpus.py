"""The shipped test corpus (tests/corpus): each file is the one its SOURCES.md row describes, and
together they still cover what the tests need, in a few MB."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from server_stub.epub import EpubError, read_epub
from tests.conftest import SHIPPED_CORPUS

# The repository is cloned onto device builders: the corpus grows only for a reason.
SIZE_BUDGET = 8 * 1024 * 1024
LARGE_IMAGE = 256 * 1024
RTL_LANGUAGES = ("ar", "he", "fa", "ur")
CJK_LANGUAGES = ("ja", "zh", "ko")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
ROW = re.compile(r"^\| (?P<file>[^|]+\.epub) \| (?P<bytes>\d+) \|(?P<rest>.*)$", re.MULTILINE)


def _shipped() -> list[Path]:
    return sorted(SHIPPED_CORPUS.rglob("*.epub"))


def _rows() -> dict[str, re.Match[str]]:
    text = (SHIPPED_CORPUS / "SOURCES.md").read_text()
    return {m["file"]: m for m in ROW.finditer(text) if m["rest"].count("|") > 5}


def _package(path: Path) -> ElementTree.Element:
    with zipfile.ZipFile(path) as z:
        container = z.read("META-INF/container.xml").decode()
        opf = re.search(r'full-path="([^"]+)"', container)
        assert opf is not None, path.name
        return ElementTree.fromstring(z.read(opf[1]))  # noqa: S314 (our own shipped files)


def _language(package: ElementTree.Element) -> str:
    found = package.find(".//{http://purl.org/dc/elements/1.1/}language")
    assert found is not None
    assert found.text
    return found.text.strip().lower()


def _progression(package: ElementTree.Element) -> str | None:
    spine = package.find("{http://www.idpf.org/2007/opf}spine")
    assert spine is not None
    return spine.get("page-progression-direction")


def _largest_image(path: Path) -> int:
    with zipfile.ZipFile(path) as z:
        images = [i for i in z.infolist() if i.filename.lower().endswith(IMAGE_SUFFIXES)]
        return max((i.file_size for i in images), default=0)


def test_every_shipped_file_is_the_one_its_sources_row_describes() -> None:
    rows = _rows()
    shipped = {p.relative_to(SHIPPED_CORPUS).as_posix(): p for p in _shipped()}
    assert sorted(rows) == sorted(shipped)
    for name, path in shipped.items():
        data = path.read_bytes()
        assert int(rows[name]["bytes"]) == len(data), name
        assert f"`{hashlib.sha256(data).hexdigest()[:16]}`" in rows[name]["rest"], name


def test_the_gpl_books_ship_with_the_gpl() -> None:
    gpl = [name for name, row in _rows().items() if "GPL-3.0" in row["rest"].split("|")[3]]
    assert gpl
    assert "GNU GENERAL PUBLIC LICENSE" in (SHIPPED_CORPUS / "licenses/GPL-3.0.txt").read_text()


def test_the_shipped_corpus_covers_what_the_tests_need_in_a_few_mb() -> None:
    books = [p for p in _shipped() if p.parent == SHIPPED_CORPUS]
    packages = [_package(p) for p in books]
    assert {p.get("version") for p in packages} >= {"2.0", "3.0"}
    assert any(
        _language(p).startswith(RTL_LANGUAGES) and _progression(p) == "rtl" for p in packages
    ), "a right-to-left book"
    assert any(_language(p).startswith(CJK_LANGUAGES) for p in packages), "a CJK book"
    assert max(_largest_image(p) for p in books) >= LARGE_IMAGE, "a large image"
    for book in books:
        assert read_epub(book).toc, book.name  # every book imports
    malformed = sorted((SHIPPED_CORPUS / "malformed").glob("*.epub"))
    assert malformed
    for path in malformed:
        with pytest.raises(EpubError):
            read_epub(path)
    assert sum(p.stat().st_size for p in _shipped()) <= SIZE_BUDGET
