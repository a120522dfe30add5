"""Packaging: frames cut the plaintext stream exactly, and every corpus book round-trips."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from daemon.protocol.codec import DEFAULT_WINDOW_CAP, Dictionary, decode_frame
from daemon.protocol.crypto import WRAP_ALG, open_frame
from daemon.protocol.manifest import WrappedKey, encode_manifest, parse_manifest
from server_stub.epub import read_epub
from server_stub.packaging import (
    FRAME_SIZE,
    block_ends_in,
    book_id_for,
    build_package,
    cut_frames,
    stamp,
)
from server_stub.store import Store
from tests.builders import CONTENT_KEY
from tests.conftest import StubImport
from tests.stub.helpers import write_epub

WRAPPED = WrappedKey(WRAP_ALG, "AAAA", "AAAA")  # only its shape matters here


@given(st.lists(st.integers(min_value=0, max_value=3 * 64 + 5), max_size=30))
def test_cut_frames_packs_small_resources_whole_and_splits_large_ones(sizes: list[int]) -> None:
    size = 64
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    frames = cut_frames(pieces, size)
    assert b"".join(frames) == b"".join(pieces)
    assert all(0 < len(f) <= size for f in frames)
    # A resource that fits in one frame never straddles two.
    starts = {0}
    for f in frames:
        starts.add(max(starts) + len(f))
    offset = 0
    for piece in pieces:
        if 0 < len(piece) <= size:
            crossing = [s for s in starts if offset < s < offset + len(piece)]
            assert not crossing, (sizes, piece[:1], offset)
        offset += len(piece)


@given(
    st.lists(st.integers(min_value=0, max_value=200), max_size=30),
    st.integers(min_value=1, max_value=100),
)
def test_blocks_end_only_where_resources_end_and_at_least_so_far_apart(
    sizes: list[int], least: int
) -> None:
    pieces = [b"x" * n for n in sizes]
    frames = cut_frames(pieces, 128)
    resource_ends = {sum(sizes[: i + 1]) for i in range(len(sizes))}
    start = 0
    for frame, ends in zip(frames, block_ends_in(frames, pieces, least), strict=True):
        assert ends == sorted(ends)
        assert all(0 < end < len(frame) for end in ends)  # the frame's own end is not listed
        assert all(start + end in resource_ends for end in ends)
        assert all(b - a >= least for a, b in zip([0, *ends], ends, strict=False))
        # No resource end is skipped once a block has reached `least` bytes.
        last = 0
        for end in sorted(e - start for e in resource_ends if start < e < start + len(frame)):
            if end - last >= least:
                assert end in ends
                last = end
        start += len(frame)


def test_cut_frames_examples() -> None:
    assert cut_frames([b"a" * 3, b"b" * 3, b"c" * 3], 8) == [b"aaabbb", b"ccc"]
    assert cut_frames([b"a", b"b" * 20, b"c"], 8) == [b"a", b"b" * 8, b"b" * 8, b"b" * 4 + b"c"]
    assert cut_frames([b"", b"a" * 8, b""], 8) == [b"a" * 8]
    # Media frames have their own, smaller bound; text and media never share a frame.
    kinds = [True, False, True]
    assert cut_frames([b"t" * 6, b"m" * 6, b"u" * 6], 8, kinds, media_frame_size=4) == [
        b"t" * 6,
        b"m" * 4,
        b"m" * 2,
        b"u" * 6,
    ]


def test_book_id_is_identifier_and_language() -> None:
    assert book_id_for("urn:x", "en") == "bk_" + hashlib.sha256(b"urn:x\nen").hexdigest()[:16]
    assert book_id_for(" urn:x ", "EN") == book_id_for("urn:x", "en")
    assert book_id_for("urn:x", "de") != book_id_for("urn:x", "en")


def test_stamp_sets_issue_and_expiry(tmp_path: Path) -> None:
    package = build_package(read_epub(write_epub(tmp_path / "b.epub")), 3, CONTENT_KEY, level=3)
    issued = stamp(package.manifest, 1_764_000_000, WRAPPED)
    assert (issued.issued_at, issued.expires_at) == (1_764_000_000, 1_764_000_000 + 30 * 86400)
    assert parse_manifest(encode_manifest(issued)) == issued
    assert issued.version == 3
    assert issued.frame_size == FRAME_SIZE


def test_every_corpus_package_round_trips(stub_corpus_import: StubImport, corpus_dir: Path) -> None:
    store = Store.open(stub_corpus_import.data_dir)
    try:
        for name, book_id in sorted(stub_corpus_import.book_ids.items()):
            template = store.manifest_template(book_id, 1)
            info = store.package_info(book_id, 1)
            assert template is not None
            assert info is not None
            manifest = parse_manifest(template, template=True)
            content_key = store.content_key(book_id)
            dictionary = None
            if manifest.dictionary is not None:
                raw_dictionary = store.dictionary(manifest.dictionary.sha256)
                assert raw_dictionary is not None
                dictionary = Dictionary.verified(raw_dictionary, manifest.dictionary.sha256)
            package = store.read_package(info.rowid, 0, info.size)
            assert hashlib.sha256(package).hexdigest() == info.sha256
            assert manifest.package_size == len(package) == info.size

            plain = bytearray()
            for frame in manifest.frames:
                data = package[frame.offset : frame.offset + frame.length]
                assert hashlib.sha256(data).hexdigest() == frame.sha256
                assert frame.plain_size <= manifest.frame_size == FRAME_SIZE
                packed = open_frame(content_key, book_id, data)
                plain += decode_frame(
                    packed, frame.codec, frame.plain_size, DEFAULT_WINDOW_CAP, dictionary
                )

            with zipfile.ZipFile(corpus_dir / name) as z:
                entries = {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
            assert {r.path for r in manifest.resources} == set(entries), name
            assert len(manifest.resources) == len(entries)
            for r in manifest.resources:
                assert bytes(plain[r.offset : r.offset + r.size]) == entries[r.path], r.path
            assert (
                parse_manifest(encode_manifest(stamp(manifest, 1_764_000_000, WRAPPED))).book_id
                == book_id
            )
    finally:
        store.close()


@given(
    st.lists(st.integers(min_value=0, max_value=700), max_size=30),
    st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_frames_grow_from_small_first_frames_and_never_mix_text_with_media(
    sizes: list[int], kinds: list[bool]
) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    kinds = kinds[: len(pieces)]
    frames = cut_frames(pieces, 256, kinds, first_frame_size=16)
    assert b"".join(frames) == b"".join(pieces)
    assert all(0 < len(f) <= min(256, 16 << n) for n, f in enumerate(frames))
    # Each frame's bytes come from pieces of one kind only.
    owner = [k for piece, k in zip(pieces, kinds, strict=True) for _ in piece]
    offset = 0
    for f in frames:
        assert len(set(owner[offset : offset + len(f)])) == 1
        offset += len(f)
