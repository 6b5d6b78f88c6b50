"""The Scheduler: decide where a workload runs, as a pure function of (request, snapshot).

No I/O. The snapshot holds the candidate nodes (this node, its children with their subtree
summaries, its peers) as numpy arrays, so one decision over a thousand nodes costs a few vector
operations; the per-node rejection reasons are only spelled out when someone asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BadRequest
from .resources import KINDS, Resources

STRATEGIES = ("local_first", "least_loaded", "binpack", "spread")
_SLACK = np.array([1e-9, 0.0, 0.0, 0.0])
_PLACEMENT_KEYS = {"strategy", "node", "node_selector", "affinity", "anti_affinity"}


@dataclass(frozen=True)
class NodeView:
    """One candidate as the register sees it."""

    node_id: str
    role: str                                  # self | child | peer
    status: str = "alive"                      # alive | lost
    available: Resources = Resources()
    capacity: Resources = Resources()
    labels: dict = field(default_factory=dict)
    workload_names: frozenset = frozenset()    # names of live workloads on the node
    workload_count: int = 0                    # how many live workloads (replicas share a name)
    workload_labels: frozenset = frozenset()   # (key, value) labels of those workloads
    subtree_nodes: frozenset = frozenset()     # for a child: node ids below it (itself excluded)
    subtree_free: Resources | None = None      # for a child: the largest free amounts below it
    subtree_labels: frozenset = frozenset()    # for a child: (key, value) labels found below it


@dataclass(frozen=True)
class Selector:
    """A soft affinity term: a workload name, or labels a workload carries."""

    name: str | None = None
    labels: tuple = ()

    def matches(self, node: NodeView) -> bool:
        if self.name is not None and self.name not in node.workload_names:
            return False
        return all(pair in node.workload_labels for pair in self.labels)


@dataclass(frozen=True)
class Placement:
    strategy: str = "local_first"
    node: str | None = None
    node_selector: tuple = ()                  # ((key, value), ...)
    affinity: tuple = ()                       # (Selector, ...)
    anti_affinity: tuple = ()

    @classmethod
    def parse(cls, raw: dict | None, default_strategy: str = "local_first") -> "Placement":
        """Validate a workload's ``placement`` object; raise BadRequest naming the bad field."""
        raw = raw or {}
        if not isinstance(raw, dict):
            raise BadRequest("placement: must be an object", code="invalid_field")
        unknown = sorted(set(raw) - _PLACEMENT_KEYS)
        if unknown:
            raise BadRequest(f"placement: unknown field(s) {', '.join(unknown)}", code="invalid_field")
        strategy = raw.get("strategy", default_strategy)
        if strategy not in STRATEGIES:
            raise BadRequest(f"placement.strategy: unknown strategy {strategy!r}; expected one of "
                             + ", ".join(STRATEGIES), code="invalid_field")
        node = raw.get("node")
        if node is not None and (not isinstance(node, str) or not node):
            raise BadRequest("placement.node: must be a node id", code="invalid_field")
        selector = raw.get("node_selector") or {}
        if not isinstance(selector, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in selector.items()):
            raise BadRequest("placement.node_selector: must be an object of label: value strings",
                             code="invalid_field")
        return cls(strategy=strategy, node=node, node_selector=tuple(sorted(selector.items())),
                   affinity=_selectors(raw.get("affinity"), "placement.affinity"),
                   anti_affinity=_selectors(raw.get("anti_affinity"), "placement.anti_affinity"))

    def to_dict(self) -> dict:
        out: dict = {"strategy": self.strategy}
        if self.node:
            out["node"] = self.node
        if self.node_selector:
            out["node_selector"] = dict(self.node_selector)
        for key, terms in (("affinity", self.affinity), ("anti_affinity", self.anti_affinity)):
            if terms:
                out[key] = [{**({"name": t.name} if t.name else {}),
                             **({"labels": dict(t.labels)} if t.labels else {})} for t in terms]
        return out


