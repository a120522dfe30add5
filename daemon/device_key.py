"""The device's own secrets, in files only their owner can read (written temp, fsync, rename):
its X25519 key, and the local API's token for TCP clients (`<state>/api-token`)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.errors import ConfigError
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.secrets")
API_TOKEN_BYTES = 32
API_TOKEN_MIN_CHARS = 43  # token_urlsafe(32): 256 bits; anything shorter is not one we wrote
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def load_or_create_device_key(path: Path) -> X25519PrivateKey:
    """This device's X25519 key, created on first use in a file only its owner can read.

    A real device keeps it in a hardware keystore instead (docs/SECURITY.md).
    """
    if not path.exists():
        _write_secret(path, X25519PrivateKey.generate().private_bytes_raw())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(str(path), "device_key", f"readable by others (mode {mode:o}); chmod 600")
    raw = path.read_bytes()
    if len(raw) != 32:
        raise ConfigError(str(path), "device_key", f"{len(raw)} bytes, an X25519 key is 32")
    return X25519PrivateKey.from_private_bytes(raw)


def load_or_create_api_token(path: Path) -> str:
    """The local API's token, created on first use, mode 0600 and of full length (issue 21 #7).

    A whole token in a file others could read is made owner-only (its owner's clients keep it);
    one too short, not of this alphabet or unreadable is replaced by a new one: a five-character
    token left by someone else is as good as none. Either is logged.
    """
    existed = path.exists()
    try:
        token = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode & 0o777
    except (OSError, UnicodeDecodeError):
        token, mode = "", 0o600
    if len(token) < API_TOKEN_MIN_CHARS or not set(token) <= _TOKEN_ALPHABET:
        if existed:
            log_event(_LOG, logging.WARNING, "api_token_replaced", path=path, chars=len(token))
        token = secrets.token_urlsafe(API_TOKEN_BYTES)
        _write_secret(path, token.encode("ascii"))
    elif mode & 0o077:
        os.chmod(path, 0o600)
        log_event(_LOG, logging.WARNING, "api_token_mode_repaired", path=path, mode=f"{mode:o}")
    return token


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.unlink(missing_ok=True)  # left by a crash, maybe with another mode
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
