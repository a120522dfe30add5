"""Frame codec: the only code that compresses and decompresses book frames.

Decoding is bounded before it starts. zstd's one-shot decompress trusts the size a frame header
claims and ignores the window limit when a size is present, so every frame is checked first: its
header must declare exactly the plaintext size the signed manifest gives, a window within the
device's cap, and no bytes may follow the frame. Only then is it decoded, and zstd itself refuses
to produce more than the declared content size.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import zstandard

from daemon.errors import DecodeError, DictionaryError
from daemon.protocol.manifest import MAX_DICTIONARY_BYTES, MAX_FRAME_PLAIN

DEFAULT_WINDOW_CAP = 8 * 1024 * 1024  # bytes; profiles may lower it
# What a zstd decoder holds beside its window, at most: its tables (94 KiB) and a block's input
# buffer (128 KiB), by ZstdDecompressor.memory_size() with zstd 1.5.
ZSTD_CONTEXT_BYTES = 224 * 1024
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

    @classmethod
    def verified(cls, data: bytes, sha256: str) -> Dictionary:
        dictionary = cls(data)
        if dictionary.sha256 != sha256:
            raise DictionaryError(f"dictionary {sha256[:16]} does not match its hash")
        return dictionary

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(level=level, dict_data=self._zdict, write_content_size=True)

    def decompressor(self, window_cap: int) -> zstandard.ZstdDecompressor:
        """A decompressor of its own for each frame: its decompressobj()s share its context, so
        two frames decoding by turns through one would corrupt each other. The digested
        dictionary is kept inside `_zdict`, so a new one costs microseconds."""
        return zstandard.ZstdDecompressor(dict_data=self._zdict, max_window_size=window_cap)


def train_dictionary(samples: Sequence[bytes], size: int) -> Dictionary:
    """Train a dictionary on text resources (the service does this once for its catalog)."""
    buffers: list[bytes | bytearray | memoryview[int]] = list(samples)
    return Dictionary(zstandard.train_dictionary(size, buffers).as_bytes())


def compress_frame(
    plain: bytes,
    level: int = COMPRESSION_LEVEL,
    dictionary: Dictionary | None = None,
    block_ends: Sequence[int] = (),
) -> bytes:
    """One zstd frame of `plain`, its size declared, with a block ending at each of
    `block_ends` (offsets into `plain`). zstd decodes a block whole, so where blocks end bounds
    what a read decodes beyond the resource it wants (server_stub.packaging chooses them); the
    window still spans the frame, so matches reach across block ends and the ratio holds.
    """
    if dictionary is None:
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    else:
        compressor = dictionary.compressor(level)
    cuts = sorted({end for end in block_ends if 0 < end < len(plain)})
    if not cuts:
        return compressor.compress(plain)
    stream = compressor.compressobj(size=len(plain))
    out = []
    with memoryview(plain) as view:
        for start, end in zip([0, *cuts], [*cuts, len(plain)], strict=True):
            out.append(stream.compress(view[start:end]))
            if end < len(plain):
                out.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    out.append(stream.flush())
    return b"".join(out)


def encode_frame(
    plain: bytes,
    level: int = COMPRESSION_LEVEL,
    dictionary: Dictionary | None = None,
    block_ends: Sequence[int] = (),
) -> tuple[str, bytes]:
    """Compress one frame's plaintext the smallest way: with the dictionary (which helps small
    frames of markup), without it (which wins on large frames), or raw (JPEG, PNG)."""
    candidates = [("raw", plain), ("zstd", compress_frame(plain, level, None, block_ends))]
    if dictionary is not None:
        candidates.append(("zstd-dict", compress_frame(plain, level, dictionary, block_ends)))
    return min(candidates, key=lambda c: len(c[1]))


# A manifest is compressed at every request (it is signed for one device at one moment), on the
# purchase's critical path: level 19 took 1.7 s for mahabharata's 615 KB manifest (25 KB), level 9
# 72 ms (32 KB: 7 KB more is 55 ms on 3G).
DOCUMENT_LEVEL = 9


def compress_document(data: bytes) -> bytes:
    """Compress a document (a manifest) whole, with its size written for decode_bounded."""
    return zstandard.ZstdCompressor(level=DOCUMENT_LEVEL, write_content_size=True).compress(data)


def decode_bounded(data: bytes, max_size: int) -> bytes:
    """Decode one zstd frame whose header declares a size of at most `max_size`."""
    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as e:
        raise DecodeError(f"not a zstd frame: {e}") from e
    if not 0 < size <= max_size:
        raise DecodeError(f"zstd frame declares {size} bytes, the limit is {max_size}")
    return decode_frame(data, "zstd", size, DEFAULT_WINDOW_CAP, max_plain=max_size)


def _frame_decompressor(
    header: bytes,
    codec: str,
    plain_size: int,
    payload_size: int,
    window_cap: int,
    dictionary: Dictionary | None,
    max_plain: int,
) -> zstandard.ZstdDecompressor | None:
    """The decompressor for one frame of `payload_size` compressed bytes, beginning with
    `header`, whose header passed every bound; None for a raw frame."""
    if not 0 < plain_size <= max_plain:
        raise DecodeError(f"declared plaintext size {plain_size} is outside (0, {max_plain}]")
    if codec == "raw":
        if payload_size != plain_size:
            raise DecodeError(f"raw frame is {payload_size} bytes, manifest says {plain_size}")
        return None
    if codec not in ("zstd", "zstd-dict"):
        raise DecodeError(f"unknown codec {codec!r}")
    if codec == "zstd-dict" and dictionary is None:
        raise DictionaryError("the frame needs a dictionary that is not on the device")
    try:
        params = zstandard.get_frame_parameters(header)
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
        return dictionary.decompressor(window_cap)
    if params.dict_id != 0:
        raise DecodeError(f"zstd frame needs dictionary {params.dict_id}, none is named")
    return zstandard.ZstdDecompressor(max_window_size=window_cap)


# A zstd block decodes to at most 128 KiB, but a 4-byte RLE block does that too: a 32 KB frame
# of them decodes to 1 GiB, and zstd checks the size its header declares only at the frame's
# end, so one decompress call fed the whole frame grew the process by a GiB before any error
# (issue 24 #1, #2). Each call is fed at most this many blocks, and the plaintext is counted
# against the declared size after every call.
BLOCK_PLAIN_MAX = 128 * 1024
_BLOCKS_PER_FEED = 8


class _BlockFence:
    """Where a zstd frame's blocks begin, read from their 3-byte headers as the compressed
    bytes go by, to cut each feed after `_BLOCKS_PER_FEED` blocks."""

    def __init__(self, frame_start: bytes) -> None:
        descriptor = frame_start[4]
        single_segment = bool(descriptor & 0x20)
        self._next = (  # where the first block header begins: after the frame header
            5
            + (0 if single_segment else 1)
            + (0, 1, 2, 4)[descriptor & 3]
            + (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        )
        self._fed = 0
        self._held = b""  # the start of a block header fed already, the rest still to come
        self._ended = False  # the last block is fed: a checksum, or trailing bytes, follow

    def allowance(self, view: memoryview, most: int) -> int:
        """How many bytes of `view` (which goes on where the last feed ended) to feed next,
        at most `most`; the caller feeds exactly that many."""
        limit = cut = min(most, len(view))
        blocks = 0
        while not self._ended:
            at = self._next - self._fed  # < 0 while a header began in an earlier feed
            if at >= limit:
                break
            header = self._held + bytes(view[max(at, 0) : at + 3])
            if len(header) < 3:  # the header goes on past this view
                if at > 0:
                    cut = at
                else:
                    self._held = header
                break
            blocks += 1
            if blocks > _BLOCKS_PER_FEED:
                cut = at
                break
            bits = int.from_bytes(header, "little")
            kind, size = (bits >> 1) & 3, bits >> 3
            self._next += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
            self._held = b""
            self._ended = bool(bits & 1)
        self._fed += cut
        return cut


def _counted(decoded: int, plain_size: int) -> None:
    if decoded > plain_size:
        raise DecodeError(f"zstd frame decodes past the {plain_size} bytes it declares")


def _check_end(
    decoder: zstandard.ZstdDecompressionObj, decoded: int, plain_size: int, unfed: int = 0
) -> None:
    """The frame ended where the data did, at the declared size. `unfed`: bytes not yet given
    to the decoder, which follow the frame if it has ended."""
    if not decoder.eof:
        raise DecodeError("zstd frame is truncated")
    if decoder.unused_data or unfed:
        raise DecodeError(f"{len(decoder.unused_data) + unfed} bytes follow the zstd frame")
    if decoded != plain_size:
        raise DecodeError(f"zstd frame decoded to {decoded} bytes, manifest says {plain_size}")


def decode_frame(
    data: bytes,
    codec: str,
    plain_size: int,
    window_cap: int,
    dictionary: Dictionary | None = None,
    max_plain: int = MAX_FRAME_PLAIN,
) -> bytes:
    """Decode one frame that already matched its hash and authenticated; raise DecodeError."""
    decompressor = _frame_decompressor(
        data, codec, plain_size, len(data), window_cap, dictionary, max_plain
    )
    if decompressor is None:
        return data
    decoder = decompressor.decompressobj()
    fence = _BlockFence(data)
    pieces, decoded, rest = [], 0, memoryview(data)
    try:
        while rest and not decoder.eof:
            n = fence.allowance(rest, len(rest))
            piece = decoder.decompress(rest[:n])
            rest = rest[n:]
            decoded += len(piece)
            _counted(decoded, plain_size)
            pieces.append(piece)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd frame is corrupt: {e}") from e
    _check_end(decoder, decoded, plain_size, len(rest))
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# Plaintext handed out without a copy: a whole decoded piece, or a view of part of one.
Buffer = bytes | memoryview


class ChunkSource(Protocol):
    """A frame's compressed bytes, authenticated a chunk at a time (protocol.crypto.SealedFrame)."""

    @property
    def chunk_size(self) -> int: ...  # bytes per chunk; the last one may be shorter

    @property
    def payload_size(self) -> int: ...  # compressed bytes in all

    def chunk(self, index: int) -> bytes: ...


