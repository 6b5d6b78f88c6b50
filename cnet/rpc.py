"""The bus's front door: a request from a neighbour or a ZMQ client, run as its operation.

One ``handle(request, sender) -> dict`` for the bus transport (STYLE.md #3: handlers return the
reply, only the transport touches sockets). Errors leave as ``RemoteError`` with the HTTP status
in ``details.status``, so the caller can turn them back into the same REST error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus import RemoteError

from .errors import BadRequest, CnetError
from .ops import OPS, Caller, check_token

if TYPE_CHECKING:
    from bus import Request, Sender

    from .node import Node

__all__ = ["BusDoor"]


class BusDoor:
    def __init__(self, node: "Node", token: str | None):
        self.node = node
        self.token = token

    async def handle(self, request: "Request", sender: "Sender") -> dict[str, Any]:
        try:
            return await self._run(request, sender)
        except CnetError as exc:
            raise RemoteError(exc.code, exc.message, {**exc.details, "status": exc.status}) from None

    async def _run(self, request: "Request", sender: "Sender") -> dict[str, Any]:
        kind = OPS.get(request.op)
        client = sender.role == "client"
        if kind is None or (kind.from_nodes and client):
            raise BadRequest(f"unknown operation {request.op!r}", code="unknown_op")
        # A neighbour proved the token in its hello; a client shows it with every request.
        if client and not kind.public:
            check_token(self.token, request.token)
        args = request.args if isinstance(request.args, dict) else {}
        caller = Caller(node_id=sender.node_id, hops=request.hops, visited=tuple(request.visited))
        return await kind.parse(args).run(self.node, caller)
