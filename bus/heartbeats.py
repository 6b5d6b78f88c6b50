"""This node's heartbeats: the beat it sends (its snapshot, and the seq it shares with its
broadcasts), when beats fall due, and the connection each one goes out on.

A beat goes out on each joined link, and back over the connection of each neighbour that beats
to our ROUTER (a child, a peer that alone lists us); of two peers linked both ways only one
connection carries the pair's beats (``Neighbours.beating_to_us`` and ``beats_to_us``). One
beat is built per burst and encoded once for all the connections it goes out on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from bus.link import Link
from bus.links import Links
from bus.liveness import Neighbours
from bus.protocol import Heartbeat, encode

__all__ = ["Heartbeats"]

log = logging.getLogger("bus.node")


class Heartbeats:
    """The beats of node ``node_id`` (incarnation ``epoch``), every ``interval`` seconds.

    ``send_router(identity, frames)`` sends on the node's ROUTER; ``identity_of`` is the ROUTER
    identity of each neighbour joined on it (``Admission.identity_of``).
    """

    def __init__(self, node_id: str, epoch: int, *, interval: float,
                 snapshot: Callable[[], dict[str, Any]],
                 summary: Callable[[], dict[str, Any] | None] | None,
                 neighbours: Neighbours, links: Links, identity_of: dict[str, bytes],
                 send_router: Callable[[bytes, list[bytes]], bool], clock: Callable[[], float]):
        self.node_id = node_id
        self.epoch = epoch
        self.interval = interval
        self._snapshot = snapshot
        self._summary = summary
        self._neighbours = neighbours
        self._links = links
        self._identity_of = identity_of
        self._send_router = send_router
        self._clock = clock
        self.seq = 0
        self.next_beat = 0.0            # when the tick's next beat falls due (on the clock)
        self._beat: Heartbeat | None = None    # the last beat built, and when (on the clock)
        self._beat_at = float("-inf")
        self._encoded: dict[bool, tuple[Heartbeat, list[bytes]]] = {}   # its frames (upward or not)

    def next_seq(self) -> int:
        """The next seq of this node's messages (beats, updates and events share one)."""
        self.seq += 1
        return self.seq

    def build(self, fresh: bool = False, since: float | None = None) -> Heartbeat:
        """This node's heartbeat. The tick's is one built since the beat fell due (an answer
        sent in the same burst may have built it); an answer to a neighbour's beat sends the
        last one again (the same seq) while it is younger than an interval and nothing was
        published since: no rebuild per neighbour, and a neighbour that already took that
        snapshot just counts the beat as a sign of life. ``fresh``: build one now."""
        now = self._clock()
        beat = self._beat
        if (fresh or beat is None or beat.seq != self.seq or (since is not None and self._beat_at < since)
                or not 0 <= now - self._beat_at < self.interval):
            beat = self._beat = Heartbeat(node_id=self.node_id, epoch=self.epoch,
                                          seq=self.next_seq(), snapshot=self._snapshot(),
                                          sent_at=time.time())
            self._beat_at = now
        return beat

    def frames(self, since: float | None = None, upward: bool = False) -> list[bytes] | None:
        """This node's heartbeat (see :meth:`build`) encoded, once for every link and answer
        it goes out on (None, logged, if it cannot be). Only the one ``upward`` (to the
        parent) carries the subtree summary: nobody else reads it, and it grows with the
        subtree (the root's names every node)."""
        beat = self.build(since=since)
        cached = self._encoded.get(upward)
        if cached is not None and cached[0] is beat:
            return cached[1]
        try:
            frames = encode(dataclasses.replace(beat, summary=self._summary())
                            if upward and self._summary is not None else beat)
        except (TypeError, ValueError) as exc:
            log.error("%s: cannot encode a heartbeat: %s", self.node_id, exc)
            return None
        self._encoded[upward] = (beat, frames)
        return frames

    def tick(self, now: float) -> None:
        """Send the beats when they are due."""
        due = self.next_beat
        if now < due:
            return
        # Beats fall on whole multiples of the interval on the clock, so nodes that share one
        # (those on one host) beat together: what an idle node sends and is sent then comes in
        # one burst each interval, one wake-up rather than one per neighbour.
        self.next_beat = (now // self.interval + 1) * self.interval
        if self.next_beat <= now:
            self.next_beat += self.interval
        for link in self._links.all:
            frames = self.frames(since=due, upward=link.kind == "parent") if link.joined else None
            if frames is not None:
                self._beat_on(link, frames, now)
        self._beat_back(now, due)

    def beat_up(self, now: float) -> bool:
        """Send the parent a beat built now, out of turn, with the subtree summary: how a
        change below this node reaches the parent at once without a broadcast, which would wake
        every child and peer for a summary only the parent reads. False without a joined link
        to a parent."""
        for link in self._links.all:
            if link.kind == "parent" and link.joined:
                self.build(fresh=True)
                frames = self.frames(upward=True)
                if frames is not None:
                    self._beat_on(link, frames, now)
                return frames is not None
        return False

    def _beat_back(self, now: float, due: float) -> None:
        """Beat back to each neighbour that beats to our ROUTER, over its connection (a child,
        a peer that alone lists us): see ``Neighbours.beating_to_us``. A peer we also have a
        link to is the link's (``_beat_on``)."""
        frames = None
        link_of = self._links.of
        for node_id, identity in self._identity_of.items():
            link = link_of.get(node_id)
            if (link is None or not link.joined) and self._neighbours.beating_to_us(
                    node_id, self.interval, now):
                frames = frames or self.frames(since=due)
                if frames is None:
                    return
                self._send_router(identity, frames)

    def _beat_on(self, link: Link, frames: list[bytes], now: float) -> None:
        """Send this tick's heartbeat for ``link``: on it, or back over the peer's own
        connection when it is quiet (on it after all if that one is gone)."""
        if self._links.quiet(link, now) and self._send_router(
                self._identity_of[link.node_id or ""], frames):
            return
        link.send_frames(frames)
