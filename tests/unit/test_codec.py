"""Frame decoding is bounded: bombs and lies are refused before memory is spent."""

from __future__ import annotations

import os

import pytest
import zstandard

from daemon.codec import decode_frame, encode_frame
from daemon.errors import DecodeError

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


def test_a_frame_claiming_more_than_the_manifest_is_refused() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 3_000_000)
    with pytest.raises(DecodeError, match="declares 3000000 bytes, manifest says 1000"):
        decode_frame(bomb, "zstd", 1000, CAP)


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


def test_a_window_over_the_device_cap_is_refused() -> None:
    content = b"x" * 1000
    assert decode_frame(crafted_frame(17, content), "zstd", 1000, CAP) == content
    with pytest.raises(DecodeError, match="window 2147483648 exceeds the cap"):
        decode_frame(crafted_frame(31, content), "zstd", 1000, CAP)


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
