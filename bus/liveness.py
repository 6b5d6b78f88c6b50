"""The neighbour table: who this node's parent, children and peers are, and whether they live.

Plain data plus decisions, no I/O: the transport tells it what it heard and when, and asks it
on each tick which neighbours have gone silent. Times are ``time.monotonic()`` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALIVE", "LOST", "MAX_SEQ_STEP", "QUIET_FOR", "NeighbourState", "Neighbours"]

ALIVE = "alive"
LOST = "lost"
MAX_SEQ_STEP = 10**6      # a seq further ahead of the last one taken in a session is refused
QUIET_FOR = 1.5           # intervals after a neighbour's beat on our ROUTER that we beat back


@dataclass
class NeighbourState:
    """What this node knows of one neighbour. Callbacks receive a copy."""

    node_id: str
    role: str                         # parent | child | peer
    status: str = ALIVE               # alive | lost
    last_seen: float = 0.0            # monotonic time of the last valid message from it
    http: str = ""                    # its HTTP address, as it announced it
    router: str = ""
    pub: str = ""
    epoch: int = 0                    # its incarnation; 0 until a handshake told us
    seq: int = -1                     # seq of the snapshot we hold
    snapshot: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    sent_at: float = 0.0              # its wall clock when it sent that snapshot
    interval: float = 1.0             # its heartbeat interval
    joins: int = 0                    # handshakes completed with it (each one a new session)
    rejected: str = ""                # why its last refused message was refused
    rejections: int = 0               # messages from it refused (bad payloads, wild seqs)
    beat_in: float = -math.inf        # when its last heartbeat came to our ROUTER, this session
    beats_every: float = 1.0          # the heartbeat interval it announced

    def age(self, now: float) -> float:
        """Seconds since it was last heard from."""
        return max(0.0, now - self.last_seen)

    def copy(self) -> NeighbourState:
        # A shallow copy, as dataclasses.replace makes, at a tenth of its cost: the agent copies
        # every neighbour for each summary it sends and each placement it decides.
        new = object.__new__(NeighbourState)
        new.__dict__.update(self.__dict__)
        return new


class Neighbours:
    """Neighbour states by node id, with liveness decisions.

    Every method that changes something visible returns True, so the caller fires its
    ``on_neighbour`` callback exactly when the agent has something new to show.
    """

    def __init__(self, misses: int = 3):
        self.misses = misses
        self._by_id: dict[str, NeighbourState] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._by_id

    def get(self, node_id: str) -> NeighbourState | None:
        return self._by_id.get(node_id)

    def all(self) -> list[NeighbourState]:
        return list(self._by_id.values())

    def joined(self, node_id: str, role: str, now: float, *, epoch: int, http: str, router: str,
               pub: str, interval: float, beats_every: float | None = None) -> NeighbourState:
        """A handshake completed: create or refresh the entry (a new epoch drops the old snapshot).

        Each handshake is a new session: the next snapshot sets its seq afresh, so a seq taken
        in an earlier session (even a wild one) cannot make the node's own snapshots stale.
        """
        state = self._by_id.get(node_id)
        if state is None:
            state = self._by_id[node_id] = NeighbourState(node_id=node_id, role=role)
        if state.epoch != epoch:
            state.snapshot, state.summary, state.sent_at, state.rejected = {}, None, 0.0, ""
        state.seq = -1
        state.role, state.epoch, state.http, state.router, state.pub = role, epoch, http, router, pub
        state.interval, state.status, state.last_seen = interval, ALIVE, now
        state.beat_in = -math.inf
        state.beats_every = interval if beats_every is None else beats_every
        state.joins += 1
        return state

    def beat_in(self, node_id: str, epoch: int, now: float) -> None:
        """A heartbeat of alive ``node_id``'s current incarnation came to our ROUTER now."""
        state = self._by_id.get(node_id)
        if state is not None and state.status == ALIVE and state.epoch == epoch:
            state.beat_in = now

    def beating_to_us(self, node_id: str, interval: float, now: float) -> bool:
        """Whether ``node_id`` beats to our ROUTER at our ``interval`` (a beat came within
        ``QUIET_FOR`` intervals, this session). Then this node beats back to it over that
        connection at its own tick rather than answering each beat: the same two messages an
        interval, each side hearing the other on the other's own clock, and an idle node's
        beats out and in come in one burst. The first beat after a handshake is answered, and
        so is one that comes after a silence; a neighbour on another interval is answered."""
        state = self._by_id.get(node_id)
        return (state is not None and state.status == ALIVE and state.beats_every == interval
                and now - state.beat_in <= QUIET_FOR * interval)

    def beats_to_us(self, node_id: str, own_id: str, interval: float, now: float) -> bool:
        """Whether our link to peer ``node_id`` may stay quiet. Two peers that list each other
        have two links; the link of the lower node id carries the pair: it beats on it, the
        other beats back over that connection (``beating_to_us``) and leaves its own link
        quiet: two messages an interval for the pair, not four. So: ``node_id`` is the lower
        id and beats to us. When its beats stop, our link beats (and is answered) again: a
        peer that stops is lost within the same window as ever."""
        return node_id < own_id and self.beating_to_us(node_id, interval, now)

    def heard(self, node_id: str, now: float, epoch: int | None = None) -> bool:
        """A valid message came from an alive ``node_id``: True when it counts as a sign of life.

        Only a handshake (``joined``) makes a lost neighbour alive again: a message that was
        queued during a cut, or a heartbeat on a link the other side has given up on, proves
        nothing about both directions. A message from another incarnation than the
        handshake's is no proof either: that incarnation must hello first (the duplicate-id
        check depends on it).
        """
        state = self._by_id.get(node_id)
        if state is None or state.status != ALIVE:
            return False
        if epoch is not None and state.epoch and epoch != state.epoch:
            return False
        state.last_seen = now
        return True

    def is_lost(self, node_id: str) -> bool:
        state = self._by_id.get(node_id)
        return state is not None and state.status == LOST

    def is_alive(self, node_id: str, now: float) -> bool:
        """Alive and heard within its loss window (``misses`` intervals), whether or not a tick
        has expired it yet."""
        state = self._by_id.get(node_id)
        return (state is not None and state.status == ALIVE
                and now - state.last_seen <= self.misses * state.interval)

    def seq_refusal(self, node_id: str, epoch: int, seq: int) -> str | None:
        """Why ``seq`` of incarnation ``epoch`` is not taken as-is from ``node_id``: more than
        ``MAX_SEQ_STEP`` ahead of the last seq taken in this session (a counter does not leap;
        a forger's does)."""
        state = self._by_id.get(node_id)
        if (state is not None and epoch == state.epoch and state.seq >= 0
                and seq > state.seq + MAX_SEQ_STEP):
            return f"seq leaps more than {MAX_SEQ_STEP} ahead of the last one taken"
        return None

    def reject(self, node_id: str, reason: str) -> bool:
        """Note on ``node_id``'s entry that a message from it was refused; True when the reason
        is new (worth showing), False when it repeats or the node is unknown."""
        state = self._by_id.get(node_id)
        if state is None:
            return False
        state.rejections += 1
        changed = state.rejected != reason
        state.rejected = reason
        return changed

    def snapshot(self, node_id: str, epoch: int, seq: int, snapshot: dict[str, Any],
                 summary: dict[str, Any] | None, sent_at: float) -> bool:
        """Store a snapshot unless it is stale; True when the stored view changed."""
        state = self._by_id.get(node_id)
        if state is None or (state.epoch and epoch != state.epoch) or seq <= state.seq:
            return False
        if state.role != "child":
            summary = None            # only a child's subtree is read (a parent's scheduler)
        state.seq, state.sent_at = seq, sent_at
        # An equal report keeps the objects already stored: what is made of them once per
        # change (the scheduler's view of the node, keyed by identity) stays valid.
        changed = False
        if snapshot != state.snapshot:
            state.snapshot, changed = snapshot, True
        if summary != state.summary:
            state.summary, changed = summary, True
        return changed

    def lose(self, node_id: str) -> bool:
        """Mark ``node_id`` lost now (it said bye, or its link failed); True if it was alive."""
        state = self._by_id.get(node_id)
        if state is None or state.status == LOST:
            return False
        state.status = LOST
        return True

    def expire(self, now: float) -> list[NeighbourState]:
        """Mark lost every alive neighbour silent for more than ``misses`` of its intervals."""
        lost = []
        for state in self._by_id.values():
            if state.status == ALIVE and now - state.last_seen > self.misses * state.interval:
                state.status = LOST
                lost.append(state)
        return lost

    def is_live_elsewhere(self, node_id: str, epoch: int) -> bool:
        """True when ``node_id`` is alive under another incarnation (a duplicate hello)."""
        state = self._by_id.get(node_id)
        return state is not None and state.status == ALIVE and state.epoch not in (0, epoch)
