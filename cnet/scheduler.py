"""The Scheduler: decide where a workload runs, as a pure function of (request, snapshot).

No I/O, no numpy. The snapshot's nodes are :mod:`cnet.candidates`; what a submission asks of
placement is :class:`Placement`. Each hard rule is written once, as a small ``Rule``; the
candidate filter, the rejection reasons and the ``stays_here`` shortcut all apply the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from .candidates import NodeView, Snapshot, rank_columns, reach
from .errors import BadRequest
from .resources import KINDS, Resources

STRATEGIES = ("local_first", "least_loaded", "binpack", "spread")
_PLACEMENT_KEYS = {"strategy", "node", "node_selector", "affinity", "anti_affinity"}


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


# -- the hard rules ----------------------------------------------------------------------------

class Rule:
    """One hard constraint, written once: ``keep`` is its test and ``why_not`` its words. The
    candidate filter, the rejection reasons and ``stays_here`` all go through it."""

    impossible: str | None = None   # the request's error when no known node passes this rule
    lead: str | None = None         # then also the first rejection reason

    def keep(self, snap: Snapshot, idx: list[int]) -> list[int]:
        """The nodes of ``idx`` (indices into ``snap``) that pass, in the same order."""
        raise NotImplementedError

    def why_not(self, node: NodeView) -> str:
        """Why ``node``, which does not pass, is rejected."""
        raise NotImplementedError

    def check(self, snap: Snapshot, i: int) -> str | None:
        """None when node ``i`` passes, else why it is rejected."""
        return None if self.keep(snap, [i]) else self.why_not(snap.nodes[i])


class _NodeRule(Rule):
    """A rule that looks at the node alone (not the request): tested once per snapshot."""

    key: tuple = ()

    def holds(self, node: NodeView) -> bool:
        raise NotImplementedError

    def keep(self, snap: Snapshot, idx: list[int]) -> list[int]:
        mask, every = snap.mask(self.key, self.holds)
        return every if idx is snap.by_id else [i for i in idx if mask[i]]


class Alive(_NodeRule):
    key = ("alive",)

    def holds(self, node: NodeView) -> bool:
        return node.status == "alive"

    def why_not(self, node: NodeView) -> str:
        return f"{node.node_id}: {node.status}"


class PinnedTo(_NodeRule):
    """``placement.node``: the node itself, or a child with it below."""

    def __init__(self, target: str):
        self.target, self.key = target, ("node", target)
        self.impossible = (f"placement.node: no node {target!r} is known here "
                           "(not this node, a neighbour, or reachable through one)")
        self.lead = f"{target}: not this node nor a known neighbour or descendant"

    def holds(self, node: NodeView) -> bool:
        return node.node_id == self.target or self.target in node.subtree_nodes

    def why_not(self, node: NodeView) -> str:
        return f"{node.node_id}: not node {self.target}"


class Labelled(_NodeRule):
    """One ``placement.node_selector`` pair: on the node itself or, for a child, below it."""

    def __init__(self, pair: tuple):
        self.pair, self.key = pair, ("label", pair)
        self.impossible = (f"placement.node_selector: no known node carries the label "
                           f"{pair[0]}={pair[1]}")

    def holds(self, node: NodeView) -> bool:
        key, value = self.pair
        return node.labels.get(key) == value or self.pair in node.subtree_labels

    def why_not(self, node: NodeView) -> str:
        return f"{node.node_id}: label {self.pair[0]}={self.pair[1]} required"


class Fits(Rule):
    """The request fits in what the node (or, for a child, a node below it) has free."""

    def __init__(self, request: Resources):
        self.request = request

    def keep(self, snap: Snapshot, idx: list[int]) -> list[int]:
        # Resources.fits_in on precomputed tuples, the first short kind ending the test.
        need, room = self.request, snap.room
        cpu, memory, gpu, storage = need.cpu, need.memory, need.gpu, need.storage
        if gpu <= snap.room_floor[0] and storage <= snap.room_floor[1]:
            return [i for i in idx if cpu <= (r := room[i])[0] and memory <= r[1]]
        return [i for i in idx if cpu <= (r := room[i])[0] and memory <= r[1] and gpu <= r[2]
                and storage <= r[3]]

    def why_not(self, node: NodeView) -> str:
        short = self.request.shortfalls(reach(node))
        if self.request.gpu and any(s.startswith("gpu ") for s in short):
            # GPUs are whole devices: the count is of free devices.
            short = [s.replace("free <", "free device(s) <", 1) if s.startswith("gpu ") else s
                     for s in short]
        return f"{node.node_id}: " + ("; ".join(short) if short else "rejected")


def hard_rules(request: Resources, placement: Placement) -> tuple[Rule, ...]:
    """The rules a node must pass, in the order a rejected node's reason is looked for."""
    pinned = (PinnedTo(placement.node),) if placement.node is not None else ()
    return (Alive(), *pinned, *(Labelled(pair) for pair in placement.node_selector),
            Fits(request))


# -- the decision ------------------------------------------------------------------------------

