"""Frames are sealed to their book; content keys open only on the device they were wrapped for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.crypto import (
    load_or_create_device_key,
    new_content_key,
    open_frame,
    seal_frame,
    unwrap_content_key,
    wrap_content_key,
)
from daemon.errors import ConfigError, FrameAuthError, KeyUnwrapError

KEY = new_content_key()
FRAME = b"(compressed chapter bytes)" * 100


def test_a_sealed_frame_opens_and_seals_the_same_way_every_time() -> None:
    sealed = seal_frame(KEY, "bk_a", FRAME)
    assert open_frame(KEY, "bk_a", sealed) == FRAME
    # Deterministic: an unchanged frame keeps its bytes in every version of the book.
    assert seal_frame(KEY, "bk_a", FRAME) == sealed
    assert seal_frame(KEY, "bk_a", FRAME + b"!")[:12] != sealed[:12]  # a new nonce


def test_a_frame_moved_to_another_book_is_refused() -> None:
    sealed = seal_frame(KEY, "bk_a", FRAME)
    with pytest.raises(FrameAuthError, match="bk_b"):
        open_frame(KEY, "bk_b", sealed)


@pytest.mark.parametrize("position", [0, 12, 100, -1])
def test_a_flipped_bit_anywhere_is_refused(position: int) -> None:
    sealed = bytearray(seal_frame(KEY, "bk_a", FRAME))
    sealed[position] ^= 0x01
    with pytest.raises(FrameAuthError):
        open_frame(KEY, "bk_a", bytes(sealed))
    with pytest.raises(FrameAuthError, match="too short"):
        open_frame(KEY, "bk_a", bytes(sealed[:20]))


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
