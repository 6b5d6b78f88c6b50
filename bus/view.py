"""The neighbour table as the agent sees it: what neighbours send, taken into it (signs of
life, snapshots, events, refusals), and the agent told of each change it can see.

Every connection's reader hands its messages here once they decoded and came on the connection
the neighbour joined on; nothing here touches a socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bus.liveness import Neighbours, NeighbourState
from bus.protocol import Event, Heartbeat, ProtocolError, Update
from bus.wire import DropLog

__all__ = ["NeighbourView", "why"]

log = logging.getLogger("bus.node")


def why(err: ProtocolError) -> str:
    """A refused frame's reason, as a neighbour's entry shows it."""
    return f"{err.msg_type or 'frame'}: {err.code}: {err.message}"


class NeighbourView:
    """Takes what neighbours send into ``neighbours`` and calls ``on_neighbour`` with a copy
    of each entry that changed, ``on_event`` with each event taken (errors in them logged)."""

    def __init__(self, neighbours: Neighbours, clock: Callable[[], float],
                 on_neighbour: Callable[[NeighbourState], None] | None = None,
                 on_event: Callable[[NeighbourState, Event], None] | None = None):
        self._neighbours = neighbours
        self._clock = clock
        self._on_neighbour = on_neighbour
        self._on_event = on_event
        # +1 whenever what the table shows changes (a join, a new snapshot or summary, a
        # loss, a refusal): what was made from one reading of it holds while this stands.
        self.version = 0

    def fire(self, state: NeighbourState) -> None:
        """``state`` changed: the agent is told (a copy)."""
        self.version += 1
        if self._on_neighbour is None:
            return
        try:
            self._on_neighbour(state.copy())
        except Exception:
            log.exception("on_neighbour callback failed for %s", state.node_id)

    def heard(self, node_id: str, epoch: int | None = None) -> NeighbourState | None:
        """The neighbour's state if it is alive (the message counts as a sign of life)."""
        state = self._neighbours.get(node_id)
        if state is not None and self._neighbours.heard(node_id, self._clock(), epoch):
            return state
        return None

    def take_snapshot(self, msg: Heartbeat | Update, drops: DropLog) -> bool:
        """Store the snapshot unless stale; False when it was refused (a seq that leaps)."""
        reason = self._neighbours.seq_refusal(msg.node_id, msg.epoch, msg.seq)
        if reason is not None:
            self.refused(msg.node_id, f"{msg.TYPE.decode()}: {reason}", drops)
            return False
        state = self.heard(msg.node_id, msg.epoch)
        if state is not None and self._neighbours.snapshot(msg.node_id, msg.epoch, msg.seq,
                                                           msg.snapshot, msg.summary, msg.sent_at):
            self.fire(state)
        return True

    def take_event(self, msg: Event, drops: DropLog) -> None:
        """Give the agent an event unless its seq is refused."""
        reason = self._neighbours.seq_refusal(msg.node_id, msg.epoch, msg.seq)
        if reason is not None:
            self.refused(msg.node_id, f"event: {reason}", drops)
            return
        state = self.heard(msg.node_id, msg.epoch)
        if state is not None and self._on_event is not None:
            try:
                self._on_event(state.copy(), msg)
            except Exception:
                log.exception("on_event callback failed for %s", msg.node_id)

    def refused(self, node_id: str, reason: str, drops: DropLog) -> None:
        """A message from neighbour ``node_id`` is refused: log it, and say so on its entry."""
        drops.drop(f"from {node_id}: {reason}")
        self.reject(node_id, reason)

    def reject(self, node_id: str, reason: str) -> None:
        """Say on neighbour ``node_id``'s entry why its last message was refused."""
        state = self._neighbours.get(node_id)
        if state is not None and self._neighbours.reject(node_id, reason[:300]):
            self.fire(state)

    def reject_frame(self, node_id: str, err: ProtocolError) -> None:
        """A frame on neighbour ``node_id``'s connection did not decode."""
        self.reject(node_id, why(err))
