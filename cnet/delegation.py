"""Placement across the cluster: run a workload here, or delegate it to a child or a peer.

The scheduler orders the candidates from the register's view; this node admits with its own
register, and a neighbour admits with its own (its view is authoritative). A rejection moves on
to the next candidate. Every hop carries the hop count and the visited nodes, so a workload
never loops, and the workload id is the idempotency key, so a retried delegation never starts it
twice. The node that delegated keeps a mirror record; stop, delete and logs on a mirror are
forwarded to the neighbour it went through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bus import RemoteError, RequestTimeout, Unreachable

from .errors import BadRequest, CnetError, InsufficientResources, Unavailable
from .neighbours import scheduler_snapshot
from .scheduler import Placement, schedule, stays_here
from .workload import Workload

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

HOP_LIMIT = 8


def remote_error(exc: RemoteError) -> CnetError:
    """An error reply from a neighbour, as the CnetError it was over there."""
    details = dict(exc.details)
    status = details.pop("status", 502)
    return CnetError(exc.message, code=exc.code, status=status, details=details)


class Delegator:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.node_id = agent.config.node_id

    @property
    def manager(self):
        return self.agent.manager

    def _delegate_timeout(self) -> float:
        cfg = self.agent.config
        # A service workload answers only once its service is healthy.
        return max(cfg.bus.request_timeout, cfg.services.start_timeout + 5.0)

    async def submit(self, body, *, hops: int = 0, visited: tuple[str, ...] = (),
                     upstream: str | None = None, origin: str | None = None) -> tuple[Workload, bool]:
        """Place a workload: here if it fits (per strategy), else on the best neighbour."""
        if self.node_id in visited:
            raise CnetError(f"{self.node_id}: already visited by this workload (loop)", code="loop",
                            status=409)
        sub = self.manager.validate(body)
        existing = self.manager.workloads.get(sub.id)
        if existing is not None:
            return self.manager.same_or_conflict(existing, sub), False
        placement = Placement.parse(sub.placement, self.agent.config.placement_strategy)
        register = self.agent.register
        if stays_here(sub.requirements, placement, self.node_id, self.agent.config.labels,
                      register.available):
            return await self.manager.admit(sub, origin=origin), True
        visited = (*visited, self.node_id)
        bus = self.agent.bus
        neighbours = bus.neighbours() if bus is not None else []
        exclude = set(visited) | ({upstream} if upstream else set())
        decision = schedule(sub.requirements, placement,
                            scheduler_snapshot(self.agent, neighbours, exclude=exclude))
        if decision.impossible and hops == 0:
            # Only where it was submitted: further down, the view leaves out the nodes behind us.
            raise BadRequest(decision.impossible, code="impossible_placement")
        tried: list[str] = []
        spec = {**body, "id": sub.id} if isinstance(body, dict) else body
        for candidate in decision.candidates:
            if candidate.role == "self":
                try:
                    return await self.manager.admit(sub, origin=origin), True
                except InsufficientResources as exc:
                    tried.append(exc.message)
                    continue
            if hops + 1 > HOP_LIMIT:
                tried.append(f"{candidate.node_id}: hop limit {HOP_LIMIT} reached")
                continue
            result = await self._delegate(candidate.node_id, spec, hops + 1, visited,
                                          origin or self.node_id, tried)
            if result is not None:
                if result["node_id"] == self.node_id:  # cannot happen: we are visited
                    raise CnetError("a neighbour placed the workload back here", code="loop")
                existing = self.manager.workloads.get(result["id"])
                wl = existing or self.manager.add_mirror(result, via=candidate.node_id)
                return wl, True
        reasons = tried + decision.reasons()
        raise InsufficientResources("no node can take this workload: " + "; ".join(reasons),
                                    details={"reasons": reasons})

    async def _delegate(self, node_id: str, spec: dict, hops: int, visited: tuple[str, ...],
                        origin: str, tried: list[str]) -> dict | None:
        """Ask one neighbour to admit the workload; None (and a reason in ``tried``) if not."""
        for attempt in (1, 2):
            try:
                return await self.agent.bus.call(node_id, "delegate",
                                                 {"workload": spec, "origin": origin},
                                                 hops=hops, visited=list(visited),
                                                 timeout=self._delegate_timeout())
            except RequestTimeout as exc:
                # Retry once: the id makes it idempotent, so it never starts twice.
                if attempt == 2:
                    tried.append(f"{node_id}: {exc.message}")
            except Unreachable as exc:
                tried.append(f"{node_id}: {exc.message}")
                return None
            except RemoteError as exc:
                if exc.code == "insufficient_resources":
                    tried.extend(exc.details.get("reasons") or [f"{node_id}: {exc.message}"])
                    return None
                if 400 <= int(exc.details.get("status", 502)) < 500 and exc.code != "loop":
                    raise remote_error(exc) from None  # the workload itself is bad
                tried.append(f"{node_id}: {exc.code}: {exc.message}")
                return None
        return None

    # -- operations on a workload wherever it runs ---------------------------------------

    async def forward(self, wl: Workload, op: str, args: dict) -> dict:
        via = wl.runtime.get("via")
        if not via or self.agent.bus is None:
            raise Unavailable(f"workload {wl.id} runs on {wl.node_id}, which this node cannot reach")
        try:
            return await self.agent.bus.call(via, op, {"id": wl.id, **args},
                                             timeout=self._forward_timeout(op))
        except RemoteError as exc:
            raise remote_error(exc) from None
        except (RequestTimeout, Unreachable) as exc:
            raise Unavailable(f"workload {wl.id} runs on {wl.node_id} through {via}: {exc.message}",
                              code="node_unreachable") from None

    def _forward_timeout(self, op: str) -> float:
        cfg = self.agent.config
        if op in ("stop", "delete"):
            return max(cfg.bus.request_timeout, cfg.stop_grace + 35.0)
        return cfg.bus.request_timeout

    async def stop(self, workload_id: str) -> Workload:
        wl = self.manager.get(workload_id)
        if not self.manager.is_mirror(wl):
            return await self.manager.stop(workload_id)
        result = await self.forward(wl, "stop", {})
        return self.manager.update_mirror(result) or wl

    async def delete(self, workload_id: str) -> None:
        wl = self.manager.get(workload_id)
        if not self.manager.is_mirror(wl):
            await self.manager.delete(workload_id)
            return
        try:
            await self.forward(wl, "delete", {})
        except CnetError as exc:
            if exc.code != "not_found":  # already gone over there: drop the mirror
                raise
        self.manager.remove_mirror(workload_id)

    async def logs(self, workload_id: str, tail: int) -> str:
        wl = self.manager.get(workload_id)
        if not self.manager.is_mirror(wl):
            return await self.manager.logs(workload_id, tail)
        return (await self.forward(wl, "logs", {"tail": tail}))["logs"]

    async def refresh(self, via: str) -> None:
        """A neighbour is back: ask it how our mirrors through it are doing."""
        for wl in self.manager.mirrors_via(via):
            try:
                self.manager.update_mirror(await self.forward(wl, "get", {}))
            except CnetError as exc:
                if exc.code == "not_found":
                    self.manager.remove_mirror(wl.id)
                else:
                    log.info("refreshing mirror %s through %s: %s", wl.id, via, exc.message)

    async def list_subtree(self, status: str | None, wtype: str | None) -> list[dict]:
        """Workloads of this node and of every node below it (and this node's mirrors)."""
        mine = {wl.id: wl.to_dict() for wl in self.manager.list(status, wtype)}
        bus = self.agent.bus
        children = [n for n in (bus.neighbours() if bus else [])
                    if n.role == "child" and n.status == "alive"]
        replies = await asyncio.gather(*(bus.call(c.node_id, "list", {
            "status": status, "type": wtype, "scope": "subtree"}) for c in children),
            return_exceptions=True)
        for child, reply in zip(children, replies):
            if isinstance(reply, BaseException):
                log.info("listing %s's subtree: %s", child.node_id, reply)
                continue
            for item in reply.get("workloads", []):
                known = mine.get(item["id"])
                # The record of the node that runs it (no "via") wins over any mirror of it.
                if known is None or ("via" in known and "via" not in item):
                    mine[item["id"]] = item
        return list(mine.values())

