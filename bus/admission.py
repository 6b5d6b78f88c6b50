"""Hello admission: whether a node saying hello may join as a child or peer, decided without I/O.

A pure function of the hello and this node's view, so every refusal is testable in-process;
the BusNode sends the Refuse (and logs it) or the Welcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bus.liveness import LOST
from bus.protocol import PROTOCOL
from bus.security import token_matches

if TYPE_CHECKING:
    from bus.liveness import Neighbours
    from bus.protocol import Hello
    from bus.security import CurveKeys

__all__ = ["MAX_NEIGHBOURS", "refusal"]

MAX_NEIGHBOURS = 4096      # hellos beyond this many distinct node ids are refused


def refusal(hello: "Hello", *, own_id: str, neighbours: "Neighbours", now: float,
            token: str | None = None, curve: "CurveKeys | None" = None,
            limit: int = MAX_NEIGHBOURS) -> tuple[str, str] | None:
    """``(code, reason)`` if the hello of a would-be child or peer is refused, else None."""
    if hello.protocol != PROTOCOL:
        return "version_mismatch", f"protocol {hello.protocol} not supported; this node speaks {PROTOCOL}"
    if hello.node_id == own_id:
        return "duplicate_node", f"node id {hello.node_id!r} is this node's own id"
    role = "child" if hello.role == "child" else "peer"
    existing = neighbours.get(hello.node_id)
    if existing is None and len(neighbours) >= limit:
        return "too_many_neighbours", f"this node already tracks {limit} neighbours"
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
