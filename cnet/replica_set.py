"""The replica set record: N instances of one service workload, behind one routed endpoint.

A set is submitted as a service workload with ``"replicas": N``. The node it was submitted to
is its origin: it keeps this record (in its store), places the members (each an ordinary
workload, ``<set id>-r<k>``, labelled ``cnet.set: <set id>``) and replaces those that fail.
This module holds the record, the check of a set submission and the set as the API shows it;
:mod:`cnet.replica_sets` does the placing and the watching.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .errors import BadRequest
from .workload import DELETING, FAILED, PENDING, RUNNING, SET_LABEL, STOPPED, STOPPING

if TYPE_CHECKING:
    from .workload import Workload

__all__ = ["MAX_REPLICAS", "MAX_SET_ID", "SET_LABEL", "SET_TYPES", "ReplicaSet", "check_replicas",
           "member_spec", "split_submission"]

MAX_REPLICAS = 32
SET_TYPES = ("mlmodel", "opencv")   # services whose instances are interchangeable
MAX_SET_ID = 54              # "-r" and up to 8 digits keep a member id within 64 characters
MAX_HISTORY = 50             # replacements remembered per set
ACTIVE = "active"            # the set's desired state: its members run (or are replaced)


def check_replicas(value, where: str = "replicas") -> int:
    """A replica count: a whole number within 1..MAX_REPLICAS."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}: must be a whole number from 1 to {MAX_REPLICAS}",
                         code="invalid_field")
    if not 1 <= value <= MAX_REPLICAS:
        raise BadRequest(f"{where}: must be between 1 and {MAX_REPLICAS}, not {value}",
                         code="invalid_field")
    return value


def split_submission(body: dict) -> tuple[int, dict]:
    """A set submission's replica count and the workload spec its members share (checked
    here: what only a set must meet; the spec itself is checked as any workload's)."""
    replicas = check_replicas(body.get("replicas"))
    spec = {k: v for k, v in body.items() if k != "replicas"}
    wtype = spec.get("type")
    if isinstance(wtype, str) and wtype not in SET_TYPES:
        raise BadRequest(f"replicas: only {' and '.join(SET_TYPES)} services run as replica "
                         f"sets, not {wtype[:40]!r}", code="invalid_field")
    set_id = spec.get("id")
    if isinstance(set_id, str) and len(set_id) > MAX_SET_ID:
        raise BadRequest(f"id: a replica set's id is at most {MAX_SET_ID} characters (its "
                         "members are <id>-r<k>)", code="invalid_field")
    placement = spec.get("placement")
    if isinstance(placement, dict) and placement.get("strategy", "spread") != "spread":
        raise BadRequest("placement.strategy: a replica set is placed with spread (one member "
                         "per node where possible); leave it out", code="invalid_field")
    labels = spec.get("labels")
    if isinstance(labels, dict) and SET_LABEL in labels:
        raise BadRequest(f"labels: {SET_LABEL} is set by the agent on a set's members",
                         code="invalid_field")
    return replicas, spec


def member_spec(spec: dict, set_id: str, member_id: str) -> dict:
    """The submission of one member: the set's spec, its own id, the set's label, and spread
    away from the set's other members further down the tree (a soft anti-affinity)."""
    placement = dict(spec.get("placement") or {})
    placement["strategy"] = "spread"
    placement["anti_affinity"] = [*(placement.get("anti_affinity") or []),
                                  {"labels": {SET_LABEL: set_id}}]
    return {**spec, "id": member_id, "labels": {**(spec.get("labels") or {}), SET_LABEL: set_id},
            "placement": placement}


@dataclass
class ReplicaSet:
    id: str
    spec: dict                   # the members' shared submission (id, name, type, config, ...)
    replicas: int                # desired count
    origin: str
    endpoint: str                # the routed URL: http://<advertised host>:<port>/svc/<id>/
    members: list[str] = field(default_factory=list)   # member ids, oldest first
    retired: list[str] = field(default_factory=list)   # replaced or scaled away, not yet deleted
    next_index: int = 1
    restart_count: int = 0       # members replaced
    max_restarts: int = 3        # replacements allowed per desired replica (services.max_restarts)
    state: str = ACTIVE          # active | stopped | deleting (until its last member is gone)
    history: list[dict] = field(default_factory=list)  # {"at", "replaced", "by", "reason"}
    message: str | None = None
    created_at: float = field(default_factory=time.time)
    version: int = 0

    def new_member_id(self) -> str:
        member_id = f"{self.id}-r{self.next_index}"
        self.next_index += 1
        return member_id

    def replaced(self, old: str, new: str, reason: str) -> None:
        self.restart_count += 1
        self.history = [*self.history, {"at": time.time(), "replaced": old, "by": new,
                                        "reason": reason}][-MAX_HISTORY:]

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "ReplicaSet":
        return cls(**row)

    def view(self, members: list[tuple[str, "Workload | None"]]) -> dict:
        """The set as the API shows it, in a workload's shape plus ``replicas`` and
        ``members``; ``members`` pairs each member id with its record (None: not known)."""
        shown = [{"id": mid, "node_id": wl.node_id if wl else None,
                  "endpoint": wl.runtime.get("endpoint") if wl else None,
                  "status": wl.status if wl else PENDING,   # being placed, or gone: replaced
                  "restart_count": wl.restart_count if wl else 0} for mid, wl in members]
        statuses = {m["status"] for m in shown}
        started = [wl.started_at for _, wl in members if wl and wl.started_at]
        spec = self.spec
        return {
            "id": self.id, "name": spec["name"], "type": spec["type"],
            "status": self.status(statuses), "node_id": self.origin, "origin": self.origin,
            "process_pid": None, "endpoint": self.endpoint, "exit_code": None,
            "message": self.message, "restart_count": self.restart_count,
            "created_at": self.created_at, "started_at": min(started, default=None),
            "finished_at": None, "config": spec.get("config") or {},
            "requirements": spec.get("requirements") or {},
            "placement": spec.get("placement") or {}, "labels": spec.get("labels") or {},
            "version": self.version, "replicas": self.replicas, "members": shown,
            "history": self.history,
        }

    def status(self, statuses: set[str]) -> str:
        """Running with one member running; pending while none runs yet (or one is being
        replaced); failed when none is live and none can be replaced; stopped once stopped;
        deleting while a deleted set's member on an unreachable node waits to be deleted."""
        if self.state == DELETING:
            return DELETING
        if self.state != ACTIVE:
            return STOPPING if statuses & {PENDING, RUNNING, STOPPING} else STOPPED
        if RUNNING in statuses:
            return RUNNING
        if PENDING in statuses or not self.budget_spent():
            return PENDING
        return FAILED

    def budget_spent(self) -> bool:
        """Whether the set has replaced as many members as it may (per desired replica)."""
        return self.restart_count >= self.max_restarts * self.replicas
