"""Every operation of an agent, defined once: REST handlers, bus requests and the client use these.

``OPS`` maps an operation's name (what the bus and the client send) to its class; see
:mod:`cnet.ops.base` for what an operation is.
"""

from __future__ import annotations

from .base import Caller, Operation, check_token
from .cluster import Health, Nodes, ResourcesOp
from .data import Fetch, Locate
from .sets import Scale
from .workloads import Delegate, Delete, Get, List, Logs, Reconcile, Stop, Submit

__all__ = ["OPS", "Caller", "Delegate", "Delete", "Fetch", "Get", "Health", "List", "Locate",
           "Logs", "Nodes", "Operation", "Reconcile", "ResourcesOp", "Scale", "Stop", "Submit",
           "check_token"]

OPS: dict[str, type[Operation]] = {op.name: op for op in (
    Submit, Delegate, Reconcile, List, Get, Stop, Delete, Logs, Nodes, ResourcesOp, Health,
    Locate, Fetch, Scale)}
