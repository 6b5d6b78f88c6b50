"""The workload operations: submit, delegate, list, get, stop, delete, logs.

Each works on a workload wherever it runs: on this node, or (through its mirror) on the node
it was placed on, which the operation is forwarded to.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from ..errors import BadRequest, CnetError, Conflict
from ..workload import FROM, ID_RE, SET_LABEL, STATUSES, TYPES
from .base import Caller, Operation, check_plain, whole_number, workload_id

if TYPE_CHECKING:
    from ..node import Node
    from ..workload import Workload

__all__ = ["Delegate", "Delete", "Get", "List", "Logs", "Reconcile", "Stop", "Submit"]

log = logging.getLogger(__name__)

SCOPES = ("local", "subtree")
MAX_TAIL = 10_000
MAX_RECONCILE = 10_000


@dataclass(frozen=True)
class Submit(Operation):
    """Place a workload: ``{"workload": {...}, "created": bool}`` (False: it already existed)."""

    name = "submit"
    workload: Any = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        check_plain(args.get("workload"), "workload")
        return cls(workload=args.get("workload"))

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        body = self.workload
        wtype = body.get("type") if isinstance(body, dict) else None
        wtype = wtype if isinstance(wtype, str) and wtype in node.manager.executors else "unknown"
        try:
            if isinstance(body, dict) and "replicas" in body:
                shown, created = await node.sets.create(body)
            else:
                labels = body.get("labels") if isinstance(body, dict) else None
                if isinstance(labels, dict) and SET_LABEL in labels:
                    raise BadRequest(f"labels: {SET_LABEL} is set by the agent on a replica "
                                     "set's members", code="invalid_field")
                wl, created = await node.placer.submit(body)
                shown = wl.to_dict()
        except CnetError as exc:
            node.on_submission(wtype, exc.code)
            raise
        node.on_submission(wtype, "created" if created else "existing")
        return {"workload": shown, "created": created}


@dataclass(frozen=True)
class Delegate(Operation):
    """A neighbour asks this node to place a workload (hops and visited nodes in the envelope)."""

    name = "delegate"
    from_nodes = True
    workload: Any = None
    origin: str | None = None
    deadline: float | None = None      # wall-clock seconds: the asker stops waiting then

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        origin, deadline = args.get("origin"), args.get("deadline")
        if origin is not None and (not isinstance(origin, str) or not ID_RE.match(origin)):
            raise BadRequest("origin: a node id", code="invalid_argument")
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, (int, float))
                                     or not math.isfinite(deadline)):
            raise BadRequest("deadline: seconds since the epoch", code="invalid_argument")
        check_plain(args.get("workload"), "workload")
        return cls(workload=args.get("workload"), origin=origin, deadline=deadline)

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if self.deadline is not None and time.time() >= self.deadline:
            # Its asker gave up on it: starting it now would start it behind the user's back.
            raise CnetError(f"{node.node_id}: the delegation arrived after its deadline "
                            f"({time.time() - self.deadline:.1f} s late); not started",
                            code="deadline_passed", status=409)
        wl, _created = await node.placer.submit(self.workload, hops=caller.hops,
                                                visited=caller.visited, upstream=caller.node_id,
                                                origin=self.origin, deadline=self.deadline)
        return wl.to_dict()


@dataclass(frozen=True)
class Reconcile(Operation):
    """A neighbour that is back asks for this node's records of the workloads it mirrors here
    (``workloads``; ids this node has no record of are left out) and of those it delegated
    here that it has no mirror of (``extra``)."""

    name = "reconcile"
    from_nodes = True
    ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ids = args.get("ids", [])
        if not isinstance(ids, list) or len(ids) > MAX_RECONCILE or not all(
                isinstance(i, str) and ID_RE.match(i) for i in ids):
            raise BadRequest(f"ids: a list of at most {MAX_RECONCILE} workload ids",
                             code="invalid_argument")
        return cls(ids=tuple(ids))

    def args(self) -> dict[str, Any]:
        return {"ids": list(self.ids)}

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        found = [wl for wl in map(node.placer.known, self.ids) if wl is not None]
        asked = set(self.ids)
        extra = [wl for wl in node.manager.workloads.values() if wl.id not in asked
                 and caller.node_id is not None and wl.runtime.get(FROM) == caller.node_id]
        extra += [wl for wl in node.mirrors.records.values() if wl.id not in asked
                  and caller.node_id is not None and wl.runtime.get(FROM) == caller.node_id]
        return {"node_id": node.node_id, "workloads": [wl.to_dict() for wl in found],
                "extra": [wl.to_dict() for wl in extra[:MAX_RECONCILE]]}


@dataclass(frozen=True)
class List(Operation):
    """``{"node_id", "scope", "workloads": [...], "count"}``; ``subtree`` adds the nodes below."""

    name = "list"
    status: str | None = None
    type: str | None = None
    scope: str = "local"

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        status, wtype = args.get("status"), args.get("type")
        scope = args.get("scope") or "local"
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status: must be one of {', '.join(STATUSES)}", code="invalid_argument")
        if wtype is not None and wtype not in TYPES:
            raise BadRequest(f"type: unknown workload type {str(wtype)[:80]!r}",
                             code="invalid_argument")
        if scope not in SCOPES:
            raise BadRequest("scope: local or subtree", code="invalid_argument")
        return cls(status=status, type=wtype, scope=scope)

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        mine = {wl.id: wl.to_dict() for wl in _listed(node, self.status, self.type)}
        mine.update((v["id"], v) for v in node.sets.views(self.status, self.type))
        if self.scope == "subtree":
            await self._add_subtree(node, mine)
        items = list(mine.values())
        return {"node_id": node.node_id, "scope": self.scope, "workloads": items,
                "count": len(items)}

    async def _add_subtree(self, node: "Node", mine: dict[str, dict]) -> None:
        """Add the workloads of every node below this one (children ask their children)."""
        children = [n for n in node.port.neighbours() if n.role == "child" and n.status == "alive"]
        replies = await asyncio.gather(*(node.port.call(c.node_id, self.name, self.args())
                                         for c in children), return_exceptions=True)
        for child, reply in zip(children, replies):
            if isinstance(reply, BaseException):
                log.info("listing %s's subtree: %s", child.node_id, reply)
                continue
            for item in reply.get("workloads", []):
                known = mine.get(item["id"])
                # The record of the node that runs it (no "via") wins over any mirror of it.
                if known is None or ("via" in known and "via" not in item):
                    mine[item["id"]] = item


def _not_a_member(node: "Node", wl: "Workload", caller: Caller, what: str) -> "Workload":
    """A client may not stop or delete a member of a set this node is the origin of: the set
    would replace it. (Its origin may; elsewhere, the member stops and its set replaces it.)"""
    rs = node.sets.set_of(wl)
    if rs is not None and caller.node_id is None:
        raise Conflict(f"workload {wl.id} is a member of replica set {rs.id}: {what} the set, or "
                       f"scale it (POST /api/workloads/{rs.id}/scale)", code="member_of_set",
                       details={"set_id": rs.id})
    return wl


def _listed(node: "Node", status: str | None, wtype: str | None) -> list["Workload"]:
    """This node's workloads and its mirrors, oldest first."""
    found = node.manager.list(status, wtype) + node.mirrors.list(status, wtype)
    return sorted(found, key=lambda wl: wl.created_at)


