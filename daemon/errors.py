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
│   ├── StalledError             a download stopped making progress
│   └── UnreachableError         no connection could be made (no route, refused): the link is down
│       └── NoRouteError         no network at all: no route to the service, no name lookup
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

    def __init__(
        self,
        status: int,
        url: str,
        detail: str = "",
        retry_after: str | None = None,
        *,
        from_service: bool = True,
    ) -> None:
        super().__init__(f"HTTP {status} from {url}" + (f": {detail}" if detail else ""))
        self.status = status
        self.url = url
        self.retry_after = retry_after  # the Retry-After header as sent (daemon/retry.py reads it)
        # The answer had the service's error shape. Without it, something between the device
        # and the service answered (a captive portal, a proxy with no route out): no verdict.
        self.from_service = from_service

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


class UnreachableError(TransportError):
    """No connection to the service could be made (no route, refused, no name): the link is down,
    and every worker waits for its return instead of dialing out on its own timer."""


class NoRouteError(UnreachableError):
    """The device has no network at all (no route to the service's address, no name lookup: the
    radio off, no signal), rather than a host that refused: a service that is down may come
    back any second, a network that is not there comes back with the system's word."""


class NotOnDeviceError(ShelfsyncError):
    """The resource is part of a book on the device but its frames are not downloaded yet."""

    def __init__(self, book_id: str, path: str, missing_frames: int) -> None:
        super().__init__(
            f"{path} of {book_id} is not yet on the device ({missing_frames} frames missing)"
        )
        self.book_id = book_id
        self.path = path
        self.missing_frames = missing_frames


def retryable(error: BaseException) -> bool:
    """Whether trying the same again later may succeed; the one classification of every error
    a worker meets (daemon/retry.py says what to do about each).

    Retryable: the way to the service (timeouts, resets, stalls, cut bodies, an ignored Range,
    an answer that is not the protocol's: a captive portal's page), the service's own trouble
    (5xx, 408, 429), the device's store (space frees, a lock goes), and bytes or a manifest that
    failed verification: each attempt is verified before anything is kept, and what a network
    altered on the way may arrive intact from the next one (FAULTS.md #16, #20: reject, keep
    what is trusted, fetch again), and a 404: a book or version the service does not have yet (a
    feed ahead of its catalog, a forged version a key rotation drops), on the growing backoff.
    Not: the service refusing this device (401, 403) and every other 4xx: it would answer the
    same again.
    """
    if isinstance(error, ServiceHTTPError):
        # An answer without the service's error shape came from something on the way (a
        # captive portal, a proxy with no route out): it says nothing of the service.
        return error.retryable or error.status == 404 or not error.from_service
    return isinstance(error, TransportError | VerificationError | StoreError | OSError)


def service_away(error: BaseException) -> bool:
    """The failure says the service could not be reached or was down, so its return may cure
    it: not an answer it gave (a 404, a version it does not serve, a Range it ignored)."""
    if isinstance(error, VersionMissingError | RangeError):
        return False
    if isinstance(error, ServiceHTTPError):
        return error.status >= 500 or not error.from_service
    return isinstance(error, TransportError)


def refused_by_service(error: BaseException) -> bool:
    """The service refused this device's credentials (401, 403): nothing works until it is
    registered again or the service is fixed."""
    return isinstance(error, ServiceHTTPError) and error.status in (401, 403) and error.from_service


_IN_WORDS = {
    "StalledError": "the connection to the service stalled",
    "RangeError": "the service sent the wrong part of a book",
    "ProtocolError": "the service's answer could not be understood",
    "TransportError": "the service could not be reached",
    "UnreachableError": "the service could not be reached",
    "NoRouteError": "the device has no network",
    "DiskFullError": "the device's storage is full",
    "SchemaTooNewError": "the device's database is from a newer shelfsync",
    "StoreError": "the device could not read or write its database",
    "AnnotationError": "a note from the service was malformed and set aside",
}


def in_words(recorded: str) -> str:
    """A failure as recorded ("TypeName: detail", as workers store it) in a reader's words,
    without the exception text (which stays in the log and in the status's `*_detail`)."""
    name, _, detail = recorded.partition(": ")
    if name == "ServiceHTTPError":
        status = detail.split()[1] if detail.startswith("HTTP ") else "?"
        if status.startswith("5") or status in ("408", "429"):
            return f"the service had a problem (HTTP {status}); trying again"
        return f"the service refused the request (HTTP {status})"
    if name in _IN_WORDS:
        return _IN_WORDS[name]
    if name.endswith("Error") and name in {c.__name__ for c in _verification_classes()}:
        return "what the service sent failed its safety check and was refused"
    return "something went wrong (the log has the details)"


def _verification_classes() -> list[type[VerificationError]]:
    found: list[type[VerificationError]] = [VerificationError]
    for cls in found:
        found.extend(c for c in cls.__subclasses__() if c not in found)
    return found