@dataclass
class Decision:
    """Candidates in order of preference; reasons for every rejected node, spelled out lazily."""

    snapshot: Snapshot
    request: Resources
    placement: Placement
    order: list[int]
    rules: tuple[Rule, ...]
    pinned_elsewhere: str | None = None
    impossible: str | None = None  # a hard constraint no known node could ever meet

    @property
    def candidates(self) -> list[NodeView]:
        return [self.snapshot.nodes[i] for i in self.order]

    @property
    def rejected(self) -> list[int]:
        """Indices into the snapshot of the nodes that failed a rule, in snapshot order."""
        kept = set(self.order)
        return [i for i in range(len(self.snapshot)) if i not in kept]

    def reasons(self) -> list[str]:
        out = [self.pinned_elsewhere] if self.pinned_elsewhere else []
        return out + [why_rejected(self.rules, self.snapshot, i) or
                      f"{self.snapshot.nodes[i].node_id}: rejected" for i in self.rejected]


def why_rejected(rules: tuple[Rule, ...], snap: Snapshot, i: int) -> str | None:
    """The first of ``rules`` that node ``i`` fails, in words; None when it passes them all."""
    return next((r for r in (rule.check(snap, i) for rule in rules) if r is not None), None)


def stays_here(request: Resources, placement: Placement, node_id: str, labels: dict,
               free: Resources) -> bool:
    """The common case without building the neighbours' snapshot: ``local_first`` with no other
    preference (or pinned to this node) and this node passes every hard rule, so it is the first
    candidate."""
    if placement.affinity or placement.anti_affinity:
        return False
    if placement.node is not None and placement.node != node_id:
        return False        # pinned elsewhere (what PinnedTo would say of this node)
    if placement.strategy != "local_first" and placement.node != node_id:
        return False
    here = Snapshot(node_id, [NodeView(node_id, "self", available=free, labels=labels)])
    return all(rule.keep(here, [0]) for rule in hard_rules(request, placement))


def schedule(request: Resources, placement: Placement, snapshot: Snapshot,
             prefer: frozenset = frozenset()) -> Decision:
    """Order the snapshot's nodes for ``request`` under ``placement``; no I/O, no side effects.

    ``prefer``: node ids that already hold what the workload needs (its model). A soft
    preference: among the nodes that pass every rule, those in it (or, for a child, with one
    below it) come before the others -- after this node under ``local_first``, and the affinity
    terms still weigh more; no effect when ``placement.node`` pins the workload.
    """
    snap, rules = snapshot, hard_rules(request, placement)
    pinned_elsewhere = impossible = None
    idx = snap.by_id
    for rule in rules:
        if impossible is None and rule.impossible and not rule.keep(snap, snap.by_id):
            impossible, pinned_elsewhere = rule.impossible, rule.lead
        idx = rule.keep(snap, idx)
    if not idx:
        return Decision(snap, request, placement, [], rules, pinned_elsewhere, impossible)
    key = _strategy_key(request, placement.strategy, snap, idx)
    order = sorted(range(len(idx)), key=key.__getitem__)   # stable: equal keys stay in id order
    if prefer and placement.node is None:
        order.sort(key=_preference(snap, placement, idx, prefer).__getitem__)
    if placement.affinity or placement.anti_affinity:
        # Soft constraints come first: affinity pulls, anti-affinity pushes.
        soft = [0] * len(idx)
        for terms, sign in ((placement.affinity, -1), (placement.anti_affinity, 1)):
            for term in terms:
                mask = snap.mask(("term", term), term.matches)[0]
                soft = [s + sign * mask[i] for s, i in zip(soft, idx)]
        order.sort(key=soft.__getitem__)
    return Decision(snap, request, placement, [idx[p] for p in order], rules, pinned_elsewhere,
                    impossible)


def _preference(snap: Snapshot, placement: Placement, idx: list[int],
                prefer: frozenset) -> list[int]:
    """0 for this node under ``local_first``, 1 for a node holding (or with below it) one of
    ``prefer``, 2 for the others; per position in ``idx``."""
    held = snap.mask(("prefer", prefer), lambda n: n.node_id in prefer
                     or not prefer.isdisjoint(n.subtree_nodes))[0]
    first = set(snap.selves) if placement.strategy == "local_first" else set()
    return [0 if i in first else 1 if held[i] else 2 for i in idx]


def _strategy_key(request: Resources, strategy: str, snap: Snapshot, idx: list[int]) -> list[float]:
    """The strategy's sort key for each node of ``idx``, from the fraction of capacity left after
    placing the request (cpu and memory weigh most)."""
    nc, nm, ng, ns = (float(getattr(request, k)) for k in KINDS)
    if ng == 0 and ns == 0:
        rows = map(snap.rank.__getitem__, idx)
    else:
        rows = (rank_columns(snap.nodes[i], ng, ns) for i in idx)
    if strategy == "spread":
        return [load - 1e-3 * ((fc - nc) / kc + (fm - nm) / km + rest)
                for fc, kc, fm, km, rest, load in rows]
    # binpack fills the fullest first; least_loaded (and local_first among the neighbours) the
    # emptiest. Multiplying by -1.0 is an exact negation.
    sign = 1.0 if strategy == "binpack" else -1.0
    key = [sign * ((fc - nc) / kc + (fm - nm) / km + rest) for fc, kc, fm, km, rest, _ in rows]
    if strategy == "local_first":
        for p in (idx.index(i) for i in snap.selves if i in idx):
            key[p] = key[p] - 1e6
    return key


def away_from(candidates: list[NodeView], used: dict[str, int]) -> list[NodeView]:
    """``candidates`` with those holding fewer of ``used`` (node id -> how many instances of a
    replica set run there; a child counts its subtree's) first, in their order otherwise."""
    if not used:
        return candidates

    def held(node: NodeView) -> int:
        return used.get(node.node_id, 0) + sum(used.get(n, 0) for n in node.subtree_nodes)

    return sorted(candidates, key=held)
