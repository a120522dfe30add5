"""Crypto: the only code that touches keys, signatures and ciphers.

Manifest signatures (Ed25519), content-key wrapping (X25519 + HKDF + ChaCha20-Poly1305), frame
sealing, and the text form of public keys: what the service seals and signs and the device opens.
The device's own key file is daemon/device_key.py.

The signed envelope is binary: ENVELOPE_MAGIC, the signing key's 8-byte id, the 64-byte
signature, then one zstd frame of the manifest bytes. The manifest travels compressed (a book of
2,000 files has a 440 KB manifest that zstd makes 22 KB: seconds saved on 3G before the first
chapter) and not in base64 (which would add a third). The signature covers SIGNING_CONTEXT + the
compressed bytes, so it is checked before a byte is decoded: an unsigned 32 KB frame that
decodes to 16 MiB costs a hash, not 16 MiB (issue 24 #1); what is signed is still decoded within
the device's manifest limit (ManifestLimits.max_bytes, at most MAX_MANIFEST_BYTES). No JSON
canonicalisation is needed to verify, and a signature over anything else cannot be replayed here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from daemon.errors import (
    ConfigError,
    DecodeError,
    FrameAuthError,
    KeyUnwrapError,
    ManifestError,
    SignatureError,
)
from daemon.protocol.codec import compress_document, decode_bounded
from daemon.protocol.manifest import MAX_MANIFEST_BYTES

SIGNING_CONTEXT = b"shelfsync-manifest-v2\n"
# shelfsync signed envelope, layout 3 (2 signed the manifest decoded, 1 was JSON with base64)
ENVELOPE_MAGIC = b"SSE3"
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
_ENVELOPE_HEADER = len(ENVELOPE_MAGIC) + KEY_ID_BYTES + SIGNATURE_BYTES
ENVELOPE_SLACK = 4096  # an envelope over its manifest, even if zstd could not shrink it


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[: KEY_ID_BYTES * 2]


def public_key_to_text(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key.public_bytes_raw()).decode()


def public_key_from_text(text: str, source: str = "service key") -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key, as written in service.pub."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(source, "service_key", f"not a base64 Ed25519 public key ({e})") from e


def sign_envelope(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The service side: wrap manifest bytes in a signed envelope."""
    compressed = compress_document(manifest_bytes)
    signature = private_key.sign(SIGNING_CONTEXT + compressed)
    return b"".join(
        (ENVELOPE_MAGIC, bytes.fromhex(key_id(private_key.public_key())), signature, compressed)
    )


def open_envelope(
    envelope: bytes,
    trusted: Ed25519PublicKey | Sequence[Ed25519PublicKey],
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
) -> bytes:
    """Return the manifest bytes if the envelope is signed by the trusted key (or one of the
    trusted root's signing keys, picked by the key id the envelope names) and decodes to at
    most `max_manifest_bytes` (the frame's declared size says so before any is decoded)."""
    if len(envelope) > max_manifest_bytes + ENVELOPE_SLACK:
        raise ManifestError(f"signed manifest is {len(envelope)} bytes, over the limit")
    if len(envelope) <= _ENVELOPE_HEADER or not envelope.startswith(ENVELOPE_MAGIC):
        raise ManifestError(
            f"malformed signed manifest: {len(envelope)} bytes, not a shelfsync envelope"
        )
    named_key = envelope[len(ENVELOPE_MAGIC) : len(ENVELOPE_MAGIC) + KEY_ID_BYTES].hex()
    signature = envelope[_ENVELOPE_HEADER - SIGNATURE_BYTES : _ENVELOPE_HEADER]
    compressed = envelope[_ENVELOPE_HEADER:]
    keys = [trusted] if isinstance(trusted, Ed25519PublicKey) else list(trusted)
    # The id is not signed: one trusted key is tried whatever it says; of several, the one named.
    named = [k for k in keys if key_id(k) == named_key] if len(keys) > 1 else keys
    if not named:
        raise SignatureError(
            f"manifest is signed by key {named_key}, not by a pinned service key (the trusted"
            f" root names {', '.join(key_id(k) for k in keys) or 'none'})"
        )
    try:
        named[0].verify(signature, SIGNING_CONTEXT + compressed)
    except InvalidSignature as e:
        raise SignatureError(
            f"manifest signature does not verify with the pinned service key"
            f" {key_id(named[0])} (envelope names key {named_key})"
        ) from e
    try:
        return decode_bounded(compressed, max_manifest_bytes)
    except DecodeError as e:
        raise ManifestError(f"malformed signed manifest: {type(e).__name__}: {e}") from e


