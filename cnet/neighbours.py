"""What this node tells its neighbours about itself, and how it shows and uses what they tell it.

- ``self_snapshot``: the resource snapshot carried by heartbeats and broadcasts.
- ``summary``: this node's subtree summary (node count, node ids, labels, largest free amounts
  below it, and what it can reach through its peers) that a parent's scheduler uses.
- ``node_entry`` / ``scheduler_snapshot``: neighbour states turned into ``/api/nodes`` entries
  and into the scheduler's candidates.

What neighbours send passed the bus's schemas (``bus/payloads.py``); the readers here still take
each value only if it has the expected type, so no neighbour can make this node's answers fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .candidates import NodeView, Snapshot, node_columns
from .register import BEAT_USAGE_MAX_AGE
from .resources import Resources

if TYPE_CHECKING:
    from bus import NeighbourState

    from .register import Register
    from .workload import Workload

_FREE_KINDS = ("cpu", "memory", "gpu", "storage")
MAX_DEVICES = 64   # devices listed in a snapshot


def _map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _num(value: Any, default: Any = 0) -> Any:
    """``value`` if it is a finite number (not a bool), else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return value if isinstance(value, int) or math.isfinite(value) else default


def _int(value: Any, default: Any = 0) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _strs(value: Any, limit: int = 1024) -> list[str]:
    return [v for v in value[:limit] if isinstance(v, str)] if isinstance(value, list) else []


