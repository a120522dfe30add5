"""`shelfsync`: the commands a device developer uses (run, status, trip, bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp

from daemon.api.client import LocalApiClient, LocalApiError
from daemon.api.status import build_status, format_status
from daemon.app import Daemon
from daemon.config import Settings, check_service_url, read_service_key
from daemon.errors import ShelfsyncError
from daemon.logs import setup_logging
from daemon.profile import list_profiles, load_profile
from daemon.store import Store

DEFAULT_STATE = "~/.local/state/shelfsync"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfsync", description="Offline content sync daemon for e-readers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('shelfsync')}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon until SIGINT/SIGTERM")
    run.add_argument(
        "--state",
        default=os.environ.get("SHELFSYNC_STATE", DEFAULT_STATE),
        help="directory for the database and the API socket (default %(default)s)",
    )
    run.add_argument("--service", required=True, help="base URL of the content service")
    run.add_argument(
        "--service-key",
        required=True,
        help="the pinned service public key: a service.pub file or base64 text",
    )
    run.add_argument(
        "--profile",
        default="paperwhite-wifi",
        help=f"device profile name or TOML path ({', '.join(list_profiles())})",
    )
    run.add_argument(
        "--account-token",
        default=os.environ.get("SHELFSYNC_ACCOUNT_TOKEN"),
        help="account token, needed once to register this device (or $SHELFSYNC_ACCOUNT_TOKEN)",
    )
    run.add_argument("--device-name", default="shelfsync device")
    run.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    run.add_argument(
        "--tcp-port",
        type=int,
        help="development: also serve the API on 127.0.0.1:PORT (token in <state>/api-token)",
    )
    run.add_argument("--log-level", default="INFO")

    status = commands.add_parser("status", help="what is on the device and what is coming")
    status.add_argument("--state", default=os.environ.get("SHELFSYNC_STATE", DEFAULT_STATE))
    status.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    trip = commands.add_parser(
        "trip", help="get the device ready for days offline, and say how ready it is"
    )
    trip.add_argument("--days", type=int, required=True, help="how long without a network")
    trip.add_argument("--state", default=os.environ.get("SHELFSYNC_STATE", DEFAULT_STATE))
    trip.add_argument("--socket", type=Path, help="API socket path (default <state>/api.sock)")
    trip.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="seconds to wait for the device to be ready (default %(default)s)",
    )

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
        if args.command == "status":
            return _status(args)
        return asyncio.run(_trip(args))
    except ShelfsyncError as e:
        print(f"shelfsync: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    settings = Settings(
        state_dir=Path(args.state).expanduser(),
        service_url=check_service_url(args.service),
        service_key=read_service_key(args.service_key),
        profile=load_profile(args.profile),
        device_name=args.device_name,
        account_token=args.account_token,
        socket_path=args.socket,
        tcp_port=args.tcp_port,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Daemon(settings).run(stop)

    asyncio.run(main())
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    async with LocalApiClient(socket_path) as api:
        try:
            report = await api.start_trip(args.days)
            while not report["ready"] and loop.time() < deadline:
                await asyncio.sleep(1.0)
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
