"""The node operations: this node's resources, its view of the tree (nodes), and its health."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import neighbours
from .base import Caller, Operation

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Health", "Nodes", "ResourcesOp"]

_VECTORS = ("capacity", "allocated", "available", "usage", "devices")


@dataclass(frozen=True)
class ResourcesOp(Operation):
    """``GET /api/resources``: capacity, allocated, available and measured usage."""

    name = "resources"

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        return node.register.resources()


@dataclass(frozen=True)
class Nodes(Operation):
    """This node, its parent, children and peers (the seed's view; this node is left out of
    the neighbour lists), with this node's subtree summary."""

    name = "nodes"

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        local = node.local
        resources = node.register.resources()
        me = {"node_id": local.node_id, "role": "self", "status": "alive",
              "address": local.address, "last_seen": 0.0,
              "uptime": round(time.time() - local.started_at, 1), "labels": local.labels,
              **{k: resources[k] for k in _VECTORS}}
        now = node.clock()
        states = node.port.neighbours()
        entries = sorted((neighbours.node_entry(s, now) for s in states), key=lambda e: e["node_id"])
        me["subtree"] = neighbours.summary(local, states)
        return {"node_id": local.node_id, "self": me,
                "parent": next((e for e in entries if e["role"] == "parent"), None),
                "children": [e for e in entries if e["role"] == "child"],
                "peers": [e for e in entries if e["role"] == "peer"],
                "nodes": [me, *entries]}


@dataclass(frozen=True)
class Health(Operation):
    """Liveness for load balancers and humans; answered without the token."""

    name = "health"
    public = True

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        executors = {}
        for executor in node.manager.executors.values():
            state = await executor.health()
            if state is not None:
                executors[executor.type] = state
        mine = node.manager.workloads.values()
        live = sum(1 for wl in mine if wl.live) + sum(1 for wl in node.mirrors.records.values()
                                                      if wl.live)
        return {"status": "healthy", "node_id": node.node_id, "version": node.version,
                "uptime": round(time.time() - node.local.started_at, 1),
                "address": node.local.address,
                "workloads": {"total": len(mine) + len(node.mirrors.records), "live": live},
                "executors": executors}
