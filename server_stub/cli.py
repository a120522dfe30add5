"""`shelfsync-stub`: run the development content service until SIGINT or SIGTERM.

Prints the import report, then exactly one line `shelfsync-stub listening on http://HOST:PORT`
(flushed) that a parent process can parse for the port. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from daemon.errors import ShelfsyncError
from daemon.protocol.codec import COMPRESSION_LEVEL
from server_stub import logs
from server_stub.app import running_stub
from server_stub.catalog import ImportReport, PackagingSettings

SAMPLE_LIBRARY = Path(__file__).resolve().parent / "sample_library"
LISTENING = "shelfsync-stub listening on"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfsync-stub",
        description="shelfsync's development content service: accounts, devices, a catalog "
        "built from a folder of EPUB files, signed manifests, packages with Range, the changes "
        "feed and the push channel (docs/PROTOCOL.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('shelfsync')}")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("stub-data"),
        help="directory for the database and the service key (default: ./stub-data)",
    )
    parser.add_argument(
        "--library",
        type=Path,
        default=SAMPLE_LIBRARY,
        help="folder of .epub files to import at start (default: the bundled sample library)",
    )
    parser.add_argument(
        "--opds",
        action="append",
        default=[],
        metavar="URL",
        help="an OPDS 1.2 or 2.0 catalog (calibre, calibre-web, Kavita) whose free EPUBs are "
        "imported at start, after --library; repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default: 8080)"
    )
    parser.add_argument(
        "--zstd-level",
        type=int,
        default=COMPRESSION_LEVEL,
        choices=range(1, 23),
        metavar="1-22",
        help="zstd level for packaging new versions (default: %(default)s; lower imports faster)",
    )
    parser.add_argument(
        "--rotate-key",
        action="store_true",
        help="make a new signing key in a new trust root before serving (devices provisioned "
        "with service.pub walk to it through GET /v1/roots/N)",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="enable fault injection and the /v1/admin routes (loopback testing only)",
    )
    return parser


def _print_report(report: ImportReport | None) -> None:
    if report is None:
        return
    refused = len(report.refused) + len(report.refused_links)
    print(
        f"imported {len(report.imported)}, updated {len(report.updated)}, "
        f"unchanged {len(report.unchanged)}, refused {refused}"
    )
    for path, problem in report.refused:
        print(f"refused {path}: {problem}")
    for url, problem in report.refused_links:
        print(f"refused {url}: {problem}")


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_stub(
        args.data,
        library_dir=args.library,
        opds_urls=args.opds,
        host=args.host,
        port=args.port,
        faults=args.faults,
        rotate_key=args.rotate_key,
        packaging=PackagingSettings(level=args.zstd_level),
    ) as stub:
        _print_report(stub.import_report)
        print(f"{LISTENING} {stub.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"shelfsync-stub: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    logs.configure()
    try:
        asyncio.run(_serve(args))
    except ShelfsyncError as e:
        print(f"shelfsync-stub: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"shelfsync-stub: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
