"""Frame codec: the only code that compresses and decompresses book frames.

Decoding is bounded before it starts. zstd's one-shot decompress trusts the size a frame header
claims and ignores the window limit when a size is present, so every frame is checked first: its
header must declare exactly the plaintext size the signed manifest gives, a window within the
device's cap, and no bytes may follow the frame. Only then is it decoded, and zstd itself refuses
to produce more than the declared content size.
"""

from __future__ import annotations

import zstandard

from daemon.errors import DecodeError
from daemon.manifest import MAX_FRAME_PLAIN

DEFAULT_WINDOW_CAP = 8 * 1024 * 1024  # bytes; profiles may lower it
COMPRESSION_LEVEL = 9  # service side; decode speed does not depend on it


def encode_frame(plain: bytes, level: int = COMPRESSION_LEVEL) -> tuple[str, bytes]:
    """Compress one frame's plaintext; keep it raw when zstd would not shrink it (JPEG, PNG)."""
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(plain)
    if len(packed) < len(plain):
        return "zstd", packed
    return "raw", plain


def decode_frame(data: bytes, codec: str, plain_size: int, window_cap: int) -> bytes:
    """Decode one frame whose bytes already matched the manifest's hash; raise DecodeError."""
    if not 0 < plain_size <= MAX_FRAME_PLAIN:
        raise DecodeError(f"declared plaintext size {plain_size} is outside (0, {MAX_FRAME_PLAIN}]")
    if codec == "raw":
        if len(data) != plain_size:
            raise DecodeError(f"raw frame is {len(data)} bytes, manifest says {plain_size}")
        return data
    if codec != "zstd":
        raise DecodeError(f"unknown codec {codec!r}")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise DecodeError(f"not a zstd frame: {e}") from e
    if params.content_size != plain_size:
        raise DecodeError(
            f"zstd frame declares {params.content_size} bytes, manifest says {plain_size}"
        )
    if params.window_size > window_cap:
        raise DecodeError(f"zstd window {params.window_size} exceeds the cap {window_cap}")
    if params.dict_id != 0:
        raise DecodeError(f"zstd frame needs dictionary {params.dict_id}, none is configured")
    decoder = zstandard.ZstdDecompressor(max_window_size=window_cap).decompressobj()
    try:
        plain = decoder.decompress(data)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd frame is corrupt: {e}") from e
    if not decoder.eof:
        raise DecodeError("zstd frame is truncated")
    if decoder.unused_data:
        raise DecodeError(f"{len(decoder.unused_data)} bytes follow the zstd frame")
    if len(plain) != plain_size:
        raise DecodeError(f"zstd frame decoded to {len(plain)} bytes, manifest says {plain_size}")
    return plain
