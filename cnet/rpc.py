"""Agent operations over the bus: what neighbours (delegation, forwarding) and ZMQ clients ask.

One ``handle(request, sender) -> dict`` for the bus transport (STYLE.md #3: handlers return the
reply, only the transport touches sockets). Errors leave as ``RemoteError`` with the HTTP status
in ``details.status``, so the caller can turn them back into the same REST error.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from bus import RemoteError

from .errors import BadRequest, CnetError, NotFound, Unauthorized
from .workload import STATUSES

if TYPE_CHECKING:
    from bus import Request, Sender

    from .agent import Agent

# Operations a client may call; neighbours may call these and the node-to-node ones.
CLIENT_OPS = frozenset({"submit", "list", "get", "stop", "delete", "logs", "nodes", "resources",
                        "health"})
NODE_OPS = frozenset({"delegate"})


class RpcHandler:
    def __init__(self, agent: "Agent"):
        self.agent = agent

    async def handle(self, request: "Request", sender: "Sender") -> dict[str, Any]:
        try:
            return await self._dispatch(request, sender)
        except CnetError as exc:
            raise RemoteError(exc.code, exc.message, {**exc.details, "status": exc.status}) from None

    async def _dispatch(self, request: "Request", sender: "Sender") -> dict[str, Any]:
        op, args = request.op, request.args or {}
        if sender.role == "client":
            if op not in CLIENT_OPS:
                raise BadRequest(f"unknown operation {op!r}", code="unknown_op")
            token = self.agent.config.api_token
            if token and op != "health" and not hmac.compare_digest((request.token or "").encode(), token.encode()):
                raise Unauthorized("missing or wrong token")
        elif op not in CLIENT_OPS | NODE_OPS:
            raise BadRequest(f"unknown operation {op!r}", code="unknown_op")
        agent = self.agent
        if op == "delegate":
            wl, created = await agent.delegator.submit(
                args.get("workload"), hops=request.hops, visited=tuple(request.visited),
                upstream=sender.node_id, origin=args.get("origin"))
            return wl.to_dict()
        if op == "submit":
            wl, created = await agent.submit(args.get("workload"))
            return {"workload": wl.to_dict(), "created": created}
        if op == "list":
            status, wtype = args.get("status"), args.get("type")
            if status is not None and status not in STATUSES:
                raise BadRequest(f"status: must be one of {', '.join(STATUSES)}", code="invalid_argument")
            items = await agent.list_workloads(status, wtype, args.get("scope", "local"))
            return {"node_id": agent.config.node_id, "workloads": items, "count": len(items)}
        if op == "resources":
            return agent.register.resources()
        if op == "nodes":
            return agent.nodes_view()
        if op == "health":
            return await agent.health()
        workload_id = args.get("id")
        if not isinstance(workload_id, str):
            raise BadRequest("id: required", code="invalid_argument")
        if op == "get":
            return agent.delegator.get(workload_id)
        if op == "stop":
            return (await agent.delegator.stop(workload_id)).to_dict()
        if op == "delete":
            await agent.delegator.delete(workload_id)
            return {"id": workload_id, "deleted": True}
        if op == "logs":
            tail = args.get("tail", 100)
            if not isinstance(tail, int) or isinstance(tail, bool) or not 0 <= tail <= 10_000:
                raise BadRequest("tail: a whole number 0..10000", code="invalid_argument")
            return {"id": workload_id, "tail": tail,
                    "logs": await agent.delegator.logs(workload_id, tail)}
        raise NotFound(f"operation {op!r} not found")
