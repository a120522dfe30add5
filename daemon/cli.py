"""`shelfsync`: the commands a device developer uses (run, status, demo)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from daemon.api_client import LocalApiClient, LocalApiError
from daemon.app import Daemon
from daemon.config import Settings, check_service_url, read_service_key
from daemon.errors import ShelfsyncError
from daemon.logs import setup_logging
from daemon.profile import list_profiles, load_profile
from daemon.status import build_status, format_status
from daemon.store import Store

DEFAULT_STATE = "~/.local/state/shelfsync"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfsync", description="Offline content sync daemon for e-readers."
    )
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

    demo = commands.add_parser(
        "demo", help="stub + daemon + a purchase, then read the book back offline"
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-data"),
        help="where the demo keeps its state (default %(default)s)",
    )
    demo.add_argument("--profile", default="paperwhite-wifi")
    demo.add_argument("--book", help="title word of the sample book to buy (default: first)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        from daemon.demo import run_demo

        return asyncio.run(run_demo(args.workdir, args.profile, args.book))
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
