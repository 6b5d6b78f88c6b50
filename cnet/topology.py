"""Topology files: a whole cluster in one YAML, turned into each node's agent config.

    state_dir: run                # node state in <state_dir>/<node_id> (relative to the cwd)
    defaults:                     # merged into every node (any agent config section)
      address: 127.0.0.1
      resources: {cpu: 8.0, memory: 17179869184}
    nodes:
      jiangsu: {port: 8080}
      nanjing: {port: 8081, parent: jiangsu, peers: [suqian, changzhou]}

``parent`` and ``peers`` name other nodes of the file (or give host:port of agents outside it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import config as config_mod
from .config import Config, ConfigError

_AGENT_KEYS = ("address", "port", "labels")
_SECTIONS = ("resources", "logging", "storage", "api", "data", "process", "scheduler",
             "container", "bus", "services")


@dataclass
class Topology:
    path: Path
    state_dir: Path
    nodes: dict[str, dict]          # node id -> its merged settings
    defaults: dict
    state_dir_text: str = "run"     # state_dir as written (a relative one is relative to the cwd)

    def node_ids(self) -> list[str]:
        return list(self.nodes)

    def address(self, node_id: str) -> str:
        node = self.nodes[node_id]
        return f"{node.get('address', '127.0.0.1')}:{node['port']}"

    def url(self, node_id: str) -> str:
        host = self.nodes[node_id].get("address", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{host}:{self.nodes[node_id]['port']}"

    def node_state_dir(self, node_id: str) -> Path:
        return self.state_dir / node_id

    def neighbours(self, node_id: str) -> dict[str, str]:
        """Expected links of a node inside this topology: neighbour id -> role."""
        out: dict[str, str] = {}
        node = self.nodes[node_id]
        if node.get("parent") in self.nodes:
            out[node["parent"]] = "parent"
        for peer in node.get("peers") or []:
            if peer in self.nodes:
                out[peer] = "peer"
        for other, settings in self.nodes.items():
            if settings.get("parent") == node_id:
                out[other] = "child"
        return out

    def token(self, node_id: str) -> str | None:
        return (self.nodes[node_id].get("api") or {}).get("token")

    def agent_config(self, node_id: str) -> Config:
        """The node's config, as if it were written in the seed's format."""
        raw = self.seed_config(node_id)
        try:
            return config_mod.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: node {node_id}: {exc}") from None

    def seed_config(self, node_id: str, state_dir: str | None = None) -> dict:
        """The node's config in the seed's format, as parsed YAML (not yet validated);
        ``state_dir`` replaces the node's resolved state directory."""
        if node_id not in self.nodes:
            raise ConfigError(f"--node: {node_id!r} is not in {self.path} "
                              f"(nodes: {', '.join(self.nodes)})")
        node = self.nodes[node_id]
        raw: dict = {"agent": {"node_id": node_id,
                               "state_dir": state_dir or str(self.node_state_dir(node_id))}}
        for key in _AGENT_KEYS:
            if key in node:
                raw["agent"][key] = node[key]
        for key in _SECTIONS:
            if key in node:
                raw[key] = node[key]
        parent = node.get("parent")
        if parent:
            raw["parent"] = {"enabled": True, "address": self._resolve(parent, f"nodes.{node_id}.parent")}
        peers = node.get("peers") or []
        if not isinstance(peers, list):
            raise ConfigError(f"{self.path}: nodes.{node_id}.peers: must be a list")
        if peers:
            raw["peers"] = {"enabled": True, "addresses": [
                self._resolve(p, f"nodes.{node_id}.peers[{i}]") for i, p in enumerate(peers)]}
        return raw

    def _resolve(self, ref, where: str) -> str:
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{self.path}: {where}: must be a node id or host:port")
        if ref in self.nodes:
            return self.address(ref)
        if ":" in ref:
            return ref
        raise ConfigError(f"{self.path}: {where}: {ref!r} is neither a node of this topology "
                          "nor host:port")


def load(path: str | Path, state_dir: str | Path | None = None) -> Topology:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), dict) or not raw["nodes"]:
        raise ConfigError(f"{path}: a topology needs a `nodes:` mapping of node id -> settings")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults: must be a mapping")
    nodes: dict[str, dict] = {}
    ports: dict[int, str] = {}
    for node_id, settings in raw["nodes"].items():
        settings = settings or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: nodes.{node_id}: must be a mapping")
        merged = deep_merge(copy.deepcopy(defaults), settings)
        port = merged.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise ConfigError(f"{path}: nodes.{node_id}.port: required, a whole number")
        if port in ports:
            raise ConfigError(f"{path}: nodes.{node_id}.port: {port} is also {ports[port]}'s port")
        ports[port] = str(node_id)
        nodes[str(node_id)] = merged
    state_text = str(state_dir or raw.get("state_dir") or "run")
    topo = Topology(path=path, state_dir=Path(state_text).expanduser().resolve(), nodes=nodes,
                    defaults=defaults, state_dir_text=state_text)
    for node_id in nodes:
        topo.agent_config(node_id)  # validate every node now, not when it starts
    return topo


def deep_merge(base: dict, extra: dict) -> dict:
    """A new mapping: ``base`` with ``extra`` merged in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
