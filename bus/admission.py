"""Hello admission: whether a node saying hello may join as a child or peer, and who is joined
on which ROUTER connection (identities, routes, session nonces), decided without I/O.

``refusal`` is a pure function of the hello and this node's view, so every refusal is testable
in-process; :class:`Admission` keeps the ROUTER's connections and admits by it. The BusNode
sends the Refuse (and logs it) or the Welcome.

Identity: a node id alive here on another connection (heard within its loss window) is not
taken over. A hello for it from a new connection is refused ``duplicate_node`` unless it proves
it comes from the same party: the same ``epoch`` and the ``session`` nonce this node sent in
its last Welcome on the known connection (a link that reconnected). Once the known connection
is lost (silent for the window, or it said bye), anyone may join under that id again: without
Curve or a token the first hello of an id is taken on trust (README, Security).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Literal

from bus.liveness import LOST
from bus.protocol import PROTOCOL, new_corr_id
from bus.security import token_matches

if TYPE_CHECKING:
    from bus.liveness import Neighbours
    from bus.protocol import Hello
    from bus.security import CurveKeys

__all__ = ["MAX_NEIGHBOURS", "Admission", "Connection", "refusal"]

MAX_NEIGHBOURS = 4096      # hellos beyond this many distinct node ids are refused

Connection = Literal["new", "same", "other"]
"""Where a hello arrives, for its node id: no connection of it is known here (``new``), the one
it joined on (``same``), or another one while that is known (``other``)."""


def _proves_session(hello: "Hello", epoch: int, session: str) -> bool:
    return bool(session and hello.session and hello.epoch == epoch
                and hmac.compare_digest(hello.session.encode(), session.encode()))


def refusal(hello: "Hello", *, own_id: str, neighbours: "Neighbours", now: float,
            token: str | None = None, curve: "CurveKeys | None" = None,
            limit: int = MAX_NEIGHBOURS, connection: Connection = "new",
            session: str = "", joined_as: str | None = None) -> tuple[str, str] | None:
    """``(code, reason)`` if the hello of a would-be child or peer is refused, else None.

    ``connection`` says where it arrives (see :data:`Connection`); ``session`` is the nonce
    this node sent in its last Welcome on the known connection of that node id; ``joined_as``
    is the node id the hello's own connection already joined as, if any (one connection, one
    node).
    """
    if hello.protocol != PROTOCOL:
        return "version_mismatch", f"protocol {hello.protocol} not supported; this node speaks {PROTOCOL}"
    if hello.node_id == own_id:
        return "duplicate_node", f"node id {hello.node_id!r} is this node's own id"
    if joined_as is not None and joined_as != hello.node_id:
        return "bad_hello", f"this connection already joined as {joined_as!r}, not {hello.node_id!r}"
    role = "child" if hello.role == "child" else "peer"
    existing = neighbours.get(hello.node_id)
    if existing is None and len(neighbours) >= limit:
        return "too_many_neighbours", f"this node already tracks {limit} neighbours"
    if (existing is not None and connection == "other" and neighbours.is_alive(hello.node_id, now)
            and not _proves_session(hello, existing.epoch, session)):
        return "duplicate_node", (f"node id {hello.node_id!r} is already joined and alive on "
                                  f"another connection (last heard {existing.age(now):.1f} s "
                                  f"ago); a re-join must show that connection's session, or "
                                  f"come once it is lost")
    if neighbours.is_live_elsewhere(hello.node_id, hello.epoch):
        return "duplicate_node", (f"node id {hello.node_id!r} is already joined and alive "
                                  f"(another incarnation, last heard "
                                  f"{existing.age(now) if existing else 0:.1f} s ago)")
    if existing is not None and existing.role != role and existing.status != LOST:
        return "role_conflict", f"{hello.node_id} is this node's {existing.role}, not its {role}"
    if not token_matches(token, hello.token):
        return "unauthorized", ("hello lacks this node's token (every node of a cluster with "
                                "api.token set must have the same one)")
    if curve is not None and not curve.trusts(hello.curve_key):
        return "untrusted_key", "hello names a curve key that is not accepted here"
    return None


class Admission:
    """Who is joined on which connection to node ``own_id``'s ROUTER, and the hellos it admits.

    ``routes`` (identity -> node id) and ``identity_of`` (node id -> identity) are read by the
    node on every message it takes or sends on its ROUTER; ``session_of`` is the nonce of each
    node id's last Welcome (what a re-join from another connection must show).
    """

    def __init__(self, own_id: str, neighbours: "Neighbours", *, interval: float,
                 token: str | None = None, curve: "CurveKeys | None" = None):
        self.own_id = own_id
        self._neighbours = neighbours
        self._interval = interval
        self._token = token
        self._curve = curve
        self.routes: dict[bytes, str] = {}
        self.identity_of: dict[str, bytes] = {}
        self.session_of: dict[str, str] = {}

    def admit(self, identity: bytes, hello: "Hello", now: float) -> tuple[str, str] | None:
        """``(code, reason)`` if the hello of a would-be child or peer on connection
        ``identity`` is refused. Else None: the connection now speaks for its node id, with a
        fresh session (``session_of``), and its neighbour entry is joined."""
        known = self.identity_of.get(hello.node_id)
        refused = refusal(hello, own_id=self.own_id, neighbours=self._neighbours, now=now,
                          token=self._token, curve=self._curve,
                          connection="new" if known is None else "same" if known == identity
                          else "other", session=self.session_of.get(hello.node_id, ""),
                          joined_as=self.routes.get(identity))
        if refused is not None:
            return refused
        role = "child" if hello.role == "child" else "peer"
        if known is not None and known != identity:
            self.routes.pop(known, None)     # the old connection speaks for it no more
        self.routes[identity] = hello.node_id
        self.identity_of[hello.node_id] = identity
        self.session_of[hello.node_id] = new_corr_id()
        # A child beats at its own interval; a peer is also heard through our link's replies.
        interval = hello.interval if role == "child" else max(hello.interval, self._interval)
        self._neighbours.joined(hello.node_id, role, now, epoch=hello.epoch, http=hello.http,
                                router=hello.router, pub=hello.pub, interval=interval,
                                beats_every=hello.interval)
        return None

    def leave(self, identity: bytes) -> str | None:
        """Connection ``identity`` said bye: the node id it spoke for, if it still did."""
        node_id = self.routes.pop(identity, None)
        if node_id is None or self.identity_of.get(node_id) != identity:
            return None
        del self.identity_of[node_id]
        self.session_of.pop(node_id, None)
        return node_id