# -- trust roots ----------------------------------------------------------------------------------
#
# A trust root (daemon/protocol/root.py) travels in an envelope of its own, signed by several
# keys: ROOT_MAGIC, a byte counting the signatures, then for each the signer's 8-byte key id and
# its 64-byte signature over ROOT_CONTEXT + the document, then the document (JSON, uncompressed:
# a root is a few hundred bytes). Which keys must have signed is the root's rule (root.py).

ROOT_CONTEXT = b"shelfsync-root-v1\n"
ROOT_MAGIC = b"SSR1"
MAX_ROOT_SIGNATURES = 8
MAX_ROOT_ENVELOPE_BYTES = 16 * 1024
_ROOT_SIGNATURE = KEY_ID_BYTES + SIGNATURE_BYTES


def sign_root_envelope(private_keys: Sequence[Ed25519PrivateKey], document: bytes) -> bytes:
    """The service side: `document` signed by every key of `private_keys`."""
    if not 1 <= len(private_keys) <= MAX_ROOT_SIGNATURES:
        raise ValueError(f"a root is signed by 1 to {MAX_ROOT_SIGNATURES} keys")
    signatures = [
        bytes.fromhex(key_id(k.public_key())) + k.sign(ROOT_CONTEXT + document)
        for k in private_keys
    ]
    return b"".join((ROOT_MAGIC, bytes([len(signatures)]), *signatures, document))


