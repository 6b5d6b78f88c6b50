"""Reconciling mirrors with a neighbour that is back: one bulk request, retried until it lands.

On every (re)join of a neighbour this node asks it, in one ``reconcile`` request, for its own
record of every workload mirrored here through it, and for any workload it runs for this node
that this node has no mirror of (a delegation whose answer was lost). Then each mirror equals
the neighbour's record (by the version rule), a mirror the neighbour no longer has is dropped
(deleted during the cut), or failed if it was never confirmed, and a workload this node did not
know runs is listed. The ask is retried, with backoff, while the neighbour stays alive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from bus import BusError

from .errors import CnetError
from .workload import ID_RE

if TYPE_CHECKING:
    from .mirrors import MirrorBook
    from .remote import NeighbourPort

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

FIRST_RETRY = 0.2
RECHECK = 2.0        # seconds between two checks of live mirrors through one alive neighbour
MAX_RETRY = 2.0
MAX_IDS = 10_000     # ids in one request, and records in one answer


class Reconciler:
    def __init__(self, mirrors: "MirrorBook", port: "NeighbourPort"):
        self.mirrors = mirrors
        self.port = port
        self._rounds: dict[str, int] = {}   # neighbour -> the latest reconcile asked for
        self._checked: dict[str, float] = {}  # neighbour -> when its live mirrors were checked

    def due(self, via: str, now: float) -> bool:
        """Whether the live mirrors through ``via`` should be checked again now: when its view
        changes, at most every ``RECHECK`` s, and only while one of them is live. Heartbeats
        carry views reliably; workload events are broadcasts, which may be dropped."""
        if now - self._checked.get(via, float("-inf")) < RECHECK:
            return False
        if not any(wl.live for wl in self.mirrors.via(via)):
            return False
        self._checked[via] = now
        return True

    async def reconcile(self, via: str) -> bool:
        """Reconcile the mirrors through ``via``; False if it was given up (lost, superseded)."""
        round_ = self._rounds[via] = self._rounds.get(via, 0) + 1
        delay = FIRST_RETRY
        while self._rounds.get(via) == round_ and self._alive(via):
            ids = [wl.id for wl in self.mirrors.via(via)][:MAX_IDS]
            try:
                reply = await self.port.call(via, "reconcile", {"ids": ids})
            except (BusError, CnetError) as exc:
                log.info("reconciling mirrors through %s: %s; again in %.1f s", via,
                         getattr(exc, "message", exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            self.apply(via, ids, reply)
            return True
        return False

    def apply(self, via: str, asked: list[str], reply: Any) -> None:
        """Take a neighbour's answer to ``reconcile`` (checked here: it is a neighbour's word)."""
        if not isinstance(reply, dict):
            log.warning("reconcile answer from %s is not an object; ignored", via)
            return
        records = {item["id"]: item for item in _records(reply.get("workloads"))}
        for workload_id in asked:
            wl = self.mirrors.get(workload_id)
            if wl is None or wl.runtime.get("via") != via:
                continue
            if workload_id in records:
                self.mirrors.update(records[workload_id], via=via)
            elif wl.runtime.get("_unconfirmed"):
                self.mirrors.never_started(wl)
            else:
                log.info("workload %s is gone from %s; dropping its mirror", workload_id, via)
                self.mirrors.remove(workload_id)
        for item in _records(reply.get("extra")):
            if self.mirrors.expecting(item["id"]):
                # Being placed through it right now: not a lost answer, but one on its way
                # (what it says meanwhile is kept until then, and the newer one wins).
                self.mirrors.update(item, via=via)
            elif self.mirrors.get(item["id"]) is None:
                try:
                    self.mirrors.adopt(item, via=via)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("reconcile record %s from %s is malformed (%s); ignored",
                                item["id"], via, exc)
                    continue
                log.warning("workload %s runs on %s although its delegation was not answered; "
                            "it is listed here now", item["id"], item.get("node_id", via))

    def _alive(self, via: str) -> bool:
        return any(n.node_id == via and n.status == "alive" for n in self.port.neighbours())


def _records(items: Any) -> list[dict]:
    if not isinstance(items, list):
        return []
    return [item for item in items[:MAX_IDS]
            if isinstance(item, dict) and isinstance(item.get("id"), str) and ID_RE.match(item["id"])]
