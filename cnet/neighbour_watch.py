"""What this node does when a neighbour changes or reports: show it, pass it up, settle mirrors.

The bus calls ``changed`` for every neighbour state change (join, heartbeat, snapshot, loss)
and ``event`` for every workload event a neighbour publishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from . import neighbours

if TYPE_CHECKING:
    from bus import BusNode, Event, NeighbourState

    from .events import EventHub
    from .mirrors import MirrorBook
    from .reconcile import Reconciler

__all__ = ["NeighbourWatch"]

log = logging.getLogger(__name__)

_VECTORS = ("capacity", "allocated", "available", "usage")


class NeighbourWatch:
    def __init__(self, hub: "EventHub", mirrors: "MirrorBook", reconciler: "Reconciler", *,
                 has_parent: bool, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 clock: Callable[[], float] = time.monotonic,
                 prepare: Callable[[], None] | None = None):
        self.hub = hub
        self.mirrors = mirrors
        self.reconciler = reconciler
        self.has_parent = has_parent
        self.spawn = spawn
        self.clock = clock
        self.prepare = prepare      # makes what the scheduler reads of a changed neighbour
        self.bus: "BusNode | None" = None
        self._statuses: dict[str, str] = {}        # neighbour id -> last published status
        self._joins: dict[str, int] = {}           # neighbour id -> handshakes seen
        self._subtree_keys: dict[str, tuple] = {}  # child or peer id -> what was last passed up
        self._pass_up_due = False

    def changed(self, state: "NeighbourState") -> None:
        if self.prepare is not None:
            self.prepare()
        self._pass_up(state)
        entry = neighbours.node_entry(state, self.clock())
        self.hub.publish({"type": "node", "node": entry})
        if state.snapshot:
            self.hub.publish({"type": "resources", "node_id": state.node_id, "seq": state.seq,
                              "resources": {k: entry[k] for k in _VECTORS}})
        rejoined = state.status == "alive" and self._joins.get(state.node_id) != state.joins
        self._joins[state.node_id] = state.joins
        if rejoined:   # joined, or back: a handshake both ways just completed
            self.spawn(self.reconciler.reconcile(state.node_id))
        elif state.status == "alive" and self.reconciler.due(state.node_id, self.clock()):
            # Its view changed (a workload of ours may have ended there) and a mirror through
            # it is still live: a workload event is a broadcast, which PUB/SUB may drop.
            self.spawn(self.reconciler.reconcile(state.node_id))
        if self._statuses.get(state.node_id) == state.status:
            return
        self._statuses[state.node_id] = state.status
        log.info("neighbour %s (%s) is %s", state.node_id, state.role, state.status)
        if self.bus is not None:
            self.bus.publish_event("node", {"node_id": state.node_id, "role": state.role,
                                            "status": state.status, "address": entry["address"]})
        if state.status == "lost":
            self.mirrors.mark_lost(state.node_id)

    # The events this node takes from its children and peers: those addressed to it, about
    # the workloads it placed on them (its mirrors).
    EVENTS = ("workload", "workload_deleted")

    def event(self, state: "NeighbourState", event: "Event") -> None:
        """A workload event from a neighbour: it changes only mirrors that go through it."""
        if event.kind == "workload":
            self.mirrors.update(event.data, via=state.node_id)
        elif event.kind == "workload_deleted":
            wl = self.mirrors.get(event.data.get("id", ""))
            if wl is not None and wl.runtime.get("via") == state.node_id:
                self.mirrors.remove(wl.id)

    def _pass_up(self, state: "NeighbourState") -> None:
        """A change anywhere below a child goes up the tree at once, not with the next beat.

        So does a peer joining or leaving (the parent schedules through this node's peers).
        A change passed on goes to the parent alone, as a beat out of turn on the link to it
        (the summary is the parent's only: a broadcast would wake every child and peer for
        nothing), and the parent passes on only its children's changes: it travels upwards
        once per level and cannot circle. Changes in one loop turn go out together.
        """
        key = neighbours.subtree_key(state)
        if key is None or self._subtree_keys.get(state.node_id) == key:
            return
        self._subtree_keys[state.node_id] = key
        if self.bus is not None and self.has_parent and not self._pass_up_due:
            self._pass_up_due = True
            asyncio.get_running_loop().call_soon(self._send_passed_up)

    def _send_passed_up(self) -> None:
        self._pass_up_due = False
        if self.bus is not None:
            self.bus.beat_up()
