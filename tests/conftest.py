"""Fixtures shared by every test: where the real EPUB corpus lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _corpus_dir() -> Path:
    configured = os.environ.get("SHELFSYNC_CORPUS")
    return Path(configured) if configured else REPO.parent / "shared" / "corpus" / "epub"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real corpus (../shared/corpus/epub beside the checkout, or $SHELFSYNC_CORPUS)."""
    path = _corpus_dir()
    if not any(path.glob("*.epub")):
        pytest.fail(f"EPUB corpus not found at {path}; set SHELFSYNC_CORPUS")
    return path


@pytest.fixture(scope="session")
def corpus_books(corpus_dir: Path) -> list[Path]:
    return sorted(corpus_dir.glob("*.epub"))
