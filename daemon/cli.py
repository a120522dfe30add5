"""`shelfsync`: the commands a device developer uses (run, status, trip, open, bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import aiohttp

from daemon.api.client import LocalApiClient, LocalApiError
from daemon.api.status import build_status, format_status
from daemon.app import Daemon
from daemon.clock import SystemClock
from daemon.config import (
    CREDENTIAL_NAME,
    SYSTEM_CONFIG,
    RunConfig,
    Settings,
    check_log_settings,
    default_config_path,
    default_state_dir,
    merge,
    read_config_file,
    settings_from,
)
from daemon.errors import ShelfsyncError
from daemon.logs import LEVELS, log_event, setup_logging
from daemon.notify import Notifier
from daemon.profile import list_profiles
from daemon.protocol.crypto import key_id
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.cli")

UNIT_FILE = Path(__file__).resolve().parent / "systemd" / "shelfsync.service"


def _state_default() -> str:
    return os.environ.get("SHELFSYNC_STATE") or str(default_state_dir())


def _run_flags(run: argparse.ArgumentParser) -> None:
    """The flags of `run` (and `config`); each overrides the configuration file's key."""
    run.add_argument(
        "--config",
        type=Path,
        help="TOML configuration file (default $XDG_CONFIG_HOME/shelfsync/config.toml, else"
        f" {SYSTEM_CONFIG}, if present)",
    )
    run.add_argument(
        "--state",
        type=Path,
        default=os.environ.get("SHELFSYNC_STATE") or None,
        help="directory for the database, the keys and the API socket (state_dir; default"
        " $STATE_DIRECTORY, else $XDG_STATE_HOME/shelfsync)",
    )
    run.add_argument("--service", help="base URL of the content service (service_url)")
    run.add_argument(
        "--service-key",
        help="the pinned service public key: a service.pub file or base64 text (service_key)",
    )
    profiles = ", ".join(list_profiles()) or "none shipped"
    run.add_argument("--profile", help=f"device profile name or TOML path ({profiles})")
    run.add_argument(
        "--account-token-file",
        type=Path,
        help="file (mode 0600) holding the account token, needed once to register this device"
        " (account_token_file; or $SHELFSYNC_ACCOUNT_TOKEN, or the systemd credential"
        f" {CREDENTIAL_NAME})",
    )
    run.add_argument(
        "--account-token",
        help="the account token itself; every user can read it in the process list, so"
        " prefer --account-token-file or $SHELFSYNC_ACCOUNT_TOKEN",
    )
    run.add_argument("--device-name", help="this device's name on the account (device_name)")
    run.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    run.add_argument(
        "--tcp-port",
        type=int,
        help="development: also serve the API on 127.0.0.1:PORT (token in <state>/api-token)",
    )
    run.add_argument("--log-level", help=f"{', '.join(LEVELS)} (log_level; default info)")
    run.add_argument(
        "--log-format", help="text (sd-daemon <N> prefixes under journald) or json (log_format)"
    )