def _selectors(raw, where: str) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest(f"{where}: must be a list of {{name}} or {{labels}} terms", code="invalid_field")
    out = []
    for i, term in enumerate(raw):
        if isinstance(term, str):
            term = {"name": term}
        if not isinstance(term, dict) or not set(term) <= {"name", "labels"} or not term:
            raise BadRequest(f"{where}[{i}]: must be {{\"name\": ...}} and/or {{\"labels\": {{...}}}}",
                             code="invalid_field")
        name, labels = term.get("name"), term.get("labels") or {}
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"{where}[{i}].name: must be a string", code="invalid_field")
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise BadRequest(f"{where}[{i}].labels: must be an object of strings", code="invalid_field")
        out.append(Selector(name=name, labels=tuple(sorted(labels.items()))))
    return tuple(out)


class Snapshot:
    """The candidate nodes of one decision, as arrays (built for each decision that cannot stay
    on this node; building one costs far less than the delegation it leads to)."""

    def __init__(self, self_id: str, nodes: list[NodeView]):
        self.self_id = self_id
        self.nodes = [n for n in nodes if n.role in ("self", "child", "peer")]
        self.index = {n.node_id: i for i, n in enumerate(self.nodes)}
        self.free = np.array([[getattr(n.available, k) for k in KINDS] for n in self.nodes],
                             dtype=np.float64).reshape(-1, 4)
        below = [n.subtree_free or Resources() for n in self.nodes]
        # What a request can find at a child or anywhere below it.
        self.reach = np.maximum(self.free, np.array([[getattr(b, k) for k in KINDS] for b in below],
                                                    dtype=np.float64).reshape(-1, 4))
        cap = np.array([[getattr(n.capacity, k) for k in KINDS] for n in self.nodes],
                       dtype=np.float64).reshape(-1, 4)
        self.cap = np.where(cap > 0, cap, 1.0)
        self.alive = np.array([n.status == "alive" for n in self.nodes], dtype=bool)
        self.is_self = np.array([n.role == "self" for n in self.nodes], dtype=bool)
        # Never fewer than the distinct names: a view built without a count still ranks.
        self.load = np.array([max(n.workload_count, len(n.workload_names)) for n in self.nodes],
                             dtype=np.float64)
        self.id_rank = np.argsort(np.argsort([n.node_id for n in self.nodes], kind="stable"))
        self._host_masks: dict = {}
        self._label_masks: dict = {}
        self._term_masks: dict = {}

    def __len__(self) -> int:
        return len(self.nodes)

    def host_mask(self, target: str) -> np.ndarray:
        """Nodes that are ``target`` or (children) have it below them."""
        mask = self._host_masks.get(target)
        if mask is None:
            mask = np.array([_hosts(n, target) for n in self.nodes], dtype=bool)
            self._host_masks[target] = mask
        return mask

    def label_mask(self, pair: tuple) -> np.ndarray:
        """Nodes carrying label ``key=value`` themselves, or (children) somewhere below."""
        mask = self._label_masks.get(pair)
        if mask is None:
            key, value = pair
            mask = np.array([n.labels.get(key) == value or pair in n.subtree_labels
                             for n in self.nodes], dtype=bool)
            self._label_masks[pair] = mask
        return mask

    def term_mask(self, term: Selector) -> np.ndarray:
        mask = self._term_masks.get(term)
        if mask is None:
            mask = np.array([term.matches(n) for n in self.nodes], dtype=bool)
            self._term_masks[term] = mask
        return mask


