"""Every operation of an agent, defined once: REST handlers, bus requests and the client use these.

``OPS`` maps an operation's name (what the bus and the client send) to its class; see
:mod:`cnet.ops.base` for what an operation is. The operations an idle node has no use for (a
model's ``locate`` and ``fetch``, asked only by the nodes placing or fetching one, and a replica
set's ``scale``, with the set record's checks) are imported
by their first lookup in ``OPS`` (or as attributes of this package): the same classes, the same
errors through both doors, only later.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from .base import Caller, Operation, check_token
from .cluster import Health, Nodes, ResourcesOp
from .workloads import Delegate, Delete, Get, List, Logs, Reconcile, Stop, Submit

__all__ = ["OPS", "Caller", "Delegate", "Delete", "Fetch", "Get", "Health", "List", "Locate",
           "Logs", "Nodes", "Operation", "Reconcile", "ResourcesOp", "Scale", "Stop", "Submit",
           "check_token"]

# name -> (module of this package, class): imported on first use.
_LATER = {"locate": ("data", "Locate"), "fetch": ("data", "Fetch"), "scale": ("sets", "Scale")}


class _Table(Mapping):
    """Operation name -> class; those in ``_LATER`` imported when first looked up."""

    def __init__(self, *ops: type[Operation]):
        self._ops: dict[str, type[Operation]] = {op.name: op for op in ops}
        self._names = (*self._ops, *_LATER)

    def __getitem__(self, name: str) -> type[Operation]:
        op = self._ops.get(name)
        if op is None:
            module, cls = _LATER[name]           # KeyError: no such operation
            op = self._ops[name] = getattr(import_module(f".{module}", __name__), cls)
        return op

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


OPS: Mapping[str, type[Operation]] = _Table(
    Submit, Delegate, Reconcile, List, Get, Stop, Delete, Logs, Nodes, ResourcesOp, Health)


def __getattr__(attr: str) -> type[Operation]:
    for name, (_, cls) in _LATER.items():
        if cls == attr:
            return OPS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
