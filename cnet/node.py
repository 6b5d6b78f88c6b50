"""The Node facade: the narrow view of one agent that operations run against.

Built by the agent from its parts; operations see this and nothing else of the agent, so they
can be run, and tested, against any node assembled from real parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import NotFound

if TYPE_CHECKING:
    from .lazy_models import LazyModels
    from .lazy_sets import LazySets
    from .manager import Manager
    from .mirrors import MirrorBook
    from .neighbours import LocalView
    from .placement import Placer
    from .register import Register
    from .remote import NeighbourPort
    from .workload import Workload

__all__ = ["Node"]


@dataclass(frozen=True)
class Node:
    local: "LocalView"            # node id, address, labels, register, live workloads, start time
    version: str
    manager: "Manager"            # this node's workloads and their lifecycle
    mirrors: "MirrorBook"         # the records of workloads this node placed elsewhere
    placer: "Placer"              # where a submission runs
    port: "NeighbourPort"         # the neighbours and what this node asks of them
    sets: "LazySets"              # the replica sets this node is the origin of
    on_submission: Callable[[str, str], None] = lambda wtype, result: None  # (type, outcome)
    clock: Callable[[], float] = time.monotonic   # the bus's clock: neighbour ages are on it
    models: "LazyModels | None" = None            # the model cache (its copies, for locate)

    @property
    def node_id(self) -> str:
        return self.local.node_id

    @property
    def register(self) -> "Register":
        return self.local.register

    def find(self, workload_id: str) -> "Workload":
        """A workload of this node or a mirror of one placed elsewhere; NotFound otherwise."""
        wl = self.placer.known(workload_id)
        if wl is None:
            raise NotFound(f"workload {workload_id} not found")
        return wl

    def is_mirror(self, wl: "Workload") -> bool:
        return wl.node_id != self.node_id
