"""Frames are sealed to their book; content keys open only on the device they were wrapped for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from daemon.device_key import load_or_create_device_key
from daemon.errors import ConfigError, FrameAuthError, KeyUnwrapError
from daemon.protocol.crypto import (
    FRAME_AAD,
    SEAL_CHUNK,
    SealedFrame,
    new_content_key,
    open_frame,
    open_whole_frame,
    seal_frame,
    sealed_size,
    unwrap_content_key,
    wrap_content_key,
)

KEY = new_content_key()
FRAME = b"(compressed chapter bytes)" * 100


def test_a_sealed_frame_opens_and_seals_the_same_way_every_time() -> None:
    sealed = seal_frame(KEY, "bk_a", FRAME)
    assert open_frame(KEY, "bk_a", sealed) == FRAME
    # Deterministic: an unchanged frame keeps its bytes in every version of the book.
    assert seal_frame(KEY, "bk_a", FRAME) == sealed
    assert seal_frame(KEY, "bk_a", FRAME + b"!")[:8] != sealed[:8]  # a new nonce


@pytest.mark.faults(19)
def test_a_frame_moved_to_another_book_is_refused() -> None:
    sealed = seal_frame(KEY, "bk_a", FRAME)
    with pytest.raises(FrameAuthError, match="bk_b"):
        open_frame(KEY, "bk_b", sealed)


@pytest.mark.faults(14, 21)
@pytest.mark.parametrize("position", [0, 12, 100, -1])
def test_a_flipped_bit_anywhere_is_refused(position: int) -> None:
    sealed = bytearray(seal_frame(KEY, "bk_a", FRAME))
    sealed[position] ^= 0x01
    with pytest.raises(FrameAuthError):
        open_frame(KEY, "bk_a", bytes(sealed))
    with pytest.raises(FrameAuthError, match="not a sealed frame"):
        open_frame(KEY, "bk_a", bytes(sealed[:20]))


BIG = os.urandom(3 * SEAL_CHUNK + 100)  # four chunks


@pytest.mark.faults(19)
def test_a_frame_opens_a_chunk_at_a_time_and_each_chunk_only_in_its_place() -> None:
    sealed = seal_frame(KEY, "bk_a", BIG)
    frame = SealedFrame.in_memory(KEY, "bk_a", sealed)
    assert (frame.chunks, frame.payload_size) == (4, len(BIG))
    assert len(sealed) == sealed_size(len(BIG)) == 8 + len(BIG) + 4 * 16
    assert frame.chunk(2) == BIG[2 * SEAL_CHUNK : 3 * SEAL_CHUNK]
    head, body = sealed[:8], sealed[8:]
    sealed_chunks = [body[i : i + SEAL_CHUNK + 16] for i in range(0, len(body), SEAL_CHUNK + 16)]
    reordered = head + b"".join([sealed_chunks[1], sealed_chunks[0], *sealed_chunks[2:]])
    with pytest.raises(FrameAuthError, match="chunk 0 of a frame of bk_a"):
        SealedFrame.in_memory(KEY, "bk_a", reordered).chunk(0)
    # Dropping the last chunk leaves a frame whose new last chunk was not sealed as the last.
    dropped = head + b"".join(sealed_chunks[:3])
    with pytest.raises(FrameAuthError, match="chunk 2"):
        open_frame(KEY, "bk_a", dropped)
    # A chunk from another frame of the same book carries that frame's nonce.
    other = seal_frame(KEY, "bk_a", os.urandom(len(BIG)))
    spliced = sealed[: 8 + SEAL_CHUNK + 16] + other[8 + SEAL_CHUNK + 16 :]
    with pytest.raises(FrameAuthError, match="chunk 1"):
        open_frame(KEY, "bk_a", spliced)


def test_a_frame_sealed_whole_by_an_older_daemon_still_opens() -> None:
    nonce = bytes(12)
    sealed = nonce + ChaCha20Poly1305(KEY).encrypt(nonce, FRAME, FRAME_AAD + b"bk_a")
    assert open_whole_frame(KEY, "bk_a", sealed) == FRAME
    with pytest.raises(FrameAuthError):
        open_whole_frame(KEY, "bk_b", sealed)


@pytest.mark.faults(21)
def test_a_content_key_opens_only_on_its_device_and_for_its_book() -> None:
    mine, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ephemeral, wrapped = wrap_content_key(mine.public_key(), KEY, "bk_a")
    assert unwrap_content_key(mine, ephemeral, wrapped, "bk_a") == KEY
    with pytest.raises(KeyUnwrapError):
        unwrap_content_key(other, ephemeral, wrapped, "bk_a")
    with pytest.raises(KeyUnwrapError):
        unwrap_content_key(mine, ephemeral, wrapped, "bk_b")
    with pytest.raises(KeyUnwrapError):
        unwrap_content_key(mine, ephemeral, "not base64!", "bk_a")


def test_the_device_key_file_is_private_and_refused_when_it_is_not(tmp_path: Path) -> None:
    path = tmp_path / "state" / "device.key"
    key = load_or_create_device_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_device_key(path).private_bytes_raw() == key.private_bytes_raw()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_device_key(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="5 bytes"):
        load_or_create_device_key(path)
