"""In-process event hub: the manager and register publish, the WebSocket and the bus listen."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from bus import TO_ANY

from .workload import FROM

if TYPE_CHECKING:
    from .workload import Workload

log = logging.getLogger(__name__)

Listener = Callable[[dict], None]

# The neighbour a workload event is for (:func:`addressee`). Only the bus reads it: clients
# are not shown keys starting with "_".
TO = "_to"


def addressee(wl: "Workload", node_id: str) -> str | None:
    """Who node ``node_id``'s events about ``wl`` are for: the neighbour that placed it here
    (its ``FROM``), which keeps a mirror of it; nobody for one submitted here; any neighbour
    when it came from elsewhere through a node not known any more (a record of an earlier
    version, a mirror listed after its answer was lost and the agent restarted)."""
    upstream = wl.runtime.get(FROM)
    if upstream is not None:
        return upstream
    return None if wl.origin == node_id else TO_ANY


class EventHub:
    """Synchronous fan-out of small event dicts (``{"type": ..., ...}``) to listeners.

    Keys starting with "_" are for the agent's own listeners (:data:`TO`), not for clients."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def publish(self, event: dict) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the others
                log.exception("event listener failed on %s", event.get("type"))
