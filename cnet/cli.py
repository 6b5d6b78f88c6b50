"""The ``cnet`` command: run an agent, or talk to one (submit, ls, get, stop, rm, logs, ...)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from .config import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnet", description="CNET distributed agent")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("agent", help="run an agent in the foreground")
    p.add_argument("--config", help="agent YAML config (the seed's format)")
    p.add_argument("--topology", help="a topology file; with --node, run that node")
    p.add_argument("--node", help="the node of --topology to run")
    p.add_argument("--state-dir", help="override the topology's state_dir")
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("cluster", help="start, inspect or stop every node of a topology")
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("topology", help="topology YAML, e.g. topologies/jiangsu.yaml")
    p.add_argument("--state-dir", help="override the topology's state_dir")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every link")
    p.set_defaults(func=_cmd_cluster)

    def client_cmd(name: str, help_: str, func):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", default=os.environ.get("CNET_URL", DEFAULT_URL),
                       help=f"agent URL (env CNET_URL, default {DEFAULT_URL})")
        c.add_argument("--token", default=os.environ.get("CNET_API_TOKEN"),
                       help="API bearer token (env CNET_API_TOKEN)")
        c.set_defaults(func=func, _name=name)
        return c

    c = client_cmd("submit", "submit a workload", _cmd_submit)
    c.add_argument("-f", "--file", help="workload JSON file ('-' for stdin)")
    c.add_argument("--name")
    c.add_argument("--type", default="process")
    c.add_argument("--cpu", type=float, default=0.0)
    c.add_argument("--memory", type=int, default=0, help="bytes")
    c.add_argument("--gpu", type=int, default=0)
    c.add_argument("command", nargs=argparse.REMAINDER,
                   help="for a process: -- COMMAND [ARGS...]")
    c = client_cmd("ls", "list workloads", _cmd_ls)
    c.add_argument("--status")
    c.add_argument("--type")
    c.add_argument("--json", action="store_true")
    for name, help_ in (("get", "show a workload"), ("stop", "stop a workload"),
                        ("rm", "stop and delete a workload")):
        c = client_cmd(name, help_, _cmd_one)
        c.add_argument("id")
    c = client_cmd("logs", "show a workload's log tail", _cmd_logs)
    c.add_argument("id")
    c.add_argument("--tail", type=int, default=100)
    client_cmd("resources", "this node's resources", _cmd_show)
    client_cmd("nodes", "this node and its neighbours", _cmd_show)
    client_cmd("health", "agent health", _cmd_show)
    return parser


def _cmd_agent(args) -> int:
    from . import config as config_mod
    from .agent import serve
    from .logsetup import configure

    if bool(args.config) == bool(args.topology) or bool(args.topology) != bool(args.node):
        print("cnet agent: give --config FILE, or --topology FILE --node ID", file=sys.stderr)
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


def _client(args):
    from .http_client import HttpClient
    return HttpClient(args.url, args.token)


def _run(call) -> int:
    from .http_client import ApiError
    try:
        result = call()
    except ApiError as exc:
        print(f"cnet: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        sys.stdout.write(result)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _cmd_submit(args) -> int:
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file).read()
            spec = json.loads(text)
        except (OSError, ValueError) as exc:
            print(f"cnet submit: cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command or not args.name:
            print("cnet submit: give -f FILE, or --name NAME -- COMMAND [ARGS...]", file=sys.stderr)
            return 2
        spec = {"name": args.name, "type": args.type,
                "config": {"command": command[0], "args": command[1:]},
                "requirements": {"cpu": args.cpu, "memory": args.memory, "gpu": args.gpu}}
    return _run(lambda: _client(args).submit(spec))


def _cmd_ls(args) -> int:
    from .http_client import ApiError
    try:
        result = _client(args).list(args.status, args.type)
    except ApiError as exc:
        print(f"cnet: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    rows = [("ID", "NAME", "TYPE", "STATUS", "NODE", "PID", "ENDPOINT")]
    for wl in result["workloads"]:
        rows.append((wl["id"], wl["name"], wl["type"], wl["status"], wl["node_id"],
                     str(wl.get("process_pid") or "-"), wl.get("endpoint") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _cmd_one(args) -> int:
    client = _client(args)
    call = {"get": client.get, "stop": client.stop, "rm": client.delete}[args._name]
    return _run(lambda: call(args.id))


def _cmd_logs(args) -> int:
    return _run(lambda: _client(args).logs(args.id, args.tail))


def _cmd_show(args) -> int:
    client = _client(args)
    return _run({"resources": client.resources, "nodes": client.nodes,
                 "health": client.health}[args._name])


if __name__ == "__main__":
    sys.exit(main())
