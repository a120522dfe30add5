"""The device's own X25519 key, in a file only its owner can read (written temp, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.errors import ConfigError


def load_or_create_device_key(path: Path) -> X25519PrivateKey:
    """This device's X25519 key, created on first use in a file only its owner can read.

    A real device keeps it in a hardware keystore instead (docs/SECURITY.md).
    """
    if not path.exists():
        raw = X25519PrivateKey.generate().private_bytes_raw()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(str(path), "device_key", f"readable by others (mode {mode:o}); chmod 600")
    raw = path.read_bytes()
    if len(raw) != 32:
        raise ConfigError(str(path), "device_key", f"{len(raw)} bytes, an X25519 key is 32")
    return X25519PrivateKey.from_private_bytes(raw)
