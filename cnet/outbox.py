"""The outbox: what this node broadcasts on its PUB goes out after the step that caused it.

A resource change or a workload change is published at once, but not in the middle of the work
that made it: the broadcasts a step queues are sent when it yields to the loop (``call_soon``),
after whatever answer it was writing (a delegation's reply, an HTTP response). Neighbours then
read a delegation's answer before the broadcasts it caused, not after decoding them. Order is
kept (events in the order they happened), and any number of resource changes in one step go
out as one snapshot, taken when it is sent (the latest). Broadcasts are best effort anyway (a
mirror heals a lost one by reconciling); nothing durable waits on them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus import BusNode

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

_SNAPSHOT = object()     # the queue's marker for "publish the current snapshot here"


class Outbox:
    """Queues broadcasts for ``bus`` (None until the agent has started it) and sends them
    together on the loop's next turn."""

    def __init__(self) -> None:
        self.bus: "BusNode | None" = None
        self._queue: list[Any] = []
        self._snapshot_queued = False

    def __len__(self) -> int:
        return len(self._queue)

    def snapshot(self) -> None:
        """This node's resources changed: publish its snapshot (once for the whole step)."""
        if not self._snapshot_queued:
            self._snapshot_queued = True
            self._put(_SNAPSHOT)

    def event(self, kind: str, data: dict[str, Any], to: str | None = None) -> None:
        """Publish event ``kind`` with ``data`` (for neighbour ``to`` alone, if given)."""
        self._put((kind, data, to))

    def _put(self, item: Any) -> None:
        if self.bus is None:
            return
        if not self._queue:
            asyncio.get_running_loop().call_soon(self.flush)
        self._queue.append(item)

    def flush(self) -> None:
        """Send everything queued now, in order."""
        queue, self._queue, self._snapshot_queued = self._queue, [], False
        bus = self.bus
        if bus is None:
            return
        for item in queue:
            try:
                if item is _SNAPSHOT:
                    bus.publish()
                else:
                    bus.publish_event(*item)
            except Exception:    # one bad broadcast must not drop the others
                log.exception("broadcast of %s failed", "the snapshot" if item is _SNAPSHOT
                              else f"a {item[0]} event")
