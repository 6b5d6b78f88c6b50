"""The candidates of a scheduling decision: each node as the register sees it (``NodeView``),
and one decision's nodes with the figures every decision reads, precomputed (``Snapshot``).

Pure data, no I/O; :mod:`cnet.scheduler` decides on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .resources import KINDS, Resources

__all__ = ["NodeView", "Snapshot", "node_columns", "rank_columns", "reach"]

_CPU_SLACK = 1e-9   # as Resources.fits_in: 0.1 + 0.2 cores fit in 0.3 free


@dataclass(frozen=True)
class NodeView:
    """One candidate as the register sees it."""

    node_id: str
    role: str                                  # self | child | peer
    status: str = "alive"                      # alive | lost
    available: Resources = Resources()
    capacity: Resources = Resources()
    gpu_memory: int = 0                        # largest free GPU's memory here (or below), bytes
    labels: dict = field(default_factory=dict)
    workload_names: frozenset = frozenset()    # names of live workloads on the node
    workload_count: int = 0                    # how many live workloads (replicas share a name)
    workload_labels: frozenset = frozenset()   # (key, value) labels of those workloads
    subtree_nodes: frozenset = frozenset()     # for a child: node ids below it (itself excluded)
    subtree_free: Resources | None = None      # for a child: the largest free amounts below it
    subtree_labels: frozenset = frozenset()    # for a child: (key, value) labels found below it


class Snapshot:
    """The candidate nodes of one decision, with the per-node figures every decision reads
    precomputed as tuples (built for each decision that cannot stay on this node; building one
    costs far less than the delegation it leads to)."""

    def __init__(self, self_id: str, nodes: list[NodeView],
                 columns: list[tuple[tuple, tuple]] | None = None):
        """``columns``, when given, are :func:`node_columns` of each of ``nodes`` (a caller
        that keeps a node's view across decisions keeps its columns with it)."""
        self.self_id = self_id
        if columns is None:
            columns = [node_columns(n) for n in nodes]
        kept = [i for i, n in enumerate(nodes) if n.role in ("self", "child", "peer")]
        self.nodes = [nodes[i] for i in kept]
        self.index = {n.node_id: i for i, n in enumerate(self.nodes)}
        # Every filter walks the nodes in id order, so equal keys later rank by id.
        self.by_id = sorted(range(len(self.nodes)), key=lambda i: self.nodes[i].node_id)
        # What each node can take, cpu slack added: (cpu + slack, memory, gpu, storage).
        self.room = [columns[i][0] for i in kept]
        # The least gpu and storage any node has room for: a request within both never fails
        # on them, so the fit test can skip them.
        self.room_floor = (min((r[2] for r in self.room), default=0),
                           min((r[3] for r in self.room), default=0))
        self.selves = [i for i, n in enumerate(self.nodes) if n.role == "self"]
        self.rank = [columns[i][1] for i in kept]
        self._masks: dict = {}       # rule or term key -> (mask, passing ids in id order)

    def __len__(self) -> int:
        return len(self.nodes)

    def mask(self, key, holds: Callable[[NodeView], bool]) -> tuple[list[bool], list[int]]:
        """``holds`` over every node, kept for this snapshot under ``key``."""
        found = self._masks.get(key)
        if found is None:
            mask = [holds(n) for n in self.nodes]
            found = self._masks[key] = (mask, [i for i in self.by_id if mask[i]])
        return found


def node_columns(node: NodeView) -> tuple[tuple, tuple]:
    """What a snapshot reads of ``node`` in every decision: its room, cpu slack added
    ``(cpu + slack, memory, gpu, storage)``, and its rank columns (:func:`rank_columns`)."""
    r = reach(node)
    return (r.cpu + _CPU_SLACK, r.memory, r.gpu, r.storage), rank_columns(node)


def reach(node: NodeView) -> Resources:
    """What a request can find at a node or, for a child, anywhere below it."""
    here, below = node.available, node.subtree_free
    if below is None:
        return here
    return Resources(*(max(getattr(here, k), getattr(below, k)) for k in KINDS))


def rank_columns(node: NodeView, gpu: float = 0.0, storage: float = 0.0) -> tuple[float, ...]:
    """Free and capacity of cpu and memory as floats (a capacity of 0 counts as 1), the gpu and
    storage share of the fraction left after taking ``gpu`` and ``storage``, then the load."""
    free, cap = node.available, node.capacity
    # Never fewer than the distinct names: a view built without a count still ranks.
    load = float(max(node.workload_count, len(node.workload_names)))
    return (float(free.cpu), _positive(cap.cpu), float(free.memory), _positive(cap.memory),
            0.5 * ((float(free.gpu) - gpu) / _positive(cap.gpu)
                   + (float(free.storage) - storage) / _positive(cap.storage)), load)


def _positive(capacity: float) -> float:
    return float(capacity) if capacity > 0 else 1.0
