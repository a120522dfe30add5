"""Frame decoding is bounded: bombs and lies are refused before memory is spent."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from daemon.errors import DecodeError
from daemon.protocol.codec import (
    ZSTD_CONTEXT_BYTES,
    ChunkSource,
    FrameDecoder,
    WholePayload,
    compress_frame,
    decode_frame,
    encode_frame,
    train_dictionary,
)

CAP = 8 * 1024 * 1024


def test_text_round_trips_compressed() -> None:
    plain = b"<p>It was the best of times, it was the worst of times.</p>\n" * 500
    codec, data = encode_frame(plain)
    assert codec == "zstd"
    assert len(data) < len(plain) // 10
    assert decode_frame(data, codec, len(plain), CAP) == plain


def test_incompressible_bytes_stay_raw() -> None:
    plain = os.urandom(50_000)  # like a JPEG
    codec, data = encode_frame(plain)
    assert (codec, data) == ("raw", plain)
    assert decode_frame(data, "raw", len(plain), CAP) == plain


@pytest.mark.faults(23)
def test_a_frame_claiming_more_than_the_manifest_is_refused() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 3_000_000)
    with pytest.raises(DecodeError, match="declares 3000000 bytes, manifest says 1000"):
        decode_frame(bomb, "zstd", 1000, CAP)


@pytest.mark.faults(23)
def test_a_frame_without_declared_size_is_refused() -> None:
    chunker = zstandard.ZstdCompressor(write_content_size=False)
    streamed = chunker.compressobj()
    data = streamed.compress(b"\0" * 100_000) + streamed.flush()
    with pytest.raises(DecodeError, match="declares"):
        decode_frame(data, "zstd", 100_000, CAP)


def crafted_frame(window_log: int, content: bytes) -> bytes:
    """A valid zstd frame by hand: its header declares `window_log` and the content size."""
    assert 256 <= len(content) < 65536 + 256
    descriptor = 0b0100_0000  # 2-byte content size, no single segment, no checksum, no dict
    window = (window_log - 10) << 3
    size = (len(content) - 256).to_bytes(2, "little")
    block = ((len(content) << 3) | 1).to_bytes(3, "little")  # last block, raw
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor, window]) + size + block + content


@pytest.mark.faults(23)
def test_a_window_over_the_device_cap_is_refused() -> None:
    content = b"x" * 1000
    assert decode_frame(crafted_frame(17, content), "zstd", 1000, CAP) == content
    with pytest.raises(DecodeError, match="window 2147483648 exceeds the cap"):
        decode_frame(crafted_frame(31, content), "zstd", 1000, CAP)


@pytest.mark.faults(23)
def test_trailing_bytes_after_the_frame_are_refused() -> None:
    codec, data = encode_frame(b"chapter one " * 100)
    with pytest.raises(DecodeError, match="follow the zstd frame"):
        decode_frame(data + b"junk", codec, 1200, CAP)


def test_a_truncated_or_corrupt_frame_is_refused() -> None:
    codec, data = encode_frame(b"chapter one " * 1000)
    with pytest.raises(DecodeError):
        decode_frame(data[: len(data) // 2], codec, 12000, CAP)
    with pytest.raises(DecodeError):
        decode_frame(b"not zstd at all", "zstd", 15, CAP)


def test_a_raw_frame_of_the_wrong_size_and_an_unknown_codec_are_refused() -> None:
    with pytest.raises(DecodeError, match="raw frame is 3 bytes"):
        decode_frame(b"abc", "raw", 4, CAP)
    with pytest.raises(DecodeError, match="unknown codec"):
        decode_frame(b"abc", "lz4", 3, CAP)


# A frame of many chapters, as the service packs them: compressible, and large enough that a
# read of the first page stops long before the end.
CHAPTERS = b"".join(
    b"<p>Chapter %d: it was a dark and stormy night.</p>\n" % i for i in range(40_000)
)
CHAPTERS_FRAME = encode_frame(CHAPTERS, level=3)[1]


class Chunks:
    """A ChunkSource over bytes in small chunks (the device's come from the store, sealed), with
    a count of the chunks asked for."""

    def __init__(self, data: bytes, chunk_size: int = 4096) -> None:
        self.data, self.chunk_size, self.payload_size = data, chunk_size, len(data)
        self.asked: list[int] = []

    def chunk(self, index: int) -> bytes:
        self.asked.append(index)
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]


SOURCES = [pytest.param(WholePayload, id="whole"), pytest.param(Chunks, id="chunks")]


def test_a_part_decoded_frame_counts_zstds_whole_context_not_its_window_alone() -> None:
    """What the frame cache is bounded by: beside its window, a decoder holds its tables and
    an input buffer (about 220 KiB), and a cache of many part-decoded frames went past its
    bound by that much for each."""
    plain = CHAPTERS[: 512 * 1024]
    source = Chunks(encode_frame(plain, level=3)[1])
    decoder = FrameDecoder(source, "zstd", len(plain), CAP)
    assert decoder.slice(0, 100, source) == plain[:100]
    assert not decoder.complete
    assert decoder.memory_bytes() > decoder.decoded + len(plain) + 64 * 1024
    assert decoder.memory_bytes() <= decoder.decoded + len(plain) + ZSTD_CONTEXT_BYTES
    decoder.slice(0, len(plain), source)
    assert decoder.memory_bytes() == len(plain)  # complete: the context is freed


@pytest.mark.parametrize("source_of", SOURCES)
def test_reading_the_first_page_of_a_frame_decodes_little_of_it(
    source_of: Callable[[bytes], ChunkSource],
) -> None:
    source = source_of(CHAPTERS_FRAME)
    decoder = FrameDecoder(source, "zstd", len(CHAPTERS), CAP)
    assert decoder.slice(0, 1000, source) == CHAPTERS[:1000]
    assert not decoder.complete
    assert decoder.memory_bytes() < len(CHAPTERS_FRAME) + len(CHAPTERS) + len(CHAPTERS) // 2
    assert decoder.slice(len(CHAPTERS) - 10, len(CHAPTERS), source) == CHAPTERS[-10:]
    assert decoder.complete
    assert decoder.slice(5, 17, source) == CHAPTERS[5:17]


def test_only_the_chunks_a_read_needs_are_opened() -> None:
    source = Chunks(CHAPTERS_FRAME)
    decoder = FrameDecoder(source, "zstd", len(CHAPTERS), CAP)
    decoder.slice(0, 1000, source)
    assert source.asked == [0]  # the first page of the frame is in its first chunk
    media = os.urandom(50_000)
    source = Chunks(media)
    decoder = FrameDecoder(source, "raw", len(media), CAP)
    assert decoder.slice(20_000, 21_000, source) == media[20_000:21_000]
    assert source.asked == [4, 5]  # a picture inside a frame of pictures: its own chunks only


@given(st.lists(st.tuples(st.integers(0, len(CHAPTERS)), st.integers(0, 70_000)), max_size=12))
def test_any_sequence_of_reads_returns_the_frame_bytes(reads: list[tuple[int, int]]) -> None:
    source = Chunks(CHAPTERS_FRAME)
    decoder = FrameDecoder(source, "zstd", len(CHAPTERS), CAP)
    for start, length in reads:
        end = min(len(CHAPTERS), start + length)
        assert decoder.slice(start, end, source) == CHAPTERS[start:end]


@pytest.mark.parametrize("source_of", SOURCES)
def test_progressive_decoding_keeps_every_bound(
    source_of: Callable[[bytes], ChunkSource],
) -> None:
    with pytest.raises(DecodeError, match="declares"):
        FrameDecoder(source_of(CHAPTERS_FRAME), "zstd", len(CHAPTERS) - 1, CAP)
    with pytest.raises(DecodeError, match="window 2147483648 exceeds the cap"):
        FrameDecoder(source_of(crafted_frame(31, b"x" * 1000)), "zstd", 1000, CAP)
    junk = source_of(CHAPTERS_FRAME + b"junk")
    decoder = FrameDecoder(junk, "zstd", len(CHAPTERS), CAP)
    assert decoder.slice(0, 100, junk) == CHAPTERS[:100]  # an authenticated prefix is served
    with pytest.raises(DecodeError, match="4 bytes follow the zstd frame"):
        decoder.slice(0, len(CHAPTERS), junk)
    short = source_of(CHAPTERS_FRAME[:-50])
    with pytest.raises(DecodeError, match="truncated"):
        FrameDecoder(short, "zstd", len(CHAPTERS), CAP).slice(0, len(CHAPTERS), short)
    raw = source_of(b"abc")
    with pytest.raises(DecodeError, match="outside a frame"):
        FrameDecoder(raw, "raw", 3, CAP).slice(2, 4, raw)
    with pytest.raises(DecodeError, match="raw frame is 3 bytes"):
        FrameDecoder(raw, "raw", 4, CAP)


def test_two_dictionary_frames_decoded_by_turns_do_not_mix() -> None:
    # Regression: decompressobj()s of one zstandard decompressor share its context, so a reader
    # paging through two frames of one dictionary in turn got "Unknown frame descriptor".
    samples = [
        b"<p class='c%d'>Chapter %d, a page of markup.</p>" % (i % 7, i) for i in range(3000)
    ]
    dictionary = train_dictionary(samples, 8192)
    one, two = CHAPTERS, CHAPTERS.replace(b"stormy", b"starry")
    sources = [Chunks(dictionary.compressor(3).compress(plain)) for plain in (one, two)]
    first, second = (FrameDecoder(s, "zstd-dict", len(one), CAP, dictionary) for s in sources)
    for start in range(0, len(one), 300_000):
        end = min(len(one), start + 300_000)
        assert first.slice(start, end, sources[0]) == one[start:end]
        assert second.slice(start, end, sources[1]) == two[start:end]


# Chapters of about 1,000 bytes each: the service ends a zstd block at chapter ends.
CHAPTER_ENDS = [i * 1_000 for i in range(1, len(CHAPTERS) // 1_000)]


def test_blocks_ended_at_chapters_make_a_page_turn_decode_its_chapter_not_a_block() -> None:
    whole = Chunks(compress_frame(CHAPTERS, 3))
    ended = Chunks(compress_frame(CHAPTERS, 3, block_ends=CHAPTER_ENDS[:50]))
    assert decode_frame(ended.data, "zstd", len(CHAPTERS), CAP) == CHAPTERS
    at_whole = FrameDecoder(whole, "zstd", len(CHAPTERS), CAP)
    at_ended = FrameDecoder(ended, "zstd", len(CHAPTERS), CAP)
    assert at_whole.slice(0, 1_000, whole) == at_ended.slice(0, 1_000, ended) == CHAPTERS[:1_000]
    assert at_whole.decoded >= 100_000  # zstd's own block, most of 128 KiB, decoded whole
    assert at_ended.decoded < 1_000 + FrameDecoder.STEP * 20  # the chapter and what one step holds
    # Ending blocks costs little, even 50 of them on text this repetitive: the window spans
    # the frame, so matches cross block ends (the corpus's cost: docs/BENCHMARKS.md).
    assert len(ended.data) < len(whole.data) * 1.10


def test_streaming_a_whole_frame_keeps_none_of_it_and_checks_its_end_first() -> None:
    source = Chunks(CHAPTERS_FRAME, chunk_size=64 * 1024)
    decoder = FrameDecoder(source, "zstd", len(CHAPTERS), CAP)
    pieces = list(decoder.stream(source))
    assert b"".join(pieces) == CHAPTERS
    assert len(pieces) > 3  # given as it decodes, a step at a time
    assert max(len(p) for p in pieces) < len(CHAPTERS) // 2
    assert decoder.complete
    assert decoder.memory_bytes() == 0
    with pytest.raises(ValueError, match="kept nothing"):
        decoder.slice(0, 10, source)
    junk = Chunks(CHAPTERS_FRAME + b"junk", chunk_size=64 * 1024)
    streamed = FrameDecoder(junk, "zstd", len(CHAPTERS), CAP).stream(junk)
    given_out = [next(streamed)]
    with pytest.raises(DecodeError, match="4 bytes follow the zstd frame"):
        given_out.extend(streamed)
    # The frame failed its end check before its last piece was given: a reader gets a short
    # body, never a whole one from a frame that is not what it claims.
    assert len(b"".join(given_out)) < len(CHAPTERS)


def test_segments_are_views_of_the_decoded_pieces_not_copies() -> None:
    source = Chunks(CHAPTERS_FRAME)
    decoder = FrameDecoder(source, "zstd", len(CHAPTERS), CAP)
    segments = decoder.segments(10, len(CHAPTERS) - 10, source)
    assert len(segments) > 1
    assert b"".join(segments) == CHAPTERS[10:-10]
    assert any(isinstance(s, memoryview) for s in segments)
    assert decoder.memory_bytes() == len(CHAPTERS)  # complete: the plaintext once, no window