def open_root_envelope(envelope: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The document of a root envelope and its (key id, signature) pairs, none checked yet:
    which keys count is known only once the document names them (`root_signers`)."""
    if len(envelope) > MAX_ROOT_ENVELOPE_BYTES:
        raise ManifestError(f"trust root envelope is {len(envelope)} bytes, over the limit")
    head = len(ROOT_MAGIC) + 1
    if len(envelope) <= head or not envelope.startswith(ROOT_MAGIC):
        raise ManifestError(f"malformed trust root: {len(envelope)} bytes, not a root envelope")
    count = envelope[len(ROOT_MAGIC)]
    body = head + count * _ROOT_SIGNATURE
    if not 1 <= count <= MAX_ROOT_SIGNATURES or len(envelope) <= body:
        raise ManifestError(f"malformed trust root: {count} signatures in {len(envelope)} bytes")
    pairs = [
        (
            envelope[at : at + KEY_ID_BYTES].hex(),
            envelope[at + KEY_ID_BYTES : at + _ROOT_SIGNATURE],
        )
        for at in range(head, body, _ROOT_SIGNATURE)
    ]
    return envelope[body:], pairs


def root_signers(
    document: bytes, signatures: list[tuple[str, bytes]], keys: Iterable[Ed25519PublicKey]
) -> set[str]:
    """The ids of those `keys` with a valid signature of `document` among `signatures`. A set:
    one key signing twice (duplicate key ids) still counts once towards a threshold."""
    by_id = {key_id(k): k for k in keys}
    valid = set()
    for signer, signature in signatures:
        key = by_id.get(signer)
        if key is None or signer in valid:
            continue
        try:
            key.verify(signature, ROOT_CONTEXT + document)
        except InvalidSignature:
            continue
        valid.add(signer)
    return valid


# -- content keys and frames ----------------------------------------------------------------------
#
# Each book has one content key (32 random bytes, kept by the service across versions). Every
# frame is sealed once with ChaCha20-Poly1305 (fast in software on ARM cores without AES
# instructions), so the package is the same for every device. A sealed frame is an 8-byte
# synthetic nonce prefix, HMAC(content key, "nonce\0" ‖ compressed frame)[:8], then the
# compressed frame in chunks of SEAL_CHUNK bytes, each sealed on its own with the nonce
# prefix ‖ u32 (chunk index times 2, plus 1 for the last chunk): a read authenticates only the
# chunks it needs (the first page of a 2 MiB frame, one small picture in a 1 MiB frame of
# pictures), which on a slow ARM core is the difference between a millisecond and tens of them.
# The index in the nonce fixes each chunk's place and the last-chunk bit its end, so chunks cannot
# be reordered, dropped or moved between frames; the same frame seals to the same bytes in every
# version (a revision re-sends only changed frames). The associated data binds a frame to its
# book; the manifest's per-frame SHA-256 binds it to its place (in transit; at rest, the store
# keeps the first bytes of each frame as committed). The manifest carries the content key wrapped
# for one device: X25519 with an ephemeral service key, HKDF-SHA256, ChaCha20-Poly1305.
#
# Frames stored by a daemon before manifest format 2 were sealed whole (one AEAD message, a
# 12-byte synthetic nonce, FRAME_AAD): `open_whole_frame` still reads them.

CHUNK_AAD = b"shelfsync-chunk-v1\x00"
FRAME_AAD = b"shelfsync-frame-v1\x00"  # of frames sealed whole, before manifest format 2
WRAP_INFO = b"shelfsync-content-key-v1\x00"
WRAP_ALG = "x25519-hkdf-sha256-chacha20poly1305"
NONCE_BYTES = 12  # ChaCha20-Poly1305's
NONCE_PREFIX_BYTES = 8  # of a frame's chunk nonces; the other 4 number the chunk
TAG_BYTES = 16
SEAL_CHUNK = 64 * 1024  # bytes of compressed frame per sealed chunk
_SEALED_CHUNK = SEAL_CHUNK + TAG_BYTES


def new_content_key() -> bytes:
    return ChaCha20Poly1305.generate_key()


def sealed_size(payload_size: int) -> int:
    """Bytes of a sealed frame whose compressed frame is `payload_size` bytes."""
    chunks = max(1, -(-payload_size // SEAL_CHUNK))
    return NONCE_PREFIX_BYTES + payload_size + chunks * TAG_BYTES


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + (index * 2 + last).to_bytes(4, "big")


def seal_frame(content_key: bytes, book_id: str, payload: bytes) -> bytes:
    prefix = hmac.new(content_key, b"nonce\x00" + payload, hashlib.sha256).digest()
    prefix = prefix[:NONCE_PREFIX_BYTES]
    aead, aad = ChaCha20Poly1305(content_key), CHUNK_AAD + book_id.encode()
    starts = range(0, max(1, len(payload)), SEAL_CHUNK)
    sealed = [prefix]
    for index, start in enumerate(starts):
        nonce = _chunk_nonce(prefix, index, index == len(starts) - 1)
        sealed.append(aead.encrypt(nonce, payload[start : start + SEAL_CHUNK], aad))
    return b"".join(sealed)


class SealedFrame:
    """A sealed frame, opened chunk by chunk (a `codec.ChunkSource`). `read(offset, size)` gives
    bytes of the sealed frame (the store reads them incrementally); every chunk returned has
    been authenticated."""

    chunk_size = SEAL_CHUNK

    def __init__(
        self,
        content_key: bytes,
        book_id: str,
        total_size: int,
        read: Callable[[int, int], bytes],
        # The nonce prefix to open its chunks under (the store passes the one recorded at
        # commit, so chunks of another frame fail); read from the frame itself when not given.
        prefix: bytes | None = None,
    ) -> None:
        self.book_id = book_id
        self._total_size = total_size
        body = total_size - NONCE_PREFIX_BYTES
        self.chunks = max(0, -(-body // _SEALED_CHUNK))
        self.payload_size = body - self.chunks * TAG_BYTES
        if self.payload_size < 0 or sealed_size(self.payload_size) != total_size:
            raise FrameAuthError(f"a frame of {book_id} is {total_size} bytes: not a sealed frame")
        self._aead = ChaCha20Poly1305(content_key)
        self._aad = CHUNK_AAD + book_id.encode()
        self._read = read
        self._prefix = (prefix or read(0, NONCE_PREFIX_BYTES))[:NONCE_PREFIX_BYTES]

    @classmethod
    def in_memory(cls, content_key: bytes, book_id: str, sealed: bytes) -> SealedFrame:
        return cls(content_key, book_id, len(sealed), lambda offset, n: sealed[offset : offset + n])

    def chunk(self, index: int) -> bytes:
        """Compressed bytes [index * SEAL_CHUNK, ...) of the frame, authenticated."""
        if not 0 <= index < self.chunks:
            raise FrameAuthError(f"a frame of {self.book_id} has no chunk {index}")
        start = NONCE_PREFIX_BYTES + index * _SEALED_CHUNK
        size = min(_SEALED_CHUNK, self._total_size - start)
        nonce = _chunk_nonce(self._prefix, index, index == self.chunks - 1)
        try:
            return self._aead.decrypt(nonce, self._read(start, size), self._aad)
        except InvalidTag as e:
            raise FrameAuthError(
                f"chunk {index} of a frame of {self.book_id} failed authentication"
            ) from e


def open_frame(content_key: bytes, book_id: str, sealed: bytes) -> bytes:
    """The whole compressed frame inside `sealed`; raise FrameAuthError if it was not sealed by
    this book's key (tampered, truncated, or taken from another book)."""
    frame = SealedFrame.in_memory(content_key, book_id, sealed)
    return b"".join(frame.chunk(i) for i in range(frame.chunks))


def open_whole_frame(content_key: bytes, book_id: str, sealed: bytes) -> bytes:
    """A frame sealed whole, as before manifest format 2; raise FrameAuthError."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise FrameAuthError(f"frame of {book_id} is {len(sealed)} bytes, too short to be sealed")
    try:
        return ChaCha20Poly1305(content_key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], FRAME_AAD + book_id.encode()
        )
    except InvalidTag as e:
        raise FrameAuthError(f"a frame of {book_id} failed authentication") from e


def _kek(shared: bytes, ephemeral: bytes, device: bytes, book_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + device,
        info=WRAP_INFO + book_id.encode(),
    ).derive(shared)


def wrap_content_key(
    device_key: X25519PublicKey, content_key: bytes, book_id: str
) -> tuple[str, str]:
    """The service side: (ephemeral public key, wrapped key), both base64, for one device."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes_raw()
    device_raw = device_key.public_bytes_raw()
    kek = _kek(ephemeral.exchange(device_key), ephemeral_raw, device_raw, book_id)
    # A fresh ephemeral key makes every kek single-use, so a fixed nonce is safe.
    wrapped = ChaCha20Poly1305(kek).encrypt(bytes(NONCE_BYTES), content_key, book_id.encode())
    return base64.b64encode(ephemeral_raw).decode(), base64.b64encode(wrapped).decode()


def unwrap_content_key(
    device_key: X25519PrivateKey, ephemeral_b64: str, wrapped_b64: str, book_id: str
) -> bytes:
    """The device side: the book's content key; raise KeyUnwrapError if it was not wrapped for
    this device (another device's manifest) or was altered."""
    try:
        ephemeral_raw = base64.b64decode(ephemeral_b64, validate=True)
        ephemeral = X25519PublicKey.from_public_bytes(ephemeral_raw)
        wrapped = base64.b64decode(wrapped_b64, validate=True)
        device_raw = device_key.public_key().public_bytes_raw()
        kek = _kek(device_key.exchange(ephemeral), ephemeral_raw, device_raw, book_id)
        return ChaCha20Poly1305(kek).decrypt(bytes(NONCE_BYTES), wrapped, book_id.encode())
    except (binascii.Error, ValueError, InvalidTag) as e:
        raise KeyUnwrapError(
            f"the content key of {book_id} was not wrapped for this device's key"
        ) from e


def x25519_public_key(text: str) -> X25519PublicKey:
    """Parse a base64 raw X25519 public key; raise ValueError naming the problem."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f"not base64 ({e})") from e
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, an X25519 public key is 32")
    return X25519PublicKey.from_public_bytes(raw)


def x25519_public_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return base64.b64encode(public.public_bytes_raw()).decode()