class _Version(argparse.Action):
    """`--version`, looked up only when asked: importlib.metadata brings zipfile and csv, which
    a running daemon would keep for nothing (about 0.4 MiB of a 64 MiB budget)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import version  # here, not at the top: see the docstring

        print(f"{parser.prog} {version('shelfsync')}")  # on stdout, as argparse's own does
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfsync", description="Offline content sync daemon for e-readers."
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run the daemon until SIGINT/SIGTERM; SIGHUP reloads the configuration"
    )
    _run_flags(run)
    config = commands.add_parser(
        "config", help="check the configuration `run` would use and print it (no secrets)"
    )
    _run_flags(config)
    commands.add_parser("unit", help="print the systemd unit shipped with shelfsync")

    status = commands.add_parser("status", help="what is on the device and what is coming")
    status.add_argument("--state", default=_state_default(), help="state directory")
    status.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    trip = commands.add_parser(
        "trip", help="get the device ready for days offline, and say how ready it is"
    )
    trip.add_argument("--days", type=int, required=True, help="how long without a network")
    trip.add_argument("--state", default=_state_default(), help="state directory")
    trip.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    trip.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="seconds to wait for the device to be ready (default %(default)s)",
    )

    opener = commands.add_parser(
        "open", help="print a one-time link that opens the reading web app in a browser"
    )
    opener.add_argument("--state", default=_state_default(), help="state directory")
    opener.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")

    # Listed for --help only: main hands everything after `bench` to the benchmarks.
    commands.add_parser(
        "bench",
        add_help=False,
        help="the benchmarks of the source checkout: `shelfsync bench --help` (python -m bench)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _check_config(args)
        if args.command == "unit":
            print(UNIT_FILE.read_text(), end="")
            return 0
        if args.command == "status":
            return _status(args)
        if args.command == "open":
            return asyncio.run(_open(args))
        return asyncio.run(_trip(args))
    except ShelfsyncError as e:
        print(f"shelfsync: {e}", file=sys.stderr)
        return 2


def _run_config(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The configuration file (if any) under the flags given, and where it came from."""
    path = args.config or default_config_path()
    config = read_config_file(path) if path is not None else RunConfig()
    flags = {
        "service_url": args.service,
        "service_key": args.service_key,
        "profile": args.profile,
        "device_name": args.device_name,
        "account_token_file": args.account_token_file,
        "state_dir": args.state,
        "socket": args.socket,
        "tcp_port": args.tcp_port,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    source = str(path) if path is not None else "command line"
    config = merge(config, flags)
    check_log_settings(config, source)
    return config, source


def _settings(args: argparse.Namespace, config: RunConfig, source: str) -> Settings:
    settings = settings_from(config, source)
    if args.account_token:
        settings = replace(settings, account_token=args.account_token)
    return settings


def _check_config(args: argparse.Namespace) -> int:
    config, source = _run_config(args)
    settings = _settings(args, config, source)
    shown = {
        "service_url": settings.service_url,
        "service_key": key_id(settings.service_key),
        "profile": settings.profile.name,
        "device_name": settings.device_name,
        "account_token": "given" if settings.account_token else "none (device must be registered)",
        "state_dir": str(settings.state_dir),
        "socket": str(settings.api_socket),
        "tcp_port": settings.tcp_port,
        "log_level": config.log_level.lower(),
        "log_format": config.log_format,
    }
    for name, value in shown.items():
        print(f"{name} = {value}")
    return 0


# What SIGHUP applies to the running daemon; every other field needs a restart, since the parts
# built from it (the HTTP client, the trust root, the database, the sockets, the profile's limits
# inside each worker) hold it from the start.
RELOADABLE = ("log_level", "log_format")


def _run(args: argparse.Namespace) -> int:
    config, source = _run_config(args)
    setup_logging(config.log_level, config.log_format)
    settings = _settings(args, config, source)
    daemon = Daemon(settings, notifier=Notifier.from_environ())
    running = [config]

    def reconfigure() -> None:
        new, _ = _run_config(args)
        setup_logging(new.log_level, new.log_format)
        restart = [
            f.name
            for f in fields(RunConfig)
            if f.name not in RELOADABLE and getattr(new, f.name) != getattr(running[0], f.name)
        ]
        log_event(
            _LOG,
            logging.INFO,
            "config_reloaded",
            source=source,
            log_level=new.log_level.lower(),
            log_format=new.log_format,
            needs_restart=",".join(restart) or "nothing",
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, daemon.reload, reconfigure)
        await daemon.run(stop)

    try:
        asyncio.run(main())
    except ShelfsyncError:
        raise  # main prints it in one line
    except Exception as e:  # noqa: BLE001 - a bug: its traceback goes to the log, on one line
        log_event(_LOG, logging.CRITICAL, "daemon_crashed", exc=e)
        return 1
    return 0


def _bench(argv: list[str]) -> int:
    """Delegate to `python -m bench`, which lives in the source checkout beside daemon/."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "__main__.py").is_file():
        print(
            "shelfsync: the benchmarks are in the source checkout (bench/), not in an installed"
            " package; run `python -m bench` there",
            file=sys.stderr,
        )
        return 2
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "bench", *argv]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": path}, check=False).returncode


async def _trip(args: argparse.Namespace) -> int:
    """Ask the running daemon to prepare the trip; print its readiness until ready."""
    socket_path = args.socket or Path(args.state).expanduser() / "api.sock"
    clock = SystemClock()
    deadline = clock.monotonic() + args.wait
    async with LocalApiClient(socket_path) as api:
        try:
            report = await api.start_trip(args.days)
            told = None
            while not report["ready"] and clock.monotonic() < deadline:
                if report["sentence"] != told:  # what it waits for, as it changes
                    told = report["sentence"]
                    print(told, file=sys.stderr, flush=True)
                await clock.sleep(1.0)
                report = await api.trip()
        except (aiohttp.ClientError, OSError) as e:
            print(f"shelfsync: the daemon is not running ({e})", file=sys.stderr)
            return 2
        except LocalApiError as e:
            print(
                f"shelfsync: {e.body.get('detail', e) if isinstance(e.body, dict) else e}",
                file=sys.stderr,
            )
            return 2
    print(report["sentence"])
    return 0 if report["ready"] else 1


async def _open(args: argparse.Namespace) -> int:
    """Ask the running daemon, over its private socket, for a one-time login link."""
    socket_path = args.socket or Path(args.state).expanduser() / "api.sock"
    try:
        async with LocalApiClient(socket_path, timeout_s=5) as api:
            link = await api.post_json("/v1/login-links")
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"shelfsync: the daemon is not running ({e})", file=sys.stderr)
        return 2
    except LocalApiError as e:
        detail = e.body.get("detail", e) if isinstance(e.body, dict) else e
        print(f"shelfsync: {detail}", file=sys.stderr)
        return 2
    print(f"Open this link in a browser on this device within {link['expires_in_s']:.0f} s:")
    print(link["url"])
    return 0


def _status(args: argparse.Namespace) -> int:
    state = Path(args.state).expanduser()
    socket_path = args.socket or state / "api.sock"
    status = asyncio.run(_status_from_daemon(socket_path)) if socket_path.exists() else None
    if status is None:
        db = state / "shelfsync.db"
        if not db.exists():
            print(f"shelfsync: no device state in {state}", file=sys.stderr)
            return 1
        store = Store.open(db, readonly=True)
        try:
            status = build_status(store)
        finally:
            store.close()
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


async def _status_from_daemon(socket_path: Path) -> dict[str, Any] | None:
    try:
        async with LocalApiClient(socket_path, timeout_s=5) as api:
            return await api.status()
    except (aiohttp.ClientError, LocalApiError, OSError, TimeoutError):
        return None  # a socket left by a killed daemon: fall back to the database
