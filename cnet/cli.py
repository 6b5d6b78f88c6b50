"""The ``cnet`` command (run an agent or a cluster) and the seed's ``cnet-agent -config FILE``; the
client commands (submit, ls, ..., watch) live in ``cli_client``, ``cnet keys`` in ``cli_keys``,
``cnet configs`` in ``cli_configs``."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    import argparse

# The flags of ``cnet agent`` (and ``cnet-agent``) -> where argparse puts each.
AGENT_FLAGS = {"-config": "config", "--config": "config", "--topology": "topology",
               "--node": "node", "--state-dir": "state_dir"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"] and (flags := agent_flags(argv[1:])) is not None:
        return _cmd_agent(flags)
    # An agent started with flags agent_flags leaves to argparse is not given the client
    # commands' modules either.
    parser = _parser(client_commands=argv[:1] != ["agent"])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


def agent_main(argv: list[str] | None = None) -> int:
    """``cnet-agent``, the seed's program: ``cnet-agent -config config.yaml``."""
    argv = sys.argv[1:] if argv is None else argv
    flags = agent_flags(argv)
    if flags is None:
        import argparse  # noqa: PLC0415 -- see agent_flags

        parser = argparse.ArgumentParser(prog="cnet-agent",
                                         description="run a CNET agent in the foreground")
        _agent_arguments(parser)
        flags = parser.parse_args(argv)
    return _cmd_agent(flags)


def agent_flags(argv: list[str]) -> SimpleNamespace | None:
    """An agent's flags (``FLAG VALUE`` or ``FLAG=VALUE``, each known flag at most once), read as
    argparse reads them but without it: an agent would keep argparse loaded (~0.3 MB) for
    one parse. None for anything else (``--help``, an unknown flag, a missing value), which
    is then argparse's to answer."""
    found = dict.fromkeys(AGENT_FLAGS.values())
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        name = AGENT_FLAGS.get(flag)
        if name is None or found[name] is not None:
            return None
        if not eq:
            value = next(args, None)
            if value is None or value.startswith("-"):
                return None
        found[name] = value
    return SimpleNamespace(**found)


def _agent_arguments(p: argparse.ArgumentParser) -> None:
    # "-config" with one dash is the seed's spelling (Go's flag package).
    p.add_argument("-config", "--config", dest="config", metavar="FILE",
                   help="agent YAML config (the seed's format)")
    p.add_argument("--topology", help="a topology file; with --node, run that node")
    p.add_argument("--node", help="the node of --topology to run")
    p.add_argument("--state-dir", help="override the topology's state_dir")


def _parser(client_commands: bool = True) -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 -- see agent_flags

    parser = argparse.ArgumentParser(prog="cnet", description="CNET distributed agent")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("agent", help="run an agent in the foreground")
    _agent_arguments(p)
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("cluster", help="start, inspect or stop every node of a topology")
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("topology", help="topology YAML, e.g. topologies/jiangsu.yaml")
    p.add_argument("--state-dir", help="override the topology's state_dir")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every link")
    p.set_defaults(func=_cmd_cluster)

    if client_commands:
        from . import cli_client, cli_configs, cli_keys  # noqa: PLC0415 -- not for `cnet agent`

        cli_client.add_commands(sub)
        cli_keys.add_commands(sub)
        cli_configs.add_commands(sub)
    return parser


def _cmd_agent(args) -> int:
    # tornado.log imports curses to colour a terminal's log lines; our formatters never
    # colour, and an agent that does without it keeps ncurses (~0.5 MB) out of memory.
    sys.modules.setdefault("curses", None)
    from . import config as config_mod
    from .agent import serve
    from .logsetup import configure

    if bool(args.config) == bool(args.topology) or bool(args.topology) != bool(args.node):
        print("cnet agent: give -config FILE, or --topology FILE --node ID", file=sys.stderr)
        return 2
    try:
        if args.config:
            cfg = config_mod.load(args.config)
        else:
            from . import topology
            cfg = topology.load(args.topology, args.state_dir).agent_config(args.node)
    except ConfigError as exc:
        print(f"cnet agent: config error: {exc}", file=sys.stderr)
        return 2
    configure(cfg.log_level, cfg.log_format, cfg.node_id, cfg.log_dir / "agent.log")
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"cnet agent: config error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_cluster(args) -> int:
    from . import topology
    from .cluster import Cluster, ClusterError

    try:
        topo = topology.load(args.topology, args.state_dir)
    except ConfigError as exc:
        print(f"cnet cluster: {exc}", file=sys.stderr)
        return 2
    cluster = Cluster(topo)
    try:
        if args.action == "up":
            cluster.up(topo.path, timeout=args.timeout)
        elif args.action == "down":
            cluster.down()
        else:
            return 0 if cluster.status() else 1
    except ClusterError as exc:
        print(f"cnet cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
