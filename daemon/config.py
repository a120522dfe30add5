"""Settings of one daemon run: where its state lives, which service, which key, which device.

`shelfsync run` takes them from three places, the first that has a value winning: its flags (and
$SHELFSYNC_STATE, $SHELFSYNC_ACCOUNT_TOKEN), a TOML configuration file, and the standard places:

  configuration  --config PATH, else $XDG_CONFIG_HOME/shelfsync/config.toml (~/.config/...),
                 else /etc/shelfsync/config.toml, else none (flags only)
  state          $STATE_DIRECTORY (systemd's StateDirectory=, /var/lib/shelfsync), else
                 $XDG_STATE_HOME/shelfsync (~/.local/state/shelfsync)
  account token  --account-token-file or `account_token_file`, $SHELFSYNC_ACCOUNT_TOKEN, or the
                 systemd credential `account-token` ($CREDENTIALS_DIRECTORY, LoadCredential=)

Every mistake is a ConfigError naming its source and field, in one line.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.errors import ConfigError
from daemon.logs import FORMATS, LEVELS, log_event
from daemon.profile import DeviceProfile, load_profile
from daemon.protocol.crypto import public_key_from_text

# How long downloads stay paused after the file system reported itself full, before the free
# space is looked at again: whoever filled the flash gets time to finish, and a full disk is not
# hammered with writes that fail.
DISK_FULL_PAUSE_S = 60.0
SYSTEM_CONFIG = Path("/etc/shelfsync/config.toml")
CREDENTIAL_NAME = "account-token"  # LoadCredential=account-token:... in the unit

_LOG = logging.getLogger("shelfsync.config")


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


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What `shelfsync run` was configured with, before anything is read or checked on disk.
    Field names are the configuration file's keys."""

    service_url: str | None = None
    service_key: str | None = None  # a service.pub path, or the key's base64 text
    profile: str = "paperwhite-wifi"
    device_name: str = "shelfsync device"
    account_token_file: Path | None = None
    state_dir: Path | None = None  # None: $STATE_DIRECTORY or the XDG state directory
    socket: Path | None = None
    tcp_port: int | None = None
    log_level: str = "info"
    log_format: str = "text"


_PATH_KEYS = {"account_token_file", "state_dir", "socket"}
_KINDS: dict[str, type] = {f.name: str for f in fields(RunConfig)} | {"tcp_port": int}


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The configuration file read without --config: the user's, else the system's, else none."""
    config_home = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for path in (config_home / "shelfsync" / "config.toml", SYSTEM_CONFIG):
        if path.is_file():
            return path
    return None


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """systemd's StateDirectory= when run as a service, else the XDG state directory."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    state_home = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "shelfsync"


def read_config_file(path: Path) -> RunConfig:
    """The file's settings over the defaults; relative paths are relative to the file."""
    source = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(source, "<file>", "no such file") from e
    except OSError as e:
        raise ConfigError(source, "<file>", f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(source, "<file>", f"not UTF-8 (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "<file>", f"invalid TOML: {e}") from e
    values: dict[str, Any] = {}
    for key, value in doc.items():
        kind = _KINDS.get(key)
        if kind is None:
            import difflib  # only for a typo: a running daemon need not keep it

            close = difflib.get_close_matches(key, _KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(_KINDS)}"
            raise ConfigError(source, key, f"unknown key{hint}")
        if type(value) is not kind:
            raise ConfigError(source, key, f"must be {'an integer' if kind is int else 'a string'}")
        values[key] = path.parent / Path(str(value)).expanduser() if key in _PATH_KEYS else value
    return replace(RunConfig(), **values)


def merge(config: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """`config` with every override that is not None (the flags given)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def check_log_settings(config: RunConfig, source: str) -> None:
    if config.log_level.lower() not in LEVELS:
        raise ConfigError(source, "log_level", f"{config.log_level!r} is not one of {_or(LEVELS)}")
    if config.log_format not in FORMATS:
        raise ConfigError(
            source, "log_format", f"{config.log_format!r} is not one of {_or(FORMATS)}"
        )


def _or(names: Any) -> str:
    return ", ".join(names)


def settings_from(
    config: RunConfig, source: str, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Check everything `config` names (key file, profile, state directory, token) and build
    the run's Settings. `source` names where the configuration came from, for errors."""
    check_log_settings(config, source)
    if config.service_url is None:
        raise ConfigError(source, "service_url", "missing: give --service or service_url")
    if config.service_key is None:
        raise ConfigError(source, "service_key", "missing: give --service-key or service_key")
    if config.tcp_port is not None and not 0 < config.tcp_port < 65536:
        raise ConfigError(source, "tcp_port", f"{config.tcp_port} is not a TCP port (1-65535)")
    state_dir = prepare_state_dir(config.state_dir or default_state_dir(environ))
    return Settings(
        state_dir=state_dir,
        service_url=check_service_url(config.service_url),
        service_key=read_service_key(config.service_key),
        profile=load_profile(config.profile),
        device_name=config.device_name,
        account_token=account_token(config.account_token_file, environ),
        socket_path=config.socket,
        tcp_port=config.tcp_port,
    )


def prepare_state_dir(path: Path) -> Path:
    """Create the state directory (0700) and prove it writable, so a read-only or foreign
    directory is one clear error at start rather than a database error later."""
    path = path.expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o777
        if mode != 0o700:
            # It holds the device's key and token: a directory made by hand (0755, 0777) would
            # let others list it and reach whatever a later mistake leaves readable.
            os.chmod(path, 0o700)
            log_event(_LOG, logging.WARNING, "state_dir_mode_repaired", path=path, mode=f"{mode:o}")
        probe = path / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(str(path), "state_dir", f"not writable: {e.strerror or e}") from e
    return path


def account_token(path: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The account token from its file, the environment or systemd's credential, if any.

    A file others can read is refused: the token buys books in the reader's name.
    """
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if path is None and credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        path = Path(credentials) / CREDENTIAL_NAME
    if path is None:
        return environ.get("SHELFSYNC_ACCOUNT_TOKEN") or None
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as e:
        raise ConfigError(str(path), "account_token_file", "no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "account_token_file", f"cannot read: {e}") from e
    if mode & 0o077:
        raise ConfigError(
            str(path), "account_token_file", f"readable by others (mode {mode:o}); chmod 600"
        )
    if not text:
        raise ConfigError(str(path), "account_token_file", "empty")
    return text


def read_service_key(value: str) -> Ed25519PublicKey:
    """The pinned key from a file (service.pub) or given inline as base64."""
    path = Path(value).expanduser()
    if path.is_file():
        try:
            return public_key_from_text(path.read_text(encoding="ascii"), str(path))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(str(path), "service_key", f"cannot read: {e}") from e
    try:
        return public_key_from_text(value, "--service-key")
    except ConfigError as e:
        if "/" in value or value.startswith(("~", ".")) or value.endswith(".pub"):
            # Meant as a file (key text never ends in .pub): say the file is missing.
            raise ConfigError(value, "service_key", "no such file") from e
        raise


def check_service_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError("--service", "service_url", f"{url!r} is not an http(s) URL")
    return url.rstrip("/")
