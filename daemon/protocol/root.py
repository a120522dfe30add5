"""The trust root: which keys sign manifests, and which keys sign the next root (TUF's root role,
kept small).

Version 1 is the key a device is provisioned with (service.pub): it signs manifests and roots
alike (`pinned_root`). Every later version is a JSON document in a root envelope
(crypto.sign_root_envelope), served at GET /v1/roots/{version}:

    {"type": "shelfsync-root", "version": 2, "issued_at": 1764770000,
     "root_keys": ["<base64 Ed25519>", ...], "root_threshold": 1,
     "signing_keys": ["<base64 Ed25519>", ...]}

Version N+1 is trusted when `root_threshold` of version N's root keys and `root_threshold` of
its own root keys have signed it (content/trust.py verify_root): a device walks the chain one
version at a time, so a stolen signing key cannot issue a root, and a root key rotated out
cannot sign the next one.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.errors import ManifestError
from daemon.protocol.crypto import MAX_ROOT_SIGNATURES

ROOT_TYPE = "shelfsync-root"
MAX_ROOT_VERSION = 2**53
MAX_ISSUED_AT = 2**40
MAX_ROOT_ROTATIONS = 32  # versions walked in one refresh (python-tuf's max_root_rotations)


@dataclass(frozen=True, slots=True)
class Root:
    version: int
    issued_at: int
    root_keys: tuple[Ed25519PublicKey, ...]
    root_threshold: int
    signing_keys: tuple[Ed25519PublicKey, ...]

    def same_signing_keys(self, other: Root) -> bool:
        return _raw(self.signing_keys) == _raw(other.signing_keys)


def _raw(keys: tuple[Ed25519PublicKey, ...]) -> set[bytes]:
    return {k.public_bytes_raw() for k in keys}


def pinned_root(service_key: Ed25519PublicKey) -> Root:
    """Version 1: the provisioned key, for both roles."""
    return Root(1, 0, (service_key,), 1, (service_key,))


def _key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


def encode_root(root: Root) -> bytes:
    return json.dumps(
        {
            "type": ROOT_TYPE,
            "version": root.version,
            "issued_at": root.issued_at,
            "root_keys": [_key_text(k) for k in root.root_keys],
            "root_threshold": root.root_threshold,
            "signing_keys": [_key_text(k) for k in root.signing_keys],
        },
        separators=(",", ":"),
    ).encode()


def _int(doc: dict[str, Any], name: str, low: int, high: int) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(f"trust root: {name} {str(value)[:40]} is outside [{low}, {high}]")
    return value


def _keys(doc: dict[str, Any], name: str) -> tuple[Ed25519PublicKey, ...]:
    texts = doc.get(name)
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_ROOT_SIGNATURES:
        raise ManifestError(f"trust root: {name} must list 1 to {MAX_ROOT_SIGNATURES} keys")
    keys = []
    for text in texts:
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True)))
        except (TypeError, binascii.Error, ValueError) as e:
            raise ManifestError(f"trust root: {name} holds {str(text)[:60]!r}, not a key") from e
    if len(_raw(tuple(keys))) != len(keys):
        raise ManifestError(f"trust root: {name} lists a key twice")
    return tuple(keys)


def parse_root(document: bytes) -> Root:
    """A root document, checked for shape (not for signatures: content/trust.py does that)."""
    try:
        doc = json.loads(document)
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"trust root is not JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("type") != ROOT_TYPE:
        raise ManifestError(f"not a trust root: {document[:40]!r}")
    root_keys = _keys(doc, "root_keys")
    return Root(
        version=_int(doc, "version", 2, MAX_ROOT_VERSION),
        issued_at=_int(doc, "issued_at", 0, MAX_ISSUED_AT),
        root_keys=root_keys,
        root_threshold=_int(doc, "root_threshold", 1, len(root_keys)),
        signing_keys=_keys(doc, "signing_keys"),
    )
