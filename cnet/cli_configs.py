"""``cnet configs TOPOLOGY --out DIR``: one seed-format config per node of a topology
(``DIR/config_<node_id>.yaml``, the seed's ``configs/`` files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import topology
from .config import ConfigError

__all__ = ["add_commands", "render"]

_HEADER = """\
# Node {node_id} of {topology}, in the seed's config format:
#   ./bin/cnet-agent -config {out}/config_{node_id}.yaml     (from the repository root)
# Made by `cnet configs {topology} --out {out}`: edit the topology, then run that again
# (tests/test_seed_commands.py fails while this file and the topology differ).
# Node state (db, data, logs) goes to agent.state_dir, relative to the current directory.
"""
_FIRST = ("agent", "resources", "parent", "peers")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``cnet configs`` to the ``cnet`` parser's subcommands."""
    p = sub.add_parser("configs", help="write a seed-format config file per node of a topology")
    p.add_argument("topology", help="topology YAML, e.g. topologies/jiangsu.yaml")
    p.add_argument("--out", default="configs", help="directory for config_<node>.yaml (default configs)")
    p.set_defaults(func=_cmd_configs)


def render(topo: topology.Topology, node_id: str, topology_arg: str, out_arg: str) -> str:
    """The text of one node's config file; the arguments as typed go into its header."""
    state_dir = f"{topo.state_dir_text.rstrip('/')}/{node_id}"
    raw = topo.seed_config(node_id, state_dir=state_dir)
    raw.setdefault("parent", {"enabled": False})
    raw.setdefault("peers", {"enabled": False})
    ordered = {key: raw[key] for key in _FIRST} | {k: v for k, v in raw.items() if k not in _FIRST}
    header = _HEADER.format(node_id=node_id, topology=topology_arg, out=out_arg.rstrip("/"))
    return header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


def _cmd_configs(args: argparse.Namespace) -> int:
    try:
        topo = topology.load(args.topology)
    except ConfigError as exc:
        print(f"cnet configs: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for node_id in topo.node_ids():
            path = out / f"config_{node_id}.yaml"
            path.write_text(render(topo, node_id, args.topology, args.out))
            print(path)
    except OSError as exc:
        print(f"cnet configs: {exc}", file=sys.stderr)
        return 1
    return 0
