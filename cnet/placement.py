"""The placement service: every submission, from a client or a neighbour, is placed here.

It validates the submission, answers a retry of a known id with the workload it already made
(idempotency), and runs it here if it fits (per strategy) or delegates it to a child or a peer.

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
import math
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Container, Coroutine

from bus import LostInFlight, RemoteError, RequestTimeout, Unreachable

from .candidates import Snapshot
from .errors import BadRequest, CnetError, Conflict, InsufficientResources, Unavailable
from .mirrors import NEVER_STARTED
from .neighbours import LocalView, scheduler_snapshot
from .remote import remote_error
from .scheduler import Placement, away_from, schedule, stays_here
from .workload import PENDING, Workload, parse_submission

if TYPE_CHECKING:
    from .manager import Manager
    from .mirrors import MirrorBook
    from .remote import NeighbourPort

__all__ = ["HOP_LIMIT", "Placer"]

log = logging.getLogger(__name__)

HOP_LIMIT = 8
ANSWER_MARGIN = 0.25      # seconds kept back from a deadline for the answer to travel
MIN_WAIT = 0.1            # never ask a neighbour with less time than this to answer
SETTLE_RETRY_MAX = 30.0   # seconds between asks about a delegation that timed out
KEEP_VIEWS_WARM = 300.0   # seconds after a placement read its neighbours that their views and
                          # its snapshots are made as changes arrive (Placer.prepare)
KEPT_SNAPSHOTS = 4        # the scheduler's snapshots kept, each for one set of nodes left out


class _NoAnswer(Exception):
    """A neighbour did not answer a delegation, twice: it may or may not have started it."""


class Placer:
    def __init__(self, local: LocalView, manager: "Manager", mirrors: "MirrorBook",
                 port: "NeighbourPort", *, default_strategy: str,
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 holders: Callable[..., Awaitable[frozenset[str]]] | None = None,
                 set_ids: Container[str] = ()):
        self.local = local
        self.node_id = local.node_id
        self.manager = manager
        self.mirrors = mirrors
        self.port = port
        self.default_strategy = default_strategy
        self.spawn = spawn
        # The nodes already holding what a submission needs (its model), ``holders(sub,
        # survey=...)``: checked where it is submitted (a missing model is an error there) and
        # preferred where it is scheduled (cnet/model_holders.py).
        self.holders = holders
        # The ids of the replica sets this node is the origin of (cnet/replica_sets.py): a set
        # is a workload to its clients (listed, stopped, deleted by its id), so no other
        # workload here may take one's id.
        self.set_ids = set_ids
        # Workloads being placed on a neighbour right now: id -> (outcome, the submission, its
        # origin and when it came; what it looks like is made only when asked).
        self._placing: dict[str, tuple[asyncio.Future, Any, str | None, float]] = {}
        # The scheduler's last snapshots, by the nodes they leave out: (what it was made
        # from, snapshot); a few, as a node places for its clients and for its neighbours.
        self._snaps: dict[frozenset[str], tuple[tuple, Snapshot]] = {}
        self._consulted = -math.inf   # when a placement last read the neighbours (monotonic)
        self._warming = False         # a remaking of the snapshots is due after this step

    def known(self, workload_id: str) -> Workload | None:
        """The workload with this id if this node has it: its own, or a mirror."""
        return self.manager.workloads.get(workload_id) or self.mirrors.get(workload_id)

    async def submit(self, body, *, hops: int = 0, visited: tuple[str, ...] = (),
                     upstream: str | None = None, origin: str | None = None,
                     deadline: float | None = None,
                     avoid: dict[str, int] | None = None) -> tuple[Workload, bool]:
        """Place a workload: here if it fits (per strategy), else on the best neighbour.

        ``deadline`` (wall-clock seconds) is when whoever delegated it here stops waiting: the
        answer comes before it, with the workload still ``pending`` if its start takes longer.
        ``avoid`` (node id -> count; a replica set's members) puts the candidates holding
        fewer first.
        """
        if self.node_id in visited:
            raise CnetError(f"{self.node_id}: already visited by this workload (loop)", code="loop",
                            status=409)
        sub = parse_submission(body, self.manager.executors.keys())
        placement = Placement.parse(sub.placement, self.default_strategy)
        sub = self.manager.validate_config(sub)
        if sub.id in self.set_ids:
            raise Conflict(f"workload id {sub.id} already exists (a replica set)",
                           code="id_conflict")
        existing = self.known(sub.id)
        if existing is not None and existing.runtime.get(NEVER_STARTED):
            self.manager.same_or_conflict(existing, sub)   # the same spec, or a conflict
            self.mirrors.remove(sub.id)                    # it never ran: place it anew
            existing = None
        if existing is not None:
            return self.manager.same_or_conflict(existing, sub), False
        if sub.id in self._placing:   # a retry while the first try is still under way: one answer
            wl = await asyncio.shield(self._placing[sub.id][0])
            return self.manager.same_or_conflict(wl, sub), False
        here = stays_here(sub.requirements, placement, self.node_id, self.local.labels,
                          self.local.register.available)
        holders: frozenset[str] = frozenset()
        if self.holders is not None and (hops == 0 or not here):
            holders = await self.holders(sub, survey=not here and placement.node is None)
            if self.known(sub.id) is not None or sub.id in self._placing:
                # A retry came meanwhile: answered as one.
                return await self.submit(body, hops=hops, visited=visited, upstream=upstream,
                                         origin=origin, deadline=deadline, avoid=avoid)
        if here:
            return await self.manager.admit(sub, origin=origin, upstream=upstream,
                                            ready_within=_ready_within(deadline)), True
        outcome = asyncio.get_running_loop().create_future()
        self._placing[sub.id] = (outcome, sub, origin, time.time())
        self.mirrors.expect(sub.id)
        try:
            wl = await self._place(sub, body, placement, hops, visited, upstream, origin, deadline,
                                   avoid or {}, holders)
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
            self.mirrors.settled(sub.id)

    def first_choice(self, body: dict, avoid: dict[str, int]) -> str | None:
        """The node (this one, a child or a peer) that ``submit(body, avoid=avoid)`` from a
        client would try first right now; None when no known node fits."""
        sub = parse_submission(body, self.manager.executors.keys())
        placement = Placement.parse(sub.placement, self.default_strategy)
        if stays_here(sub.requirements, placement, self.node_id, self.local.labels,
                      self.local.register.available):
            return self.node_id
        decision = schedule(sub.requirements, placement,
                            self._snapshot(frozenset({self.node_id})))
        ranked = away_from(decision.candidates, avoid)
        return ranked[0].node_id if ranked else None

    def _snapshot(self, exclude: frozenset[str]) -> Snapshot:
        """The scheduler's candidates, made again only when what they are made of changed: a
        neighbour's report or state (the bus's view version), this node's allocations or live
        workloads, or the nodes left out. The snapshot is plain data the scheduler only reads."""
        self._consulted = time.monotonic()
        return self._made(exclude)

    def _made(self, exclude: frozenset[str]) -> Snapshot:
        local = self.local
        key = (self.port.view_version, local.register.seq, tuple(local.live))
        made = self._snaps.get(exclude)
        if made is None or made[0] != key:
            if made is None and len(self._snaps) >= KEPT_SNAPSHOTS:
                del self._snaps[next(iter(self._snaps))]       # the oldest made
            made = self._snaps[exclude] = (key, scheduler_snapshot(
                local, self.port.neighbours(), exclude=exclude))
        return made[1]

    def prepare(self) -> None:
        """What the scheduler reads changed (a neighbour's report or state, this node's
        allocations): if this node placed work on its neighbours lately, make the snapshots
        its placements read (and with them the changed neighbour's view) after this step, off
        the path of the next placement. A node that does not place makes none: each of its
        neighbours' changes costs it nothing."""
        if time.monotonic() - self._consulted < KEEP_VIEWS_WARM and not self._warming:
            self._warming = True
            asyncio.get_running_loop().call_soon(self._warm)

    def _warm(self) -> None:
        self._warming = False
        for exclude in list(self._snaps):
            self._made(exclude)

    def placing(self, workload_id: str) -> Workload | None:
        """What a workload this node is placing on a neighbour right now looks like (pending)."""
        entry = self._placing.get(workload_id)
        if entry is None:
            return None
        _, sub, origin, created_at = entry
        return self._pending_record(sub, self.node_id, origin, created_at)

    async def _place(self, sub, body, placement: Placement, hops: int, visited: tuple[str, ...],
                     upstream: str | None, origin: str | None, deadline: float | None,
                     avoid: dict[str, int], holders: frozenset[str] = frozenset()) -> Workload:
        """Where it does not stay here: this node if the scheduler says so, else a neighbour."""
        visited = (*visited, self.node_id)
        exclude = frozenset(visited) | ({upstream} if upstream else frozenset())
        decision = schedule(sub.requirements, placement, self._snapshot(exclude), prefer=holders)
        if decision.impossible and hops == 0:
            # Only where it was submitted: further down, the view leaves out the nodes behind us.
            raise BadRequest(decision.impossible, code="impossible_placement")
        tried: list[str] = []
        spec = {**body, "id": sub.id} if isinstance(body, dict) else body
        for candidate in away_from(decision.candidates, avoid):
            if candidate.role == "self":
                try:
                    return await self.manager.admit(sub, origin=origin, upstream=upstream,
                                                    ready_within=_ready_within(deadline))
                except InsufficientResources as exc:
                    tried.append(exc.message)
                    continue
            if hops + 1 > HOP_LIMIT:
                tried.append(f"{candidate.node_id}: hop limit {HOP_LIMIT} reached")
                continue
            try:
                result = await self._delegate(candidate.node_id, spec, hops + 1, visited,
                                              origin or self.node_id, tried, deadline, upstream)
            except _NoAnswer:
                return self._await_answer(sub, candidate.node_id, origin, upstream)
            if result is not None:
                if result["node_id"] == self.node_id:  # cannot happen: we are visited
                    raise CnetError("a neighbour placed the workload back here", code="loop")
                known = self.known(result["id"])
                if known is not None:          # a report through it came first: the newer wins
                    return self.mirrors.update(result, via=candidate.node_id) or known
                return self.mirrors.add(result, via=candidate.node_id, upstream=upstream)
        reasons = tried + decision.reasons()
        raise InsufficientResources("no node can take this workload: " + "; ".join(reasons),
                                    details={"reasons": reasons})

    async def _delegate(self, node_id: str, spec: dict, hops: int, visited: tuple[str, ...],
                        origin: str, tried: list[str], deadline: float | None,
                        upstream: str | None) -> dict | None:
        """Ask one neighbour to admit the workload; None (and a reason in ``tried``) if not.

        Each try waits at most ``bus.request_timeout`` (less when our own caller's deadline
        is nearer) and carries its deadline, so an ask that arrives too late is refused there.
        """
        for attempt in (1, 2):
            timeout = self.port.request_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.time() - ANSWER_MARGIN)
                if timeout < MIN_WAIT:
                    raise _NoAnswer(node_id)
            try:
                return await self.port.call(node_id, "delegate",
                                            {"workload": spec, "origin": origin,
                                             "deadline": time.time() + timeout},
                                            hops=hops, visited=visited, timeout=timeout)
            except RequestTimeout:
                # Retry once: the id makes it idempotent, so it never starts twice.
                if attempt == 2:
                    raise _NoAnswer(node_id) from None
            except LostInFlight as exc:
                # It went out, so it may have arrived: not another node, and no guess either.
                # If it did start there, it is listed here once the node is back (its report
                # or the reconcile at the next join adds the mirror).
                self.mirrors.abandon(spec.get("id"), node_id, upstream)
                raise Unavailable(f"{exc.message} (placing workload {spec.get('id')}); if it "
                                  f"started there it will be listed here once {node_id} is back",
                                  code="node_lost", details={"node_id": node_id}) from None
            except Unreachable as exc:
                if attempt == 2:   # lost meanwhile, but the first try went out and may have arrived
                    raise _NoAnswer(node_id) from None
                tried.append(f"{node_id}: {exc.message}")
                return None
            except RemoteError as exc:
                if exc.code == "node_lost":
                    # Lost further on, in flight: it may still start there, reached through
                    # ``node_id``; the same answer, and its report through node_id is taken.
                    self.mirrors.abandon(spec.get("id"), node_id, upstream)
                    raise remote_error(exc) from None
                if exc.code == "insufficient_resources":
                    tried.extend(exc.details.get("reasons") or [f"{node_id}: {exc.message}"])
                    return None
                if 400 <= int(exc.details.get("status", 502)) < 500 and exc.code not in (
                        "loop", "deadline_passed"):
                    raise remote_error(exc) from None  # the workload itself is bad
                tried.append(f"{node_id}: {exc.code}: {exc.message}")
                return None
        return None

    def _pending_record(self, sub, node_id: str, origin: str | None,
                        created_at: float | None = None) -> Workload:
        return Workload(id=sub.id, name=sub.name, type=sub.type, config=sub.config,
                        requirements=sub.requirements, placement=sub.placement,
                        labels=sub.labels, node_id=node_id, origin=origin or self.node_id,
                        created_at=created_at or time.time())

    def _await_answer(self, sub, via: str, origin: str | None, upstream: str | None) -> Workload:
        """``via`` did not answer: never try another node (it may have started it); keep a
        pending mirror and ask ``via`` until it says how the workload is doing."""
        record = self._pending_record(sub, via, origin)
        record.message = f"{via} has not answered the delegation yet"
        wl = self.mirrors.add({**record.to_dict(), "_unconfirmed": True}, via=via,
                              upstream=upstream)
        log.warning("workload %s: %s did not answer the delegation in time; waiting for it",
                    wl.id, via)
        self.spawn(self._settle(wl.id, via))
        return wl

    async def _settle(self, workload_id: str, via: str) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_RETRY_MAX)
            wl = self.mirrors.get(workload_id)
            if wl is None or wl.status != PENDING or not wl.runtime.get("_unconfirmed"):
                return  # settled: by an event from via, a refresh, or a delete
            try:
                self.mirrors.update(await self.port.forward(wl, "get", {}))
            except CnetError as exc:
                if exc.code == "not_found":
                    self.mirrors.never_started(wl)
                    return
                log.info("workload %s: asking %s again later (%s)", workload_id, via, exc.message)


def _ready_within(deadline: float | None) -> float | None:
    """How long a start may take before the answer goes out with the workload pending."""
    if deadline is None:
        return None   # asked by a client here: answer once it runs (or failed, leaving nothing)
    remaining = deadline - time.time()
    return max(MIN_WAIT / 2, remaining - min(1.0, remaining / 4))
