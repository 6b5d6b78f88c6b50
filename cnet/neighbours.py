"""What this node tells its neighbours about itself, and how it shows and uses what they tell it.

- ``self_snapshot``: the resource snapshot carried by heartbeats and broadcasts.
- ``summary``: this node's subtree summary (node count, node ids, labels, largest free amounts
  below it, and what it can reach through its peers) that a parent's scheduler uses.
- ``node_entry`` / ``scheduler_snapshot``: neighbour states turned into ``/api/nodes`` entries
  and into the scheduler's candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from .resources import Resources
from .scheduler import NodeView, Snapshot

if TYPE_CHECKING:
    from bus import NeighbourState

    from .register import Register
    from .workload import Workload

_FREE_KINDS = ("cpu", "memory", "gpu", "storage")


@dataclass(frozen=True)
class LocalView:
    """What this node knows of itself that its neighbours are told."""

    node_id: str
    address: str
    labels: dict
    register: "Register"
    live: Mapping[str, "Workload"]    # the Manager's live workloads (the same mapping, current)
    started_at: float


def self_snapshot(local: LocalView) -> dict:
    """This node's full resource snapshot (sent in every heartbeat and broadcast)."""
    resources = local.register.resources()
    live = local.live.values()
    return {
        "node_id": local.node_id,
        "address": local.address,
        "labels": local.labels,
        "seq": local.register.seq,
        "capacity": resources["capacity"],
        "allocated": resources["allocated"],
        "available": resources["available"],
        "usage": resources["usage"],
        "workloads": {"count": len(local.live),
                      "names": sorted({wl.name for wl in live})[:512],
                      "labels": sorted({f"{k}={v}" for wl in live for k, v in wl.labels.items()})[:512]},
        "uptime": round(time.time() - local.started_at, 1),
    }


def summary(local: LocalView, neighbours: Iterable["NeighbourState"]) -> dict:
    """The subtree below and including this node, for the parent's scheduler and dashboard.

    ``max_free`` covers this node and every node below it; ``reach_free``, ``reach_node_ids``
    and ``reach_labels`` add this node's peers (and what the children reach), since a delegated
    workload may go on to them. ``allocated`` and ``live_workloads`` total the whole subtree, so
    any change below shows in the summary (and the parent passes it on at once, see
    ``subtree_key``).
    """
    free = local.register.available.to_dict()
    allocated = local.register.allocated.to_dict()
    live = len(local.live)
    node_ids = [local.node_id]
    labels = {f"{k}={v}" for k, v in local.labels.items()}
    max_free = dict(free)
    reach = dict(free)
    reach_ids: set[str] = set()
    reach_labels: set[str] = set()
    count = 1
    for state in neighbours:
        if state.status != "alive":
            continue
        if state.role == "child" and state.summary:
            child = state.summary
            count += int(child.get("nodes", 1))
            live += int(child.get("live_workloads", 0))
            for kind, value in (child.get("allocated") or {}).items():
                if kind in allocated and isinstance(value, (int, float)):
                    allocated[kind] += value
            node_ids.extend(child.get("node_ids", [state.node_id])[:1024])
            labels.update(child.get("labels", [])[:256])
            reach_ids.update(child.get("reach_node_ids", [])[:1024])
            reach_labels.update(child.get("reach_labels", [])[:256])
            for kind in _FREE_KINDS:
                value = (child.get("max_free") or {}).get(kind, 0)
                max_free[kind] = max(max_free[kind], value)
                reach[kind] = max(reach[kind], (child.get("reach_free") or {}).get(kind, value))
        elif state.role == "peer":
            avail = (state.snapshot or {}).get("available") or {}
            for kind in _FREE_KINDS:
                reach[kind] = max(reach[kind], avail.get(kind, 0))
            reach_ids.add(state.node_id)
            reach_labels.update(f"{k}={v}" for k, v in ((state.snapshot or {}).get("labels") or {}).items())
    reach_ids.difference_update(node_ids)
    return {"nodes": count, "node_ids": node_ids[:1024], "labels": sorted(labels)[:256],
            "allocated": allocated, "live_workloads": live,
            "max_free": max_free, "reach_free": reach,
            "reach_node_ids": sorted(reach_ids)[:1024], "reach_labels": sorted(reach_labels - labels)[:256]}


