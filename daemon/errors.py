"""Every error shelfsync raises on purpose, as one tree.

ShelfsyncError
├── ConfigError                  a device profile or setting is malformed (names field and reason)
├── StoreError                   the local database cannot do what was asked
│   ├── SchemaTooNewError        the database was written by a newer shelfsync
│   ├── DatabaseDamagedError     a page of the database file is damaged: set aside at next start
│   └── DiskFullError            the file system is full: downloads pause
├── VerificationError            bytes or metadata from the service are not trustworthy
│   ├── SignatureError           manifest not signed by the pinned service key
│   ├── ManifestError            manifest malformed, for another book, or over a limit
│   ├── RollbackError            manifest older than one already trusted
│   ├── ExpiredError             manifest past its expiry (by clock or by the trusted time floor)
│   ├── FrameHashError           a frame's bytes do not match the manifest
│   ├── FrameAuthError           a frame fails AEAD authentication (tampered, another book)
│   ├── KeyUnwrapError           the content key was not wrapped for this device
│   ├── DictionaryError          a dictionary is missing or does not match its hash
│   └── DecodeError              a frame does not decompress within its declared bounds
├── AnnotationError              an annotation, reading position or sync document is malformed or
│                                over a limit (names the field)
├── TransportError               the service could not be reached or answered badly (retryable)
│   ├── ServiceHTTPError         an HTTP error status, with the status code
│   ├── ProtocolError            an answer that does not follow docs/PROTOCOL.md
│   │   └── VersionMissingError  the library lists a version the service does not serve
│   ├── RangeError               the service ignored or mangled a Range request
│   └── StalledError             a download stopped making progress
└── NotOnDeviceError             a resource exists but its frames are not downloaded yet
"""

from __future__ import annotations


class ShelfsyncError(Exception):
    """Base of every deliberate shelfsync error."""


class ConfigError(ShelfsyncError):
    """A configuration value is invalid; `field` names it and `reason` says why."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        super().__init__(f"{source}: field {field!r}: {reason}")
        self.source = source
        self.field = field
        self.reason = reason


class StoreError(ShelfsyncError):
    """The local database cannot do what was asked."""


class SchemaTooNewError(StoreError):
    """The database schema is newer than this program understands; refusing to touch it."""


class DatabaseDamagedError(StoreError):
    """A page of the database file is damaged (SQLITE_CORRUPT): what lies on it cannot be read.
    A frame there is fetched again; the file is set aside and rebuilt at the next start."""


class DiskFullError(StoreError):
    """The file system is full; nothing committed is lost, and downloads pause."""


class VerificationError(ShelfsyncError):
    """Data from the service failed verification; nothing of it is stored."""


class SignatureError(VerificationError):
    """The manifest signature does not verify against the pinned service key."""


class ManifestError(VerificationError):
    """The manifest is malformed, names another book, or exceeds a limit."""


class RollbackError(VerificationError):
    """The manifest's version is lower than one already trusted for this book."""


class ExpiredError(VerificationError):
    """The manifest expired (by the clock or by the trusted time floor)."""


class FrameHashError(VerificationError):
    """A frame's SHA-256 differs from the signed manifest (in transit, or altered at rest)."""

    def __init__(self, message: str, book_id: str, version: int, idx: int) -> None:
        super().__init__(message)
        self.book_id = book_id
        self.version = version
        self.idx = idx


class FrameAuthError(VerificationError):
    """A frame failed authentication: it was altered, or sealed for another book."""


class KeyUnwrapError(VerificationError):
    """The book's content key was not wrapped for this device, or was altered."""


class DictionaryError(VerificationError):
    """A compression dictionary is missing or does not match the hash the manifest names."""


class DecodeError(VerificationError):
    """A frame does not decode within the bounds its manifest declares."""


class AnnotationError(ShelfsyncError):
    """An annotation, reading position or sync document is malformed or over a limit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class TransportError(ShelfsyncError):
    """The service was unreachable or answered badly; retrying later may succeed."""


class ServiceHTTPError(TransportError):
    """The service answered with an HTTP error status."""

    def __init__(self, status: int, url: str, detail: str = "") -> None:
        super().__init__(f"HTTP {status} from {url}" + (f": {detail}" if detail else ""))
        self.status = status
        self.url = url

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status in (408, 429)


class ProtocolError(TransportError):
    """The service's answer does not follow docs/PROTOCOL.md."""


class VersionMissingError(ProtocolError):
    """The library lists a version of a book that the service does not serve: retried after a
    growing backoff (a forged or premature changes-feed entry), never in a loop."""


class RangeError(TransportError):
    """The service ignored a Range request or answered with a different range."""


class StalledError(TransportError):
    """A download made no progress within the stall timeout."""


class NotOnDeviceError(ShelfsyncError):
    """The resource is part of a book on the device but its frames are not downloaded yet."""

    def __init__(self, book_id: str, path: str, missing_frames: int) -> None:
        super().__init__(
            f"{path} of {book_id} is not yet on the device ({missing_frames} frames missing)"
        )
        self.book_id = book_id
        self.path = path
        self.missing_frames = missing_frames