class WholePayload:
    """A ChunkSource of one chunk: compressed bytes already authenticated whole."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def chunk_size(self) -> int:
        return max(1, len(self._data))

    @property
    def payload_size(self) -> int:
        return len(self._data)

    def chunk(self, index: int) -> bytes:
        if index != 0:
            raise DecodeError(f"a whole payload has no chunk {index}")
        return self._data


class FrameDecoder:
    """One frame, decoded only as far as reads need: a reader turning to the first chapter of a
    2 MiB frame pays for that chapter (and the chunks of it that must be authenticated), not for
    the frame. Bounded exactly as `decode_frame` (the header is checked before any decoding, and
    the end of the frame when it is reached); raises DecodeError. Each read names the source of
    the frame's chunks as it is now (a store read inside the caller's snapshot), so the decoder
    holds decoding state only, never a database handle.

    The plaintext is kept as the pieces zstd gave, never copied into one growing buffer: growing
    a 2 MiB bytearray step by step reallocates and copies it tens of times, which cost three
    times the decoding itself and left the heap fragmented.
    """

    # Compressed bytes fed to zstd per step: small, so a read overshoots what it needs by little
    # (about STEP times the compression ratio), large enough that steps cost nothing.
    STEP = 4096

    def __init__(
        self,
        source: ChunkSource,
        codec: str,
        plain_size: int,
        window_cap: int,
        dictionary: Dictionary | None = None,
    ) -> None:
        self.plain_size = plain_size
        self._payload_size = source.payload_size
        # A zstd frame's header is in its first chunk; a raw frame needs none of it yet.
        first = b"" if codec == "raw" else source.chunk(0)
        decompressor = _frame_decompressor(
            first, codec, plain_size, source.payload_size, window_cap, dictionary, MAX_FRAME_PLAIN
        )
        self._zstd = decompressor  # counted while it decodes: memory_size() is its real cost
        self._decoder = None if decompressor is None else decompressor.decompressobj()
        self._fence = None if decompressor is None else _BlockFence(first)
        self._raw = decompressor is None  # served chunk by chunk, as it is
        self._pending = memoryview(first)  # authenticated, not yet fed to zstd
        self._next_chunk = 1
        self._fed = 0
        self._pieces: list[bytes] = []  # the plaintext decoded so far, in order
        self._ends: list[int] = []  # where each piece ends in the frame
        self._decoded = 0
        self._spent = False  # streamed out whole, holding nothing

    @property
    def complete(self) -> bool:
        return self._decoder is None

    @property
    def decoded(self) -> int:
        """Plaintext bytes decoded and held so far."""
        return self._decoded

    def memory_bytes(self) -> int:
        """What this decoder holds: the plaintext so far, plus zstd's context while decoding:
        its window, its input buffer and its tables, as zstd counts them (about 220 KiB more
        than the window alone, which a cache of many part-decoded small frames had missed)."""
        if self._decoder is None or self._zstd is None:
            return len(self._pending) + self._decoded
        context = max(self.plain_size, self._zstd.memory_size())  # before its first block too
        return len(self._pending) + self._decoded + context

    def slice(self, start: int, end: int, source: ChunkSource) -> bytes:
        """Plaintext bytes [start, end) of the frame, decoding as far as `end` first."""
        segments = self.segments(start, end, source)
        if len(segments) == 1 and isinstance(segments[0], bytes):
            return segments[0]
        return b"".join(segments)

    def segments(self, start: int, end: int, source: ChunkSource) -> list[Buffer]:
        """Bytes [start, end) as views of the pieces decoded, copying none: a 2 MiB chapter is
        served from the pieces zstd gave, not from a second copy of them."""
        if not 0 <= start <= end <= self.plain_size:
            raise DecodeError(f"[{start}, {end}) is outside a frame of {self.plain_size} bytes")
        if self._spent:
            raise ValueError("this frame was streamed out and kept nothing: decode it anew")
        if self._raw:
            return list(self._raw_pieces(start, end, source))
        if self._decoder is not None and self._decoded < end:
            self._decode_to(self._decoder, end, source)
        if start == end:
            return []
        first = bisect.bisect_right(self._ends, start)
        last = bisect.bisect_left(self._ends, end)
        views: list[Buffer] = []
        for i in range(first, last + 1):
            piece, piece_end = self._pieces[i], self._ends[i]
            base = piece_end - len(piece)
            lo, hi = max(start, base) - base, min(end, piece_end) - base
            views.append(piece if (lo, hi) == (0, len(piece)) else memoryview(piece)[lo:hi])
        return views

    def stream(self, source: ChunkSource) -> Iterator[Buffer]:
        """The whole frame, piece by piece as it decodes, keeping none of it: a frame that one
        large resource fills (a picture, a long chapter) is read once, so holding it whole
        would only double what serving it costs. Every bound is checked as in `slice`, the end
        of the frame included, before the last piece is given. Spent afterwards: it holds
        nothing to slice."""
        if self._raw:
            yield from self._raw_pieces(0, self.plain_size, source)
            return
        if self._decoded or self._decoder is None:  # already decoded in part: serve from it
            yield from self.segments(0, self.plain_size, source)
            return
        held = None  # one piece back, so the end check runs before the last piece is given
        for piece in self._decode_on(self._decoder, source, self.STEP, self.plain_size):
            if held is not None:
                yield held
            held = piece
        self._decoded, self._spent = 0, True  # none of it is kept
        if held is not None:
            yield held

    def _raw_pieces(self, start: int, end: int, source: ChunkSource) -> Iterator[Buffer]:
        if start == end:
            return
        size = source.chunk_size
        for index in range(start // size, (end - 1) // size + 1):
            chunk, base = source.chunk(index), index * size
            if start <= base and base + len(chunk) <= end:
                yield chunk
            else:
                lo, hi = max(start, base) - base, min(end, base + len(chunk)) - base
                yield memoryview(chunk)[lo:hi]

    def _chunk_count(self, source: ChunkSource) -> int:
        return -(-self._payload_size // source.chunk_size) if self._payload_size else 1

    def _decode_to(
        self, decoder: zstandard.ZstdDecompressionObj, end: int, source: ChunkSource
    ) -> None:
        # Asked for the whole rest of the frame: whole chunks at a time, which zstd does fastest.
        step = source.chunk_size if end == self.plain_size else self.STEP
        for piece in self._decode_on(decoder, source, step, end):
            self._pieces.append(piece)
            self._ends.append(self._decoded)

    def _decode_on(
        self, decoder: zstandard.ZstdDecompressionObj, source: ChunkSource, step: int, end: int
    ) -> Iterator[bytes]:
        """Feed zstd `step` compressed bytes at a time until `end` bytes are decoded (asked for
        the frame's end, until zstd's frame ends too), yielding each piece it gives; the frame's
        end is checked as soon as it is reached, before the caller goes on."""
        chunks = self._chunk_count(source)
        to_the_end = end == self.plain_size
        try:
            while (self._decoded < end or to_the_end) and not decoder.eof:
                if not self._pending:
                    if self._next_chunk >= chunks:
                        break
                    self._pending = memoryview(source.chunk(self._next_chunk))
                    self._next_chunk += 1
                assert self._fence is not None  # a zstd frame has one
                n = self._fence.allowance(self._pending, step)
                fed, self._pending = self._pending[:n], self._pending[n:]
                self._fed += len(fed)
                piece = decoder.decompress(fed)
                if piece:
                    self._decoded += len(piece)
                    _counted(self._decoded, self.plain_size)
                    yield piece
        except zstandard.ZstdError as e:
            raise DecodeError(f"zstd frame is corrupt: {e}") from e
        if decoder.eof or (self._next_chunk >= chunks and not self._pending):
            self._finish(decoder)

    def _finish(self, decoder: zstandard.ZstdDecompressionObj) -> None:
        _check_end(decoder, self._decoded, self.plain_size, self._payload_size - self._fed)
        self._decoder = self._zstd = None  # frees zstd's window and context
        self._pending = memoryview(b"")