@dataclass(frozen=True)
class _OneWorkload(Operation):
    """An operation on one workload, named by ``id``."""

    id: str = ""

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=workload_id(args))


@dataclass(frozen=True)
class Get(_OneWorkload):
    """One workload, or the pending record of one this node is placing right now."""

    name = "get"

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if (rs := node.sets.get(self.id)) is not None:
            return node.sets.view(rs)
        placing = node.placer.placing(self.id)
        if placing is not None and node.placer.known(self.id) is None:
            return placing.to_dict()
        return node.find(self.id).to_dict()


@dataclass(frozen=True)
class Stop(_OneWorkload):
    """Stop a workload (a no-op for one that has ended); the workload as it is then."""

    name = "stop"

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if node.sets.get(self.id) is not None:
            return await node.sets.stop(self.id)
        wl = _not_a_member(node, node.find(self.id), caller, "stop")
        if not node.is_mirror(wl):
            return (await node.manager.stop(self.id)).to_dict()
        result = await node.port.forward(wl, self.name, {})
        return (node.mirrors.update(result) or wl).to_dict()


@dataclass(frozen=True)
class Delete(_OneWorkload):
    """Stop (if running) and delete: ``{"id", "deleted": True}``."""

    name = "delete"

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if node.sets.get(self.id) is not None:
            await node.sets.delete(self.id)
            return {"id": self.id, "deleted": True}
        wl = _not_a_member(node, node.find(self.id), caller, "delete")
        if not node.is_mirror(wl):
            await node.manager.delete(self.id)
        else:
            try:
                await node.port.forward(wl, self.name, {})
            except CnetError as exc:
                if exc.code != "not_found":  # already gone over there: drop the mirror
                    raise
            node.mirrors.remove(self.id)
        return {"id": self.id, "deleted": True}


@dataclass(frozen=True)
class Logs(_OneWorkload):
    """The last ``tail`` lines of a workload's log: ``{"id", "tail", "logs"}``."""

    name = "logs"
    tail: int = 100

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=workload_id(args), tail=whole_number(args, "tail", 100, 0, MAX_TAIL))

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if (rs := node.sets.get(self.id)) is not None:
            raise Conflict(f"{self.id} is a replica set: each member has its own log "
                           f"({', '.join(rs.members[:8]) or 'none now'})", code="replica_set")
        wl = node.find(self.id)
        if node.is_mirror(wl):
            text = (await node.port.forward(wl, self.name, {"tail": self.tail}))["logs"]
        else:
            text = await node.manager.logs(self.id, self.tail)
        return {"id": self.id, "tail": self.tail, "logs": text}
