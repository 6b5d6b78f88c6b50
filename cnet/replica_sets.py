"""The set book: the replica sets this node is the origin of, their members, their replacement.

Each member is placed through the node's :class:`~cnet.placement.Placer` like any submission
(here or delegated, so mirrors, versions and reconcile work for it as for any workload), with
the spread strategy and the candidates holding fewer of the set's members first. A set is
placed whole or not at all: if a member finds no room, the ones already placed are deleted and
the error is the submission's. The book watches its members through the event hub (a member's
record, here or a mirror, changes there): one that failed, stopped, was lost with its node or
is gone is replaced by a new member, elsewhere where possible, while the set's restart budget
lasts; the old one is deleted once its node answers. The book is also the router's
:class:`~cnet.svc_router.ReplicaSource`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .errors import CnetError, Conflict, InsufficientResources, NotFound
from .replica_set import ACTIVE, SET_LABEL, ReplicaSet, member_spec, split_submission
from .scheduler import Placement
from .svc_router import Replica, ServiceSet
from .workload import COMPLETED, DELETING, FAILED, LOST, RUNNING, STOPPED, parse_submission

if TYPE_CHECKING:
    from .config import Config
    from .events import EventHub
    from .manager import Manager
    from .placement import Placer
    from .remote import NeighbourPort
    from .store import Store
    from .workload import Workload

__all__ = ["SetBook"]

log = logging.getLogger(__name__)

PARALLEL = 8              # members placed at once
RETRY_AFTER = 5.0          # seconds before another try at a replacement that found no room
# Runs an operation ("stop", "delete") on one member as its set's origin (the node's own door).
MemberOp = Callable[[str, str], Awaitable[Any]]
_REPLACE = {FAILED: "failed", STOPPED: "was stopped", COMPLETED: "ended", LOST: "its node is lost"}


class SetBook:
    def __init__(self, config: "Config", store: "Store", hub: "EventHub",
                 spawn: Callable[[Any], None]):
        self.node_id = config.node_id
        self.url = config.url
        self.max_restarts = config.services.max_restarts
        self.store = store
        self.hub = hub
        self.spawn = spawn
        self.placer: "Placer | None" = None
        self.port: "NeighbourPort | None" = None
        self.manager: "Manager | None" = None
        self._member_run: MemberOp | None = None
        self.sets: dict[str, ReplicaSet] = {}
        self._creating: dict[str, asyncio.Future] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._checking: set[str] = set()
        self._again: set[str] = set()
        self._watchers: list[Callable[[str], None]] = []

    def attach(self, placer: "Placer", port: "NeighbourPort", member_op: MemberOp) -> None:
        """Take what places and reaches the members; load the sets stored and look at each."""
        self.placer, self.port, self.manager = placer, port, placer.manager
        self._member_run = member_op
        for row in self.store.load_sets():
            rs = ReplicaSet.from_row(row)
            self.sets[rs.id] = rs
        self.hub.subscribe(self._event)
        for set_id in self.sets:
            self.kick(set_id)

    # -- queries -------------------------------------------------------------------------

    def get(self, set_id: str) -> ReplicaSet | None:
        return self.sets.get(set_id)

    def set_of(self, wl: "Workload") -> ReplicaSet | None:
        """The set of this node that ``wl`` is a member of, if any."""
        rs = self.sets.get(wl.labels.get(SET_LABEL, ""))
        return rs if rs is not None and (wl.id in rs.members or wl.id in rs.retired) else None

    def view(self, rs: ReplicaSet) -> dict:
        return rs.view([(mid, self._record(mid)) for mid in rs.members])

    def views(self, status: str | None = None, wtype: str | None = None) -> list[dict]:
        found = [self.view(rs) for rs in self.sets.values()]
        return [v for v in found if (status is None or v["status"] == status)
                and (wtype is None or v["type"] == wtype)]

    def _record(self, member_id: str) -> "Workload | None":
        placer = self.placer
        return placer.known(member_id) or placer.placing(member_id)

    def service_set(self, set_id: str) -> ServiceSet | None:
        """The set as the router sees it (ReplicaSource); None if no such set is here."""
        rs = self.sets.get(set_id)
        if rs is None:
            return None
        states = {n.node_id: n for n in self.port.neighbours()}
        below = {self.node_id}
        for state in states.values():
            if state.role == "child" and state.status == "alive":
                below.add(state.node_id)
                summary = state.summary if isinstance(state.summary, dict) else {}
                ids = summary.get("node_ids")
                below.update(i for i in (ids if isinstance(ids, list) else []) if isinstance(i, str))
        replicas = []
        for mid in rs.members:
            wl = self._record(mid)
            if wl is None:
                continue
            via = wl.runtime.get("via")
            reached = via is None or (via in states and states[via].status == "alive")
            endpoint = wl.runtime.get("endpoint")
            replicas.append(Replica(id=mid, node_id=wl.node_id, endpoint=endpoint or "",
                                    near=wl.node_id in below,
                                    usable=bool(endpoint) and wl.status == RUNNING and reached
                                    and rs.state == ACTIVE,
                                    healthy=wl.runtime.get("healthy") is not False))
        return ServiceSet(id=rs.id, replicas=tuple(replicas), retry_post=True)

    def watch(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(set_id)`` whenever a member of that set may have changed usability
        (its record changed, a neighbour's status changed); returns what stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _changed(self, set_ids) -> None:
        for set_id in set_ids:
            for callback in list(self._watchers):
                try:
                    callback(set_id)
                except Exception:   # a broken watcher must not stop the book's own watching
                    log.exception("replica set %s: a watcher failed", set_id)

    # -- submit, scale, stop, delete -----------------------------------------------------

    async def create(self, body: dict) -> tuple[dict, bool]:
        """Place a new set (all its members, or none); a retry of a known set returns it."""
        replicas, spec = split_submission(body)
        sub = self.manager.validate(spec)          # the members' spec, checked as any workload's
        Placement.parse(sub.placement)
        spec = {**spec, "id": sub.id, "config": sub.config,   # as the members run it
                "requirements": sub.requirements.to_dict(), "placement": sub.placement,
                "labels": sub.labels}
        if sub.id in self._creating:        # the same submission, still being placed
            await asyncio.shield(self._creating[sub.id])
        known = self.sets.get(sub.id)
        if known is not None:
            if known.state == DELETING:
                raise Conflict(f"replica set {sub.id} is being deleted (a member's node is "
                               "unreachable); submit it again once it is gone",
                               code="id_conflict")
            if not _same(known, spec):
                raise Conflict(f"replica set {sub.id} already exists with a different spec",
                               code="id_conflict")
            return self.view(known), False
        if self.placer.known(sub.id) or self.placer.placing(sub.id):
            raise Conflict(f"workload id {sub.id} already exists", code="id_conflict")
        rs = ReplicaSet(id=sub.id, spec=spec, replicas=replicas, origin=self.node_id,
                        endpoint=f"{self.url}/svc/{sub.id}/", max_restarts=self.max_restarts)
        done = self._creating[rs.id] = asyncio.get_running_loop().create_future()
        # Listed (pending) and stored while its members are placed: if this agent stops
        # meanwhile, the members placed so far are its own, and its watch replaces the rest.
        self.sets[rs.id] = rs
        try:
            async with self._lock(rs.id):
                self._save(rs)
                await self._grow(rs, replicas)
        except BaseException:
            self._forget(rs)
            raise
        finally:
            del self._creating[rs.id]
            done.set_result(None)
        log.info("replica set %s: %d members placed (%s)", rs.id, replicas,
                 ", ".join(f"{m} on {self._where(m)}" for m in rs.members))
        self.kick(rs.id)   # a member may have changed while the others were being placed
        return self.view(rs), True

    async def scale(self, set_id: str, replicas: int) -> dict:
        rs = self._set(set_id)
        async with self._lock(set_id):
            if rs.state != ACTIVE:
                raise Conflict(f"replica set {set_id} is stopped; it cannot be scaled",
                               code="set_stopped")
            if replicas > len(rs.members):
                await self._grow(rs, replicas - len(rs.members))
            elif replicas < len(rs.members):
                for mid in self._shrink_order(rs)[:len(rs.members) - replicas]:
                    rs.members.remove(mid)
                    rs.retired.append(mid)
            rs.replicas = replicas
            rs.message = None
            self._save(rs)
            await self._clean(rs)
        return self.view(rs)

    async def stop(self, set_id: str) -> dict:
        rs = self._set(set_id)
        async with self._lock(set_id):
            rs.state = STOPPED
            self._save(rs)
            for mid in [*rs.members, *rs.retired]:
                await self._member_op("stop", mid)
        return self.view(rs)

    async def delete(self, set_id: str) -> None:
        """Delete every member, then the set; a member whose node cannot be reached now is
        deleted once it can, and the set (``deleting`` until then) with it."""
        rs = self._set(set_id)
        async with self._lock(set_id):
            rs.state = DELETING
            rs.retired.extend(rs.members)
            rs.members = []
            self._save(rs)
            await self._clean(rs)

    def _set(self, set_id: str) -> ReplicaSet:
        rs = self.sets.get(set_id)
        if rs is None:
            raise NotFound(f"replica set {set_id} not found")
        return rs

    # -- placing members -----------------------------------------------------------------

    async def _grow(self, rs: ReplicaSet, count: int) -> None:
        """Place ``count`` more members, spread away from the set's; all of them or none.

        Up to ``PARALLEL`` at a time: each is told the nodes its siblings are heading for
        (where the placer would send them first), so they spread as if placed one by one; one
        that finds its node full moves on as any placement does. Each is recorded before it
        goes out: if this agent stops meanwhile, none runs unknown to its set (one that never
        started is replaced)."""
        mine: list[str] = []
        try:
            while len(mine) < count:
                plans, used = [], self._used(rs)
                probe = member_spec(rs.spec, rs.id, rs.id)
                for _ in range(min(PARALLEL, count - len(mine))):
                    plans.append(dict(used))
                    target = self.placer.first_choice(probe, used)
                    if target is not None:
                        used[target] = used.get(target, 0) + 1
                ids = [rs.new_member_id() for _ in plans]
                mine.extend(ids)
                rs.members.extend(ids)
                self._save(rs)
                results = await asyncio.gather(*(self._place(rs, mid, plan)
                                                 for mid, plan in zip(ids, plans)),
                                               return_exceptions=True)
                failed = next((r for r in results if isinstance(r, BaseException)), None)
                if failed is not None:
                    raise failed
        except BaseException:
            rs.members = [m for m in rs.members if m not in mine]
            for mid in mine:
                await self._member_op("delete", mid)
            self._save(rs)
            raise

    async def _place(self, rs: ReplicaSet, member_id: str, used: dict[str, int]) -> str:
        wl, _ = await self.placer.submit(member_spec(rs.spec, rs.id, member_id), avoid=used)
        return wl.id

    def _used(self, rs: ReplicaSet, extra: list[str] = ()) -> dict[str, int]:
        """How many live members of the set each node holds."""
        found = (self._record(m) for m in {*rs.members, *extra})
        return dict(Counter(wl.node_id for wl in found if wl is not None and wl.live))

    def _shrink_order(self, rs: ReplicaSet) -> list[str]:
        """Which members go first when the set shrinks: those not live, then those far from
        here (not on this node or below it), the newest first."""
        near = {r.id for r in self.service_set(rs.id).replicas if r.near}

        def key(mid: str) -> tuple:
            wl = self._record(mid)
            return (wl is not None and wl.live, mid in near, -rs.members.index(mid))

        return sorted(rs.members, key=key)

    async def _member_op(self, op: str, member_id: str) -> bool:
        """Stop or delete one member as its set's origin; False if its node cannot say yet."""
        try:
            await self._member_run(op, member_id)
        except NotFound:
            return True
        except CnetError as exc:
            log.info("replica set member %s: %s did not go through (%s); again later",
                     member_id, op, exc.message)
            return False
        return True

    # -- watching ------------------------------------------------------------------------

    def _event(self, event: dict) -> None:
        if event.get("type") == "node":   # lost, back: the members it holds or routes to
            self._changed(list(self.sets))
            return
        if event.get("type") == "workload":
            labels = event["workload"].get("labels") or {}
            set_id = labels.get(SET_LABEL) if isinstance(labels, dict) else None
        elif event.get("type") == "workload_deleted":
            set_id = str(event.get("id", "")).rpartition("-r")[0]
        else:
            return
        if set_id in self.sets:
            self._changed((set_id,))
            self.kick(set_id)

    def kick(self, set_id: str) -> None:
        """Look at a set soon (once, however many events ask)."""
        if set_id in self._checking:
            self._again.add(set_id)
            return
        self._checking.add(set_id)
        self.spawn(self._watch(set_id))

    async def _watch(self, set_id: str) -> None:
        try:
            while True:
                self._again.discard(set_id)
                await asyncio.sleep(0)           # let the event that kicked it finish first
                rs = self.sets.get(set_id)
                if rs is None:
                    return
                async with self._lock(set_id):
                    await self._check(rs)
                if set_id not in self._again:
                    return
        except Exception:
            log.exception("replica set %s: watching its members failed", set_id)
        finally:
            self._checking.discard(set_id)

    async def _check(self, rs: ReplicaSet) -> None:
        if self.sets.get(rs.id) is not rs:
            return
        if rs.state == ACTIVE:
            for mid in list(rs.members):
                wl = self._record(mid)
                reason = "is gone" if wl is None else _REPLACE.get(wl.status)
                if reason is not None and not await self._replace(rs, mid, wl, reason):
                    break
        await self._clean(rs)

    async def _replace(self, rs: ReplicaSet, old: str, wl: "Workload | None",
                       reason: str) -> bool:
        """Replace one member; False when it cannot be now (budget spent, or no room)."""
        if rs.budget_spent():
            message = (f"member {old} {reason}; not replaced: the set has replaced "
                       f"{rs.restart_count} members, its budget")
            if rs.message != message:
                rs.message = message
                self._save(rs)
            return False
        used = self._used(rs)
        if wl is not None and wl.status == LOST:
            used[wl.node_id] = used.get(wl.node_id, 0) + len(rs.members)   # elsewhere first
        new = rs.new_member_id()
        rs.members[rs.members.index(old)] = new      # recorded before it goes out, as in _grow
        rs.retired.append(old)
        self._save(rs)
        try:
            await self._place(rs, new, used)
        except CnetError as exc:
            rs.members[rs.members.index(new)] = old
            rs.retired.remove(old)
            rs.message = f"member {old} {reason}; its replacement found no room yet: {exc.message}"
            self._save(rs)
            if isinstance(exc, InsufficientResources) or exc.status >= 500:
                asyncio.get_running_loop().call_later(RETRY_AFTER, self.kick, rs.id)
            return False
        rs.replaced(old, new, reason)
        rs.message = f"member {old} {reason}; replaced by {new} on {self._where(new)}"
        log.warning("replica set %s: %s", rs.id, rs.message)
        self._save(rs)
        return True

    async def _clean(self, rs: ReplicaSet) -> None:
        """Delete the retired members whose nodes answer; the others stay for later."""
        gone = [mid for mid in list(rs.retired) if await self._member_op("delete", mid)]
        if gone:
            rs.retired = [m for m in rs.retired if m not in gone]
            self._save(rs)
        if rs.state == DELETING and not rs.retired:
            self._forget(rs)
        elif rs.state == DELETING:
            message = f"deleting: waiting for the nodes of {', '.join(rs.retired)} to answer"
            if rs.message != message:
                rs.message = message
                self._save(rs)

    def _forget(self, rs: ReplicaSet) -> None:
        """The set is gone: from the book, the store and the listeners."""
        if self.sets.get(rs.id) is rs:
            del self.sets[rs.id]
            self._locks.pop(rs.id, None)
            self.store.delete_set(rs.id)
            self.hub.publish({"type": "workload_deleted", "id": rs.id, "node_id": self.node_id})

    def _where(self, member_id: str) -> str:
        wl = self._record(member_id)
        return wl.node_id if wl is not None else "?"

    def _lock(self, set_id: str) -> asyncio.Lock:
        return self._locks.setdefault(set_id, asyncio.Lock())

    def _save(self, rs: ReplicaSet) -> None:
        rs.version += 1
        if self.sets.get(rs.id) is rs:
            self.store.save_set(rs.id, rs.to_row())
            self.hub.publish({"type": "workload", "workload": self.view(rs)})


def _same(rs: ReplicaSet, spec: dict) -> bool:
    """A resubmission of the same set, whatever its replica count (scale changes that)."""
    mine = parse_submission(rs.spec, [rs.spec["type"]])
    theirs = parse_submission(spec, [spec["type"]])
    return (mine.name, mine.type, mine.config, mine.requirements) == (
        theirs.name, theirs.type, theirs.config, theirs.requirements)
