"""Frame codec: the only code that compresses and decompresses book frames.

Decoding is bounded before it starts. zstd's one-shot decompress trusts the size a frame header
claims and ignores the window limit when a size is present, so every frame is checked first: its
header must declare exactly the plaintext size the signed manifest gives, a window within the
device's cap, and no bytes may follow the frame. Only then is it decoded, and zstd itself refuses
to produce more than the declared content size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import zstandard

from daemon.errors import DecodeError, DictionaryError
from daemon.manifest import MAX_DICTIONARY_BYTES, MAX_FRAME_PLAIN

DEFAULT_WINDOW_CAP = 8 * 1024 * 1024  # bytes; profiles may lower it
COMPRESSION_LEVEL = 19  # service side, once per book; decode speed does not depend on it


class Dictionary:
    """A zstd dictionary, content-addressed by the SHA-256 of its bytes."""

    def __init__(self, data: bytes) -> None:
        if not 0 < len(data) <= MAX_DICTIONARY_BYTES:
            raise DictionaryError(f"a dictionary of {len(data)} bytes is outside the limits")
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._zdict = zstandard.ZstdCompressionDict(data)
        self.dict_id = self._zdict.dict_id()
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}

    @classmethod
    def verified(cls, data: bytes, sha256: str) -> Dictionary:
        dictionary = cls(data)
        if dictionary.sha256 != sha256:
            raise DictionaryError(f"dictionary {sha256[:16]} does not match its hash")
        return dictionary

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(level=level, dict_data=self._zdict, write_content_size=True)

    def decompressor(self, window_cap: int) -> zstandard.ZstdDecompressor:
        # Digesting a dictionary costs more than a small frame's decode: keep one per cap.
        if window_cap not in self._decompressors:
            self._decompressors[window_cap] = zstandard.ZstdDecompressor(
                dict_data=self._zdict, max_window_size=window_cap
            )
        return self._decompressors[window_cap]


def train_dictionary(samples: Sequence[bytes], size: int) -> Dictionary:
    """Train a dictionary on text resources (the service does this once for its catalog)."""
    buffers: list[bytes | bytearray | memoryview[int]] = list(samples)
    return Dictionary(zstandard.train_dictionary(size, buffers).as_bytes())


def encode_frame(
    plain: bytes, level: int = COMPRESSION_LEVEL, dictionary: Dictionary | None = None
) -> tuple[str, bytes]:
    """Compress one frame's plaintext the smallest way: with the dictionary (which helps small
    frames of markup), without it (which wins on large frames), or raw (JPEG, PNG)."""
    plain_zstd = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(plain)
    candidates = [("raw", plain), ("zstd", plain_zstd)]
    if dictionary is not None:
        candidates.append(("zstd-dict", dictionary.compressor(level).compress(plain)))
    return min(candidates, key=lambda c: len(c[1]))


def compress_document(data: bytes) -> bytes:
    """Compress a document (a manifest) whole, with its size written for decode_bounded."""
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(data)


def decode_bounded(data: bytes, max_size: int) -> bytes:
    """Decode one zstd frame whose header declares a size of at most `max_size`."""
    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as e:
        raise DecodeError(f"not a zstd frame: {e}") from e
    if not 0 < size <= max_size:
        raise DecodeError(f"zstd frame declares {size} bytes, the limit is {max_size}")
    return decode_frame(data, "zstd", size, DEFAULT_WINDOW_CAP, max_plain=max_size)


def decode_frame(
    data: bytes,
    codec: str,
    plain_size: int,
    window_cap: int,
    dictionary: Dictionary | None = None,
    max_plain: int = MAX_FRAME_PLAIN,
) -> bytes:
    """Decode one frame that already matched its hash and authenticated; raise DecodeError."""
    if not 0 < plain_size <= max_plain:
        raise DecodeError(f"declared plaintext size {plain_size} is outside (0, {max_plain}]")
    if codec == "raw":
        if len(data) != plain_size:
            raise DecodeError(f"raw frame is {len(data)} bytes, manifest says {plain_size}")
        return data
    if codec not in ("zstd", "zstd-dict"):
        raise DecodeError(f"unknown codec {codec!r}")
    if codec == "zstd-dict" and dictionary is None:
        raise DictionaryError("the frame needs a dictionary that is not on the device")
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
    if codec == "zstd-dict" and dictionary is not None:
        if params.dict_id not in (0, dictionary.dict_id):
            raise DecodeError(f"zstd frame names dictionary {params.dict_id}, not this one")
        decoder = dictionary.decompressor(window_cap).decompressobj()
    else:
        if params.dict_id != 0:
            raise DecodeError(f"zstd frame needs dictionary {params.dict_id}, none is named")
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
