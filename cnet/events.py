"""In-process event hub: the manager and register publish, the WebSocket and the bus listen."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

Listener = Callable[[dict], None]

# The neighbour a workload event is for: the node that placed the workload here (its
# ``FROM``), which keeps a mirror of it; None for one submitted here. Only the bus reads it:
# clients are not shown keys starting with "_".
TO = "_to"


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
