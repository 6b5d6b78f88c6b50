"""Placement across the cluster: run a workload here, or delegate it to a child or a peer.

The scheduler orders the candidates from the register's view; this node admits with its own
register, and a neighbour admits with its own (its view is authoritative). A rejection moves on
to the next candidate. Every hop carries the hop count and the visited nodes, so a workload
never loops, and the workload id is the idempotency key, so a retried delegation never starts it
twice: a retry reaching a node that is still placing the same id waits for that placement,
and a neighbour that does not answer in time is not passed over for the next candidate (it
may still start the workload) but kept as a pending mirror until it says how it went. The
node that delegated keeps a mirror record; stop, delete and logs on a mirror are forwarded to
the neighbour it went through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from bus import RemoteError, RequestTimeout, Unreachable

from .errors import BadRequest, CnetError, InsufficientResources, Unavailable
from .neighbours import scheduler_snapshot
from .scheduler import Placement, schedule, stays_here
from .workload import FAILED, PENDING, Workload

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)

HOP_LIMIT = 8
SETTLE_RETRY_MAX = 30.0   # seconds between asks about a delegation that timed out


class _NoAnswer(Exception):
    """A neighbour did not answer a delegation, twice: it may or may not have started it."""


def remote_error(exc: RemoteError) -> CnetError:
    """An error reply from a neighbour, as the CnetError it was over there."""
    details = dict(exc.details)
    status = details.pop("status", 502)
    return CnetError(exc.message, code=exc.code, status=status, details=details)


class Delegator:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.node_id = agent.config.node_id
        # Workloads being placed on a neighbour right now: id -> (outcome, what it looks like).
        self._placing: dict[str, tuple[asyncio.Future, Workload]] = {}

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
        if sub.id in self._placing:   # a retry while the first try is still under way: one answer
            wl = await asyncio.shield(self._placing[sub.id][0])
            return self.manager.same_or_conflict(wl, sub), False
        placement = Placement.parse(sub.placement, self.agent.config.placement_strategy)
        register = self.agent.register
        if stays_here(sub.requirements, placement, self.node_id, self.agent.config.labels,
                      register.available):
            return await self.manager.admit(sub, origin=origin), True
        outcome = asyncio.get_running_loop().create_future()
        self._placing[sub.id] = (outcome, self._pending_record(sub, self.node_id, origin))
        try:
            wl = await self._place(sub, body, placement, hops, visited, upstream, origin)
        except BaseException as exc:
            if isinstance(exc, Exception):
                outcome.set_exception(exc)
                outcome.exception()   # retrieved: a lone first try has nobody waiting on it
            else:
                outcome.cancel()
            raise
        else:
            outcome.set_result(wl)
            return wl, True
        finally:
            del self._placing[sub.id]

    def get(self, workload_id: str) -> dict:
        """A workload known here, or one this node is placing on a neighbour right now (pending)."""
        entry = self._placing.get(workload_id)
        if entry is not None and workload_id not in self.manager.workloads:
            return entry[1].to_dict()
        return self.manager.get(workload_id).to_dict()

    async def _place(self, sub, body, placement: Placement, hops: int, visited: tuple[str, ...],
                     upstream: str | None, origin: str | None) -> Workload:
        """Where it does not stay here: this node if the scheduler says so, else a neighbour."""
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
                    return await self.manager.admit(sub, origin=origin)
                except InsufficientResources as exc:
                    tried.append(exc.message)
                    continue
            if hops + 1 > HOP_LIMIT:
                tried.append(f"{candidate.node_id}: hop limit {HOP_LIMIT} reached")
                continue
            try:
                result = await self._delegate(candidate.node_id, spec, hops + 1, visited,
                                              origin or self.node_id, tried)
            except _NoAnswer:
                return self._await_answer(sub, candidate.node_id, origin)
            if result is not None:
                if result["node_id"] == self.node_id:  # cannot happen: we are visited
                    raise CnetError("a neighbour placed the workload back here", code="loop")
                existing = self.manager.workloads.get(result["id"])
                return existing or self.manager.add_mirror(result, via=candidate.node_id)
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
            except RequestTimeout:
                # Retry once: the id makes it idempotent, so it never starts twice.
                if attempt == 2:
                    raise _NoAnswer(node_id) from None
            except Unreachable as exc:
                if attempt == 2:   # lost meanwhile, but the first try went out and may have arrived
                    raise _NoAnswer(node_id) from None
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

    def _pending_record(self, sub, node_id: str, origin: str | None) -> Workload:
        return Workload(id=sub.id, name=sub.name, type=sub.type, config=sub.config,
                        requirements=sub.requirements, placement=sub.placement,
                        labels=sub.labels, node_id=node_id, origin=origin or self.node_id)

    def _await_answer(self, sub, via: str, origin: str | None) -> Workload:
        """``via`` did not answer: never try another node (it may have started it); keep a
        pending mirror and ask ``via`` until it says how the workload is doing."""
        record = self._pending_record(sub, via, origin)
        record.message = f"{via} has not answered the delegation yet"
        wl = self.manager.add_mirror({**record.to_dict(), "_unconfirmed": True}, via=via)
        log.warning("workload %s: %s did not answer the delegation in time; waiting for it",
                    wl.id, via)
        self.agent.spawn(self._settle(wl.id, via))
        return wl

    async def _settle(self, workload_id: str, via: str) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_RETRY_MAX)
            wl = self.manager.workloads.get(workload_id)
            if wl is None or wl.status != PENDING or not wl.runtime.get("_unconfirmed"):
                return  # settled: by an event from via, a refresh, or a delete
            try:
                self.manager.update_mirror(await self.forward(wl, "get", {}))
            except CnetError as exc:
                if exc.code == "not_found":
                    self._never_started(wl)
                    return
                log.info("workload %s: asking %s again later (%s)", workload_id, via, exc.message)

    def _never_started(self, wl: Workload) -> None:
        via = wl.runtime.get("via")
        self.manager.update_mirror({**wl.to_dict(), "status": FAILED, "finished_at": time.time(),
                                    "message": f"{via} did not answer the delegation in time "
                                               "and has no such workload: it never started"})

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
                if exc.code == "not_found" and wl.runtime.get("_unconfirmed"):
                    self._never_started(wl)
                elif exc.code == "not_found":
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

