"""``cnet keys generate DIR``: CurveZMQ key pairs for a cluster's nodes and its clients."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bus import generate_keys

from .client import CLIENT_KEY_NAME
from .config import ConfigError

__all__ = ["add_commands"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``cnet keys`` to the ``cnet`` parser's subcommands."""
    p = sub.add_parser("keys", help="CurveZMQ keys for the bus")
    actions = p.add_subparsers(metavar="ACTION")
    g = actions.add_parser("generate", help="make a key pair per node (and one for clients)")
    g.add_argument("dir", help="keys directory (created if missing)")
    g.add_argument("--nodes", help="node ids, comma-separated (e.g. jiangsu,nanjing)")
    g.add_argument("--topology", help="make a pair for every node of this topology file")
    g.add_argument("--force", action="store_true", help="replace key pairs that already exist")
    g.set_defaults(func=_cmd_generate)
    p.set_defaults(func=_usage(p))


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    return show


def _names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in (args.nodes or "").split(",") if n.strip()]
    if args.topology:
        from . import topology
        names += topology.load(args.topology).node_ids()
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a usable node id for a key file name")
    return list(dict.fromkeys([*names, CLIENT_KEY_NAME]))


def _cmd_generate(args: argparse.Namespace) -> int:
    if not args.nodes and not args.topology:
        print("cnet keys generate: give --nodes a,b,c and/or --topology FILE", file=sys.stderr)
        return 2
    try:
        names = _names(args)
    except ConfigError as exc:
        print(f"cnet keys generate: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.dir).expanduser().resolve()
    try:
        for name in names:
            secret = folder / f"{name}.key_secret"
            if secret.exists() and not args.force:
                print(f"kept     {name}: {secret} already exists (--force replaces it)")
                continue
            public, secret = generate_keys(folder, name)
            print(f"created  {name}: {public} (public), {secret} (secret, owner-only)")
    except OSError as exc:
        print(f"cnet keys generate: {exc}", file=sys.stderr)
        return 1
    print(f"""
Each agent loads its own NODE_ID.key_secret from {folder} and accepts every *.key there.
Configure every agent (or a topology's `defaults:`) with

  bus:
    curve:
      keys_dir: {folder}

and give clients the same directory: cnet ... --curve-dir {folder} (or CNET_CURVE_DIR).
A node whose public key is not in the directory cannot join; keep *.key_secret files private.""")
    return 0