def subtree_key(state: "NeighbourState") -> tuple | None:
    """What of a neighbour, changed, changes this node's summary enough to tell the parent now.

    For a child: its status, and a workload starting or ending anywhere in its subtree. For a
    peer: its status (it joins or leaves what this node reaches). None for the parent.
    """
    if state.role == "peer":
        return (state.status,)
    if state.role != "child" or not state.summary:
        return None
    allocated = state.summary.get("allocated") or {}
    return (state.status, state.summary.get("nodes"), state.summary.get("live_workloads"),
            tuple(sorted((k, v) for k, v in allocated.items() if isinstance(v, (int, float)))))


def node_entry(state: "NeighbourState", now: float) -> dict:
    """One neighbour as ``GET /api/nodes`` shows it."""
    snap = state.snapshot or {}
    entry = {
        "node_id": state.node_id,
        "role": state.role,
        "status": state.status,
        "last_seen": round(state.age(now), 3),
        "address": state.http or snap.get("address"),
        "labels": snap.get("labels", {}),
        "capacity": snap.get("capacity"),
        "allocated": snap.get("allocated"),
        "available": snap.get("available"),
        "usage": snap.get("usage"),
        "workloads": (snap.get("workloads") or {}).get("count"),
        "seq": state.seq,
    }
    if state.role == "child" and state.summary:
        entry["subtree"] = {"nodes": state.summary.get("nodes", 1),
                            "live_workloads": state.summary.get("live_workloads"),
                            "allocated": state.summary.get("allocated"),
                            "max_free": state.summary.get("max_free"),
                            "reach_free": state.summary.get("reach_free")}
    return entry


def _labels(pairs: Iterable[str]) -> frozenset:
    return frozenset(tuple(p.split("=", 1)) for p in pairs if "=" in p)


def scheduler_snapshot(local: LocalView, neighbours: Iterable["NeighbourState"],
                       exclude: Iterable[str] = ()) -> Snapshot:
    """Candidates for the scheduler: this node, alive-or-lost children and peers (not parents)."""
    me = self_snapshot(local)
    nodes = [NodeView(node_id=local.node_id, role="self", status="alive",
                      available=local.register.available, capacity=local.register.capacity,
                      labels=dict(local.labels),
                      workload_names=frozenset(me["workloads"]["names"]),
                      workload_count=me["workloads"]["count"],
                      workload_labels=_labels(me["workloads"]["labels"]))]
    skip = set(exclude)
    for state in neighbours:
        if state.role not in ("child", "peer") or state.node_id in skip:
            continue
        snap = state.snapshot or {}
        works = snap.get("workloads") or {}
        subtree = (state.summary or {}) if state.role == "child" else {}
        reach = subtree.get("reach_free")
        nodes.append(NodeView(
            node_id=state.node_id, role=state.role, status=state.status,
            available=Resources.from_dict(snap.get("available")),
            capacity=Resources.from_dict(snap.get("capacity")),
            labels=dict(snap.get("labels") or {}),
            workload_names=frozenset(works.get("names", [])),
            workload_count=works.get("count", 0) if isinstance(works.get("count"), int) else 0,
            workload_labels=_labels(works.get("labels", [])),
            # What the child reaches through peers counts, as its reach_free does.
            subtree_nodes=frozenset(n for n in [*subtree.get("node_ids", []),
                                                *subtree.get("reach_node_ids", [])]
                                    if n != state.node_id),
            subtree_free=Resources.from_dict(reach) if reach else None,
            subtree_labels=_labels([*subtree.get("labels", []), *subtree.get("reach_labels", [])])))
    return Snapshot(local.node_id, nodes)

