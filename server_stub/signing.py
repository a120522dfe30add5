"""The service's Ed25519 keys, its trust roots and manifest signing.

DATA/service.key holds the private key (PKCS#8 PEM, mode 0600), created on first start;
DATA/service.pub holds the public key as base64 of the raw 32 bytes, which is what a device is
provisioned with (daemon.protocol.crypto.public_key_from_text): trust root version 1. Both are
written temp -> fsync -> rename -> fsync(dir), so a crash never leaves a half-written key.

A key rotation (`TrustChain.rotate`: `shelfsync-stub --rotate-key`, or POST /v1/admin/rotate-key)
makes root version N+1 (daemon/protocol/root.py) naming a new key for both roles, signed by the
current root key and the new one: DATA/roots/N.key first, then DATA/roots/N.root, so a crash
between them leaves a key no root names, which the next rotation overwrites. Manifests are then
signed by the newest root's key; devices walk the chain from the root they trust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.errors import ShelfsyncError
from daemon.protocol.crypto import key_id, public_key_to_text, sign_envelope, sign_root_envelope
from daemon.protocol.manifest import Manifest, WrappedKey, encode_manifest
from daemon.protocol.root import Root, encode_root
from server_stub.packaging import stamp

KEY_NAME = "service.key"
PUB_NAME = "service.pub"


class ServiceKeyError(ShelfsyncError):
    """The service key file exists but cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ServiceKey:
    private_key: Ed25519PrivateKey
    key_path: Path
    pub_path: Path

    @property
    def public_key_text(self) -> str:
        return public_key_to_text(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: temp file -> fsync -> rename -> fsync(directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash mid-write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ServiceKeyError(
            f"{path}: cannot load the service key ({e}); restore it from a backup, or "
            "delete it to create a new key (devices provisioned with the old one will "
            "refuse every manifest)"
        ) from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ServiceKeyError(f"{path}: not an Ed25519 private key")
    return loaded


def _pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create_key(data_dir: Path) -> ServiceKey:
    """The service key in `data_dir`, created on first use; service.pub is kept in step."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = data_dir / KEY_NAME
    pub_path = data_dir / PUB_NAME
    if key_path.exists():
        private_key = _load_private_key(key_path)
    else:
        private_key = Ed25519PrivateKey.generate()
        write_atomic(key_path, _pem(private_key), 0o600)
    key = ServiceKey(private_key, key_path, pub_path)
    pub_text = key.public_key_text + "\n"
    if not pub_path.exists() or pub_path.read_text(encoding="ascii", errors="replace") != pub_text:
        write_atomic(pub_path, pub_text.encode("ascii"), 0o644)
    return key


def sign_manifest(
    private_key: Ed25519PrivateKey, template: Manifest, now: float, content_key: WrappedKey
) -> bytes:
    """The signed envelope of `template` for one device, issued at `now` (expires 30 days
    later), carrying the book's content key wrapped for that device."""
    return sign_envelope(private_key, encode_manifest(stamp(template, int(now), content_key)))


class TrustChain:
    """The service's trust roots: version 1 is service.key, each later one DATA/roots/N.*."""

    def __init__(self, root_key: ServiceKey) -> None:
        self._dir = root_key.key_path.parent / "roots"
        self._keys = [root_key.private_key]  # the key of root version i + 1
        self._envelopes: list[bytes] = []  # the envelope of root version i + 2
        while (self._dir / f"{self.version + 1}.root").exists():
            version = self.version + 1
            self._keys.append(_load_private_key(self._dir / f"{version}.key"))
            self._envelopes.append((self._dir / f"{version}.root").read_bytes())

    @property
    def version(self) -> int:
        return len(self._keys)

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self._keys[-1]

    def envelope(self, version: int) -> bytes | None:
        """Root `version`'s envelope (2 and later: version 1 is the provisioned key)."""
        return self._envelopes[version - 2] if 2 <= version <= self.version else None

    def rotate(self, now: float) -> int:
        """A new key for both roles in root version N+1, signed by root N's key and itself."""
        self._dir.mkdir(mode=0o700, exist_ok=True)
        new_key = Ed25519PrivateKey.generate()
        version = self.version + 1
        public = new_key.public_key()
        document = encode_root(Root(version, int(now), (public,), 1, (public,)))
        envelope = sign_root_envelope([self.signing_key, new_key], document)
        write_atomic(self._dir / f"{version}.key", _pem(new_key), 0o600)
        write_atomic(self._dir / f"{version}.root", envelope, 0o644)
        self._keys.append(new_key)
        self._envelopes.append(envelope)
        return version
