"""``cnet-gateway-data``: the command line of the read-only S3 gateway.

    cnet-gateway-data --port 9091 --host 127.0.0.1 --base-path /tmp/cnet_data --bucket cnet \\
        [--index-db /tmp/cnet_state/cnet.db] [--access-key K --secret-key-file F] [--region R]

With ``--index-db`` the listing comes from the agent's ``data_objects`` table (read-only);
without it the base path is scanned into an in-memory index (see ``directory_index.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tornado.netutil

from services.gateway.app import make_app
from services.gateway.directory_index import DirectoryIndex
from services.gateway.framing import GatewayServer
from services.gateway.front import Front
from services.gateway.index import DatabaseIndex, IndexUnavailable, ObjectIndex
from services.gateway.paths import MOUNT, RESERVED_PREFIX
from services.gateway.s3xml import Owner
from services.gateway.sigv4 import Credentials
from services.gateway.state import Gateway

__all__ = ["main", "parse_args", "serve"]

log = logging.getLogger("cnet.gateway")

SHUTDOWN_GRACE = 5.0
# Tornado closes a connection whose request head is larger, without an answer; below it
# the gateway answers oversized keys and header sections with S3 errors.
MAX_REQUEST_HEAD = 1 << 20
MAX_SECRET_BYTES = 4096


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnet-gateway-data",
        description="Serve a directory of stored data objects as one read-only S3 bucket.")
    parser.add_argument("--port", type=int, default=9091, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--base-path", required=True, type=Path,
                        help="directory whose files are the bucket's objects")
    parser.add_argument("--bucket", default="cnet", help="the bucket name")
    parser.add_argument("--index-db", type=Path,
                        help="the agent's SQLite database; list from its data_objects table")
    parser.add_argument("--rescan-interval", type=float, default=2.0,
                        help="without --index-db: seconds between incremental rescans")
    parser.add_argument("--access-key", help="require SigV4 requests signed with this key")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret-key-file", type=Path,
                        help="a file holding the secret of --access-key (kept off the "
                             "command line; one trailing newline is ignored)")
    secret.add_argument("--secret-key",
                        help="the secret of --access-key (visible to ps; prefer the file)")
    parser.add_argument("--region", default="us-east-1", help="the region in SigV4 scopes")
    parser.add_argument("--owner-id", default="cnet",
                        help="the owner ID shown in listings and ACLs")
    parser.add_argument("--owner-name", default="cnet",
                        help="the owner display name shown in listings and ACLs")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if not args.base_path.is_dir():
        parser.error(f"--base-path {args.base_path} is not a directory")
    if args.secret_key_file is not None:
        args.secret_key = _read_secret(parser, args.secret_key_file, args.base_path)
    if (args.access_key is None) != (args.secret_key is None):
        parser.error("--access-key and --secret-key (or --secret-key-file) go together")
    if args.rescan_interval <= 0:
        parser.error("--rescan-interval must be positive")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    return args


def _read_secret(parser: argparse.ArgumentParser, path: Path, base_path: Path) -> str:
    real, base = os.path.realpath(path), os.path.realpath(base_path)
    if os.path.commonpath((real, base)) == base and not any(
            part.startswith(RESERVED_PREFIX) for part in os.path.relpath(real, base).split("/")):
        parser.error(f"--secret-key-file {path} lies in the served --base-path")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        parser.error(f"--secret-key-file {path}: {exc.strerror or exc}")
    if len(raw) > MAX_SECRET_BYTES:
        parser.error(f"--secret-key-file {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        secret = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        parser.error(f"--secret-key-file {path} is not UTF-8 text")
    if not secret:
        parser.error(f"--secret-key-file {path} is empty")
    return secret


def _build_index(args: argparse.Namespace, base_real: str,
                 executor: ThreadPoolExecutor) -> ObjectIndex:
    if args.index_db is not None:
        return DatabaseIndex(args.index_db)
    return DirectoryIndex(base_real, executor, rescan_interval=args.rescan_interval)


async def serve(args: argparse.Namespace) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    base_real = os.path.realpath(args.base_path)
    credentials = (Credentials(args.access_key, args.secret_key, args.region)
                   if args.access_key else None)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-io") as executor:
        index = _build_index(args, base_real, executor)
        await index.start()
        gateway = Gateway(bucket=args.bucket, base_real=base_real, index=index,
                          credentials=credentials, region=args.region, started=time.monotonic(),
                          owner=Owner(args.owner_id, args.owner_name))
        server = GatewayServer(Front(make_app(gateway), gateway), idle_connection_timeout=300,
                               max_header_size=MAX_REQUEST_HEAD)
        sockets = tornado.netutil.bind_sockets(args.port, address=args.host)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        log.info("serving %s as bucket %r at http://%s:%d/ and %s/ (index: %s, %d objects, "
                 "auth: %s)", base_real, args.bucket, args.host, port, MOUNT, index.kind,
                 index.count(), f"sigv4, access key {args.access_key}" if credentials else "none")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE)
        except TimeoutError:
            log.warning("connections still open after %.0f s; exiting anyway", SHUTDOWN_GRACE)
        await index.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except IndexUnavailable as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