@dataclass
class Decision:
    """Candidates in order of preference; reasons for every rejected node, spelled out lazily."""

    snapshot: Snapshot
    request: Resources
    placement: Placement
    order: list[int]
    rejected: np.ndarray          # bool mask
    pinned_elsewhere: str | None = None
    impossible: str | None = None  # a hard constraint no known node could ever meet

    @property
    def candidates(self) -> list[NodeView]:
        return [self.snapshot.nodes[i] for i in self.order]

    def reasons(self) -> list[str]:
        snap, out = self.snapshot, []
        if self.pinned_elsewhere:
            out.append(self.pinned_elsewhere)
        for i in np.flatnonzero(self.rejected):
            out.append(self._reason(snap.nodes[i]))
        return out

    def _reason(self, node: NodeView) -> str:
        if node.status != "alive":
            return f"{node.node_id}: {node.status}"
        if self.placement.node and not _hosts(node, self.placement.node):
            return f"{node.node_id}: not node {self.placement.node}"
        for key, value in self.placement.node_selector:
            if node.labels.get(key) != value and (key, value) not in node.subtree_labels:
                return f"{node.node_id}: label {key}={value} required"
        free = node.available
        if node.subtree_free is not None:
            free = Resources(*(max(getattr(free, k), getattr(node.subtree_free, k)) for k in KINDS))
        short = self.request.shortfalls(free)
        return f"{node.node_id}: " + ("; ".join(short) if short else "rejected")


def _hosts(node: NodeView, target: str) -> bool:
    return node.node_id == target or target in node.subtree_nodes


def stays_here(request: Resources, placement: Placement, node_id: str, labels: dict,
               free: Resources) -> bool:
    """The common case without building a snapshot: ``local_first`` with no other preference
    (or pinned to this node) and the request fits here, so this node is the first candidate."""
    if placement.affinity or placement.anti_affinity:
        return False
    if placement.strategy != "local_first" and placement.node != node_id:
        return False
    if placement.node is not None and placement.node != node_id:
        return False
    if any(labels.get(key) != value for key, value in placement.node_selector):
        return False
    return request.fits_in(free)


def schedule(request: Resources, placement: Placement, snapshot: Snapshot) -> Decision:
    """Order the snapshot's nodes for ``request`` under ``placement``; no I/O, no side effects."""
    snap = snapshot
    need = np.array([getattr(request, k) for k in KINDS], dtype=np.float64)
    ok = snap.alive.copy()
    pinned_elsewhere = impossible = None
    if placement.node is not None:
        hosts = snap.host_mask(placement.node)
        if not hosts.any():
            pinned_elsewhere = f"{placement.node}: not this node nor a known neighbour or descendant"
            impossible = (f"placement.node: no node {placement.node!r} is known here "
                          "(not this node, a neighbour, or reachable through one)")
        ok &= hosts
    for pair in placement.node_selector:
        labelled = snap.label_mask(pair)
        if not labelled.any() and impossible is None:
            impossible = (f"placement.node_selector: no known node carries the label "
                          f"{pair[0]}={pair[1]}")
        ok &= labelled
    # A child fits if it or a node below it has room (this node has nothing below: reach ==
    # free). The slack tolerates sums of fractional cores.
    ok &= (snap.reach + _SLACK >= need).all(axis=1)
    rejected = ~ok
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return Decision(snap, request, placement, [], rejected, pinned_elsewhere, impossible)

    # Soft constraints first: affinity pulls, anti-affinity pushes.
    soft = np.zeros(len(idx))
    for term in placement.affinity:
        soft -= snap.term_mask(term)[idx]
    for term in placement.anti_affinity:
        soft += snap.term_mask(term)[idx]
    # Fraction of capacity left after placing the request (cpu and memory weigh most).
    after = (snap.free[idx] - need) / snap.cap[idx]
    left = after[:, 0] + after[:, 1] + 0.5 * (after[:, 2] + after[:, 3])
    strategy = placement.strategy
    if strategy == "binpack":
        key = left
    elif strategy == "spread":
        key = snap.load[idx] - 1e-3 * left
    else:  # least_loaded, and local_first among the neighbours
        key = -left
    if strategy == "local_first":
        key = key - 1e6 * snap.is_self[idx]
    # Stable order: soft constraints, then the strategy's key, then node id.
    order = np.lexsort((snap.id_rank[idx], key, soft))
    return Decision(snap, request, placement, idx[order].tolist(), rejected, pinned_elsewhere,
                    impossible)
