"""Hello admission: whether a node saying hello may join as a child or peer, decided without I/O.

A pure function of the hello and this node's view, so every refusal is testable in-process;
the BusNode sends the Refuse (and logs it) or the Welcome.

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
from bus.protocol import PROTOCOL
from bus.security import token_matches

if TYPE_CHECKING:
    from bus.liveness import Neighbours
    from bus.protocol import Hello
    from bus.security import CurveKeys

__all__ = ["MAX_NEIGHBOURS", "Connection", "refusal"]

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
