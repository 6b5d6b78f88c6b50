"""The node's links to its parent and peers (a :class:`~bus.link.Link` each) and which
neighbour each one joined: their entries, their liveness, and when a peer's link stays quiet.

Of two peers linked both ways, only the lower node id's link carries the pair's beats
(``Neighbours.beats_to_us``); the other link stays quiet while the peer's own link to our
ROUTER carries them, the beats heard there count for it, and requests go that way too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bus.link import Link
from bus.liveness import Neighbours, NeighbourState
from bus.protocol import Welcome

__all__ = ["Links"]

log = logging.getLogger("bus.node")


class Links:
    """The links of node ``node_id``. ``identity_of`` is the ROUTER identity of each neighbour
    joined on this node's ROUTER (``Admission.identity_of``): a peer there may make its link
    here quiet."""

    def __init__(self, node_id: str, neighbours: Neighbours, identity_of: dict[str, bytes], *,
                 interval: float, misses: int, clock: Callable[[], float]):
        self.node_id = node_id
        self._neighbours = neighbours
        self._identity_of = identity_of
        self._interval = interval
        self._misses = misses
        self._clock = clock
        self.all: list[Link] = []
        self.of: dict[str, Link] = {}           # node id -> the link that joined it

    def add(self, link: Link) -> None:
        self.all.append(link)
        link.start()

    async def close(self, reason: str) -> None:
        """Say bye on each link and close it."""
        for link in self.all:
            await link.close(reason)

    def joined(self, link: Link, welcome: Welcome) -> NeighbourState | None:
        """``link`` was welcomed: the neighbour's entry, joined (None for a link that leads
        to this node itself)."""
        if welcome.node_id == self.node_id:
            log.error("%s link at %s leads to this node itself; ignoring it", link.kind, link.address)
            return None
        self.of[welcome.node_id] = link
        return self._neighbours.joined(welcome.node_id, link.kind, self._clock(),
                                       epoch=welcome.epoch, http=welcome.http,
                                       router=welcome.router, pub=welcome.pub,
                                       # it answers our heartbeats: at our pace, or its own
                                       interval=max(welcome.interval, self._interval),
                                       beats_every=welcome.interval)

    def down(self, link: Link, reason: str) -> NeighbourState | None:
        """``link`` went down: its neighbour's entry if that was the link it joined and the
        neighbour is lost now (it was alive)."""
        node_id = link.node_id
        if node_id is None or self.of.get(node_id) is not link:
            return None
        state = self._neighbours.get(node_id)
        if state is not None and self._neighbours.lose(node_id):
            log.warning("%s %s lost: %s", link.kind, node_id, reason)
            return state
        return None

    def quiet(self, link: Link, now: float) -> bool:
        """Whether ``link`` stays quiet: the peer's own link to our ROUTER carries the pair's
        beats (``Neighbours.beats_to_us``); its beats heard count for this link too, and
        requests to it go that way. A link that reconnected under our feet is told to say
        hello at its first beat once the peer's stop."""
        return (link.kind == "peer" and link.node_id is not None
                and link.node_id in self._identity_of
                and self._neighbours.beats_to_us(link.node_id, self.node_id, self._interval, now))

    def tick(self, now: float) -> None:
        """Liveness of each link (a quiet one counts the beats heard on the peer's own)."""
        for link in self.all:
            if link.joined and self.quiet(link, now):
                link.heard_elsewhere(self._neighbours.get(link.node_id or "").beat_in)
            link.tick(now)

    def due(self, now: float, due: float) -> float:
        """The earlier of ``due`` and the first moment a joined link will have been silent
        too long."""
        window = self._misses * self._interval
        for link in self.all:
            if link.joined and now < link.last_heard + window < due:
                due = link.last_heard + window
        return due
