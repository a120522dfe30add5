"""Settings of one daemon run: where its state lives, which service, which key, which device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.errors import ConfigError
from daemon.profile import DeviceProfile
from daemon.protocol.crypto import public_key_from_text

# How long downloads stay paused after the file system reported itself full, before the free
# space is looked at again: whoever filled the flash gets time to finish, and a full disk is not
# hammered with writes that fail.
DISK_FULL_PAUSE_S = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    service_url: str
    service_key: Ed25519PublicKey  # pinned: the only key whose manifests are trusted
    profile: DeviceProfile
    device_name: str = "shelfsync device"
    account_token: str | None = None  # only for the first run, to register this device
    socket_path: Path | None = None  # default <state_dir>/api.sock
    tcp_port: int | None = None  # development only: also listen on 127.0.0.1:<port>
    disk_full_pause_s: float = DISK_FULL_PAUSE_S  # downloads rest after ENOSPC; tests shorten it

    @property
    def db_path(self) -> Path:
        return self.state_dir / "shelfsync.db"

    @property
    def api_socket(self) -> Path:
        return self.socket_path or self.state_dir / "api.sock"

    @property
    def device_key_path(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def api_token_path(self) -> Path:
        return self.state_dir / "api-token"


def read_service_key(value: str) -> Ed25519PublicKey:
    """The pinned key from a file (service.pub) or given inline as base64."""
    path = Path(value)
    if path.is_file():
        try:
            return public_key_from_text(path.read_text(encoding="ascii"), str(path))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(str(path), "service_key", f"cannot read: {e}") from e
    return public_key_from_text(value, "--service-key")


def check_service_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError("--service", "service_url", f"{url!r} is not an http(s) URL")
    return url.rstrip("/")