def _vector(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def _resources(value: Any) -> Resources:
    """A neighbour's resource vector; what is not a number counts as zero."""
    data = _map(value)
    return Resources(float(_num(data.get("cpu"))), int(_num(data.get("memory"))),
                     int(_num(data.get("gpu"))), int(_num(data.get("storage"))))


@dataclass(frozen=True)
class LocalView:
    """What this node knows of itself that its neighbours are told."""

    node_id: str
    address: str
    labels: dict
    register: "Register"
    live: Mapping[str, "Workload"]    # the Manager's live workloads (the same mapping, current)
    started_at: float
    # What scheduler_snapshot made of each neighbour's last report (node id -> what it was
    # made from, and the view with its columns), and of this node (None -> the same).
    views: dict = field(default_factory=dict, compare=False, repr=False)


def self_snapshot(local: LocalView) -> dict:
    """This node's full resource snapshot (sent in every heartbeat and broadcast).

    What an idle node sends stays the same from beat to beat (its start time, not its uptime;
    usage sampled once per ``BEAT_USAGE_MAX_AGE``), so its neighbours see no change to show.
    """
    resources = local.register.resources(usage_max_age=BEAT_USAGE_MAX_AGE)
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
        "devices": resources.get("devices", [])[:MAX_DEVICES],
        "gpu_free_memory": local.register.devices.largest_free_memory(),
        "workloads": {"count": len(local.live),
                      "names": sorted({wl.name for wl in live})[:512],
                      "labels": sorted({f"{k}={v}" for wl in live for k, v in wl.labels.items()})[:512]},
        "started_at": round(local.started_at, 3),
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
    gpu_memory = reach_gpu_memory = local.register.devices.largest_free_memory()
    count = 1
    for state in neighbours:
        if state.status != "alive":
            continue
        if state.role == "child" and isinstance(state.summary, dict) and state.summary:
            child = state.summary
            count += max(1, _int(child.get("nodes"), 1))
            live += max(0, _int(child.get("live_workloads")))
            for kind, value in _map(child.get("allocated")).items():
                if kind in allocated:
                    allocated[kind] += _num(value)
            node_ids.extend(_strs(child.get("node_ids", [state.node_id])))
            labels.update(_strs(child.get("labels"), 256))
            reach_ids.update(_strs(child.get("reach_node_ids")))
            reach_labels.update(_strs(child.get("reach_labels"), 256))
            child_free, child_reach = _map(child.get("max_free")), _map(child.get("reach_free"))
            for kind in _FREE_KINDS:
                value = _num(child_free.get(kind))
                max_free[kind] = max(max_free[kind], value)
                reach[kind] = max(reach[kind], _num(child_reach.get(kind, value), value))
            gpu_memory = max(gpu_memory, _int(child.get("max_free_gpu_memory")))
            reach_gpu_memory = max(reach_gpu_memory, gpu_memory,
                                   _int(child.get("reach_free_gpu_memory")))
        elif state.role == "peer":
            snap = _map(state.snapshot)
            avail = _map(snap.get("available"))
            for kind in _FREE_KINDS:
                reach[kind] = max(reach[kind], _num(avail.get(kind)))
            reach_gpu_memory = max(reach_gpu_memory, _int(snap.get("gpu_free_memory")))
            reach_ids.add(state.node_id)
            reach_labels.update(f"{k}={v}" for k, v in _map(snap.get("labels")).items())
    reach_ids.difference_update(node_ids)
    return {"nodes": count, "node_ids": node_ids[:1024], "labels": sorted(labels)[:256],
            "allocated": allocated, "live_workloads": live,
            "max_free": max_free, "reach_free": reach,
            "max_free_gpu_memory": gpu_memory, "reach_free_gpu_memory": reach_gpu_memory,
            "reach_node_ids": sorted(reach_ids)[:1024], "reach_labels": sorted(reach_labels - labels)[:256]}


def subtree_key(state: "NeighbourState") -> tuple | None:
    """What of a neighbour, changed, changes this node's summary enough to tell the parent now.

    For a child: its status, and a workload starting or ending anywhere in its subtree. For a
    peer: its status (it joins or leaves what this node reaches). None for the parent.
    """
    if state.role == "peer":
        return (state.status,)
    if state.role != "child" or not isinstance(state.summary, dict) or not state.summary:
        return None
    allocated = _map(state.summary.get("allocated"))
    return (state.status, _int(state.summary.get("nodes"), None),
            _int(state.summary.get("live_workloads"), None),
            tuple(sorted((str(k), _num(v)) for k, v in allocated.items())))


def node_entry(state: "NeighbourState", now: float) -> dict:
    """One neighbour as ``GET /api/nodes`` shows it (``rejected``: why its last refused message
    was refused, if one was)."""
    snap = _map(state.snapshot)
    address = snap.get("address")
    entry = {
        "node_id": state.node_id,
        "role": state.role,
        "status": state.status,
        "last_seen": round(state.age(now), 3),
        "address": state.http or (address if isinstance(address, str) else None),
        "labels": _map(snap.get("labels")),
        "capacity": _vector(snap.get("capacity")),
        "allocated": _vector(snap.get("allocated")),
        "available": _vector(snap.get("available")),
        "usage": _vector(snap.get("usage")),
        "devices": _devices(snap.get("devices")),
        "workloads": _int(_map(snap.get("workloads")).get("count"), None),
        "seq": state.seq,
        "rejected": state.rejected or None,
    }
    summary = _map(state.summary)
    if state.role == "child" and summary:
        entry["subtree"] = {"nodes": _int(summary.get("nodes"), 1),
                            "live_workloads": _int(summary.get("live_workloads"), None),
                            "allocated": _vector(summary.get("allocated")),
                            "max_free": _vector(summary.get("max_free")),
                            "reach_free": _vector(summary.get("reach_free")),
                            "max_free_gpu_memory": _int(summary.get("max_free_gpu_memory"), None)}
    return entry


def _devices(value: Any) -> list[dict]:
    """A neighbour's device list as shown: maps only, at most ``MAX_DEVICES``."""
    return [d for d in value[:MAX_DEVICES] if isinstance(d, dict)] if isinstance(value, list) else []


def _labels(pairs: Iterable[str]) -> frozenset:
    return frozenset(tuple(p.split("=", 1)) for p in pairs if "=" in p)


def scheduler_snapshot(local: LocalView, neighbours: Iterable["NeighbourState"],
                       exclude: Iterable[str] = ()) -> Snapshot:
    """Candidates for the scheduler: this node, alive-or-lost children and peers (not parents).

    Each node's view (and the columns the scheduler reads of it) is made once per change
    (``local.views``): a neighbour's once per report it sent, this node's once per change to
    its allocations or live workloads, not once per request.
    """
    key = (local.register.seq, tuple(local.live))
    cached = local.views.get(None)
    if cached is None or cached[0] != key:
        cached = local.views[None] = (key, _self_view(local))
    views = [cached[1]]
    skip = set(exclude)
    for state in neighbours:
        if state.role in ("child", "peer") and state.node_id not in skip:
            views.append(view_of(local, state))
    return Snapshot(local.node_id, [v[0] for v in views], [v[1] for v in views])


def view_of(local: LocalView, state: "NeighbourState") -> tuple[NodeView, tuple]:
    """A child's or a peer's view and columns, made once per report (``local.views``); at a
    node that is placing work, as the report arrives (``Placer.prepare``)."""
    # A new report is a new snapshot (or summary) object (an equal one keeps the stored
    # objects); the cache holds the old one, so the identity test cannot be fooled by a
    # reused address.
    cached = local.views.get(state.node_id)
    if (cached is None or cached[0] != (state.role, state.status)
            or cached[1] is not state.snapshot or cached[2] is not state.summary):
        view = _neighbour_view(state)
        cached = local.views[state.node_id] = ((state.role, state.status), state.snapshot,
                                               state.summary, (view, node_columns(view)))
    return cached[3]


def _self_view(local: LocalView) -> tuple[NodeView, tuple]:
    """This node as its own scheduler sees it, and its columns."""
    live = local.live.values()
    view = NodeView(node_id=local.node_id, role="self", status="alive",
                    available=local.register.available, capacity=local.register.capacity,
                    gpu_memory=local.register.devices.largest_free_memory(),
                    labels=dict(local.labels),
                    workload_names=frozenset(sorted({wl.name for wl in live})[:512]),
                    workload_count=len(local.live),
                    workload_labels=_labels(sorted(
                        {f"{k}={v}" for wl in live for k, v in wl.labels.items()})[:512]))
    return view, node_columns(view)


def _neighbour_view(state: "NeighbourState") -> NodeView:
    """A child or a peer as the scheduler sees it, from the last snapshot it sent."""
    snap = _map(state.snapshot)
    works = _map(snap.get("workloads"))
    subtree = _map(state.summary) if state.role == "child" else {}
    reach = _map(subtree.get("reach_free"))
    return NodeView(
        node_id=state.node_id, role=state.role, status=state.status,
        available=_resources(snap.get("available")),
        capacity=_resources(snap.get("capacity")),
        gpu_memory=max(_int(snap.get("gpu_free_memory")),
                       _int(subtree.get("reach_free_gpu_memory"))),
        labels=dict(_map(snap.get("labels"))),
        workload_names=frozenset(_strs(works.get("names"))),
        workload_count=_int(works.get("count")),
        workload_labels=_labels(_strs(works.get("labels"))),
        # What the child reaches through peers counts, as its reach_free does.
        subtree_nodes=frozenset(n for n in [*_strs(subtree.get("node_ids")),
                                            *_strs(subtree.get("reach_node_ids"))]
                                if n != state.node_id),
        subtree_free=_resources(reach) if reach else None,
        subtree_labels=_labels([*_strs(subtree.get("labels")),
                                *_strs(subtree.get("reach_labels"))]))

