"""The mirror book: this node's records of workloads it placed on other nodes.

A mirror says where the workload runs (``node_id``) and through which neighbour it is reached
(``runtime["via"]``); only that neighbour's reports change it, and only a report newer than what
the mirror holds (by the ``version`` the running node gives each change), whichever channel
brings it: a delegation's reply, a published event, an answer to ``get``. A report that arrives
while the workload's placement is still in flight is kept until the mirror exists. Mirrors are
persisted in the same store as local workloads and published on the same hub, so the REST API,
the dashboard and the bus show them like any other workload.

A mirror is written to the store after the step that made or changed it (``Store.insert_soon``),
not before the answer that step sends: a delegation's answer passes through every node it was
placed through, and none of them waits on a commit. Nothing accepted can be lost by it: the
record that counts is the one on the node running the workload, committed there before it
answered; a mirror lost in a crash comes back from it, since a node that rejoins reconciles
and is told of every workload placed through it that it holds no mirror of (``Reconcile``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .events import TO, addressee
from .resources import Resources
from .workload import FAILED, FROM, LOST, Workload

if TYPE_CHECKING:
    from .events import EventHub
    from .store import Store

__all__ = ["NEVER_STARTED", "MirrorBook", "is_newer"]

log = logging.getLogger(__name__)

# Keys of Workload.to_dict() that are fields, not runtime facts.
_WORKLOAD_FIELDS = frozenset({
    "id", "name", "type", "status", "node_id", "origin", "process_pid", "endpoint", "exit_code",
    "message", "restart_count", "created_at", "started_at", "finished_at", "config",
    "requirements", "placement", "labels", "via", "version"})
MAX_EARLY = 10_000    # reports kept for placements in flight, at most
NEVER_STARTED = "_never_started"   # runtime mark: submitting the same id again places it anew


class MirrorBook:
    def __init__(self, node_id: str, store: "Store", hub: "EventHub"):
        self.node_id = node_id
        self.store = store
        self.hub = hub
        self.records: dict[str, Workload] = {}
        self._expected: set[str] = set()              # ids being placed on a neighbour now
        # id -> (neighbour, who delegated it here): its delegation was lost in flight there.
        self._abandoned: dict[str, tuple[str, str | None]] = {}
        self._early: dict[str, tuple[dict, str | None]] = {}   # id -> (newest report, via)

    def load(self, records: list[Workload]) -> None:
        """Take the mirrors among the workloads the store held at start."""
        for wl in records:
            if wl.node_id != self.node_id:
                self.records[wl.id] = wl

    def get(self, workload_id: str) -> Workload | None:
        return self.records.get(workload_id)

    def list(self, status: str | None = None, wtype: str | None = None) -> list[Workload]:
        return [wl for wl in self.records.values()
                if (status is None or wl.status == status) and (wtype is None or wl.type == wtype)]

    def via(self, neighbour: str) -> list[Workload]:
        """The mirrors reached through ``neighbour``."""
        return [wl for wl in self.records.values() if wl.runtime.get("via") == neighbour]

    def expect(self, workload_id: str) -> None:
        """Its placement on a neighbour starts: keep reports about it until it is added."""
        self._expected.add(workload_id)

    def expecting(self, workload_id: str) -> bool:
        """Whether its placement on a neighbour is under way (its answer will add the mirror)."""
        return workload_id in self._expected

    def abandon(self, workload_id: str | None, via: str, upstream: str | None = None) -> None:
        """Its delegation through ``via`` (delegated here by ``upstream``, if any) was lost in
        flight: it may still start over there. A report of it through ``via`` later adds it
        as a mirror (it is listed, not unseen), its reports going on to ``upstream``."""
        if workload_id and len(self._abandoned) < MAX_EARLY:
            self._abandoned[workload_id] = (via, upstream)

    def adopt(self, remote: dict, via: str) -> Workload:
        """Add a workload reported through ``via`` that this node placed there without hearing
        how it went (a lost answer: a reconcile's ``extra``), with the upstream it had."""
        found = self._abandoned.get(remote["id"])
        ours = found is not None and found[0] == via
        wl = self.add(remote, via, upstream=found[1] if ours else None)
        if ours:
            del self._abandoned[remote["id"]]
        return wl

    def settled(self, workload_id: str) -> None:
        """Its placement ended (added as a mirror, or not placed at all)."""
        self._expected.discard(workload_id)
        self._early.pop(workload_id, None)

    def add(self, remote: dict, via: str, upstream: str | None = None) -> Workload:
        """Record a workload that runs elsewhere (reached through neighbour ``via``; delegated
        here by neighbour ``upstream``, if any); a report that came in earlier and is newer
        than ``remote`` wins."""
        early, early_via = self._early.pop(remote["id"], (None, None))
        if early is not None and early_via in (None, via) and is_newer(early, remote):
            remote = {**remote, **early}
        wl = Workload(id=remote["id"], name=remote["name"], type=remote["type"],
                      config=remote.get("config") or {},
                      requirements=Resources.from_dict(remote.get("requirements")),
                      placement=remote.get("placement") or {}, labels=remote.get("labels") or {},
                      node_id=remote["node_id"], origin=remote.get("origin") or self.node_id,
                      created_at=remote.get("created_at") or time.time())
        _apply_remote(wl, remote)
        wl.runtime["via"] = via
        if upstream is not None:
            wl.runtime[FROM] = upstream
        self.records[wl.id] = wl
        self.store.insert_soon(wl)
        self._publish(wl)
        return wl

    def update(self, remote: dict, via: str | None = None) -> Workload | None:
        """Apply a report about a mirrored workload (from the neighbour it goes through, when
        ``via`` is given); None if it is not a mirror of ours."""
        workload_id = remote.get("id", "")
        wl = self.records.get(workload_id)
        if wl is None and via is not None and self._abandoned.get(workload_id, ("",))[0] == via:
            try:
                wl = self.adopt(remote, via)
            except (KeyError, TypeError, ValueError):
                return None
            log.warning("workload %s runs on %s although its delegation was lost in flight; "
                        "it is listed here now", workload_id, wl.node_id)
            return wl
        if wl is None:
            self._keep_early(workload_id, remote, via)
            return None
        if (via is not None and wl.runtime.get("via") != via) or not _applies(remote, wl):
            return None
        _apply_remote(wl, remote)
        self.store.update_soon(wl.id, {
            "status": wl.status, "node_id": wl.node_id, "runtime": wl.runtime,
            "exit_code": wl.exit_code, "message": wl.message, "restart_count": wl.restart_count,
            "started_at": wl.started_at, "finished_at": wl.finished_at, "version": wl.version})
        self._publish(wl)
        return wl

    def mark_lost(self, via: str) -> None:
        """The neighbour the mirrors go through is lost: say so, keep what we knew."""
        for wl in self.via(via):
            if wl.status != LOST:
                wl.runtime["remote_status"] = wl.status
                wl.status = LOST
                wl.message = f"node {via} is lost; last known status {wl.runtime['remote_status']}"
                self.store.update_soon(wl.id, {"status": LOST, "runtime": wl.runtime,
                                               "message": wl.message})
                self._publish(wl)

    def never_started(self, wl: Workload) -> None:
        """The neighbour it was delegated to has no such workload, and never confirmed it."""
        via = wl.runtime.get("via")
        self.update({**wl.to_dict(), "version": wl.version + 1, "status": FAILED,
                     "finished_at": time.time(), NEVER_STARTED: True,
                     "message": f"{via} did not answer the delegation in time "
                                "and has no such workload: it never started"})

    def remove(self, workload_id: str) -> None:
        wl = self.records.pop(workload_id, None)
        if wl is not None:
            self.store.delete_workload(workload_id)
            self.hub.publish({"type": "workload_deleted", "id": workload_id,
                              "node_id": self.node_id, TO: addressee(wl, self.node_id)})

    def _keep_early(self, workload_id: str, remote: dict, via: str | None) -> None:
        if workload_id not in self._expected or len(self._early) >= MAX_EARLY:
            return
        kept = self._early.get(workload_id)
        if kept is None or is_newer(remote, kept[0]):
            self._early[workload_id] = (remote, via)

    def _publish(self, wl: Workload) -> None:
        self.hub.publish({"type": "workload", "workload": wl.to_dict(), TO: addressee(wl, self.node_id)})


def _version(report: dict) -> int | None:
    version = report.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def is_newer(report: dict, than: dict) -> bool:
    """Whether ``report`` is a later state of the workload than ``than`` (unversioned: yes)."""
    mine, theirs = _version(report), _version(than)
    return mine is None or theirs is None or mine > theirs


def _applies(remote: dict, wl: Workload) -> bool:
    """The version rule: a report changes a mirror only if it is newer. A mirror marked lost
    here takes the same version back (the node is heard again and nothing changed meanwhile),
    and a neighbour's own "lost" overlay of the same version is taken too."""
    version = _version(remote)
    if version is None:
        return True     # a node that does not version its records
    if wl.status == LOST or remote.get("status") == LOST:
        return version >= wl.version
    return version > wl.version


def _apply_remote(wl: Workload, remote: dict) -> None:
    wl.status = remote.get("status", wl.status)
    wl.node_id = remote.get("node_id", wl.node_id)
    wl.exit_code = remote.get("exit_code")
    wl.message = remote.get("message")
    wl.restart_count = remote.get("restart_count") or 0
    wl.started_at = remote.get("started_at")
    wl.finished_at = remote.get("finished_at")
    if (version := _version(remote)) is not None:
        wl.version = version
    kept = {k: wl.runtime[k] for k in ("via", FROM) if k in wl.runtime}
    wl.runtime = {k: v for k, v in remote.items() if k not in _WORKLOAD_FIELDS}
    wl.runtime["pid"] = remote.get("process_pid")
    wl.runtime["endpoint"] = remote.get("endpoint")
    wl.runtime.update(kept)
