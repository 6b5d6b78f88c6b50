"""The replica set operation: scale (a set is submitted, listed, stopped and deleted as any
workload is, see :mod:`cnet.ops.workloads`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from ..errors import BadRequest, Conflict
from ..replica_set import MAX_REPLICAS, check_replicas
from .base import Caller, Operation, workload_id

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Scale"]


@dataclass(frozen=True)
class Scale(Operation):
    """Grow or shrink a replica set to ``replicas`` members: the set as it is then."""

    name = "scale"
    id: str = ""
    replicas: int = 0

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        set_id = workload_id(args)
        unknown = sorted(set(args) - {"id", "replicas"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(k[:40] for k in unknown[:8])}",
                             code="invalid_field")
        if "replicas" not in args:
            raise BadRequest(f"replicas: required, a whole number from 1 to {MAX_REPLICAS}",
                             code="invalid_field")
        return cls(id=set_id, replicas=check_replicas(args.get("replicas")))

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        if node.sets.get(self.id) is None:
            wl = node.find(self.id)   # not_found if there is no such workload at all
            raise Conflict(f"workload {wl.id} is not a replica set (submit one with "
                           "\"replicas\": N)", code="not_a_set")
        return await node.sets.scale(self.id, self.replicas)
