"""Signatures: the only code that checks the service's Ed25519 signature on manifests.

The signed envelope is JSON: {"manifest": b64(bytes), "signature": b64(sig), "key_id": hex}.
The signature covers SIGNING_CONTEXT + the manifest bytes exactly as sent, so no JSON
canonicalisation is needed to verify, and a signature over anything else cannot be replayed here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from daemon.errors import ConfigError, ManifestError, SignatureError
from daemon.manifest import MAX_MANIFEST_BYTES

SIGNING_CONTEXT = b"shelfsync-manifest-v1\n"
MAX_ENVELOPE_BYTES = MAX_MANIFEST_BYTES * 4 // 3 + 4096


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_to_text(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def public_key_from_text(text: str, source: str = "service key") -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key, as written in service.pub."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(source, "service_key", f"not a base64 Ed25519 public key ({e})") from e


def sign_envelope(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The service side: wrap manifest bytes in a signed envelope."""
    signature = private_key.sign(SIGNING_CONTEXT + manifest_bytes)
    return json.dumps(
        {
            "manifest": base64.b64encode(manifest_bytes).decode(),
            "signature": base64.b64encode(signature).decode(),
            "key_id": key_id(private_key.public_key()),
        }
    ).encode()


def open_envelope(envelope: bytes, pinned: Ed25519PublicKey) -> bytes:
    """Return the manifest bytes if the envelope is signed by the pinned key; else raise."""
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ManifestError(f"signed manifest is {len(envelope)} bytes, over the limit")
    try:
        doc = json.loads(envelope)
        manifest_bytes = base64.b64decode(doc["manifest"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise ManifestError(f"malformed signed manifest: {type(e).__name__}: {e}") from e
    try:
        pinned.verify(signature, SIGNING_CONTEXT + manifest_bytes)
    except InvalidSignature as e:
        raise SignatureError(
            f"manifest signature does not verify with the pinned service key {key_id(pinned)}"
            f" (envelope names key {str(doc.get('key_id'))[:32]!r})"
        ) from e
    return manifest_bytes
