"""The neighbour port: what this node asks of its neighbours over the bus, and how long it waits.

The only part of the agent that calls the bus. Bus failures leave it as CnetErrors (``forward``)
or as the bus's own errors (``call``, for placement, which tells them apart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus import RemoteError, RequestTimeout, Unreachable

from .errors import CnetError, Unavailable

if TYPE_CHECKING:
    from bus import BusNode, NeighbourState

    from .config import Config
    from .workload import Workload

__all__ = ["NeighbourPort", "remote_error"]


def remote_error(exc: RemoteError) -> CnetError:
    """An error reply from a neighbour, as the CnetError it was over there."""
    details = dict(exc.details)
    status = details.pop("status", 502)
    return CnetError(exc.message, code=exc.code, status=status, details=details)


class NeighbourPort:
    """The bus as the operations see it; ``bus`` is None until the agent has started it."""

    def __init__(self, config: "Config", bus: "BusNode | None" = None):
        self.request_timeout = config.bus.request_timeout
        self.stop_timeout = max(config.bus.request_timeout, config.stop_grace + 35.0)
        self.bus = bus

    def neighbours(self) -> list["NeighbourState"]:
        return self.bus.neighbours() if self.bus is not None else []

    @property
    def view_version(self) -> int:
        """Changes whenever ``neighbours()`` would show something new (``BusNode.view_version``)."""
        return self.bus.view_version if self.bus is not None else -1

    async def call(self, node_id: str, op: str, args: dict[str, Any], *, hops: int = 0,
                   visited: tuple[str, ...] = (), timeout: float | None = None) -> dict[str, Any]:
        """Ask one neighbour; raises the bus's Unreachable, RequestTimeout or RemoteError."""
        if self.bus is None:
            raise Unreachable(f"{node_id}: this node's bus is not running")
        return await self.bus.call(node_id, op, args, hops=hops, visited=list(visited),
                                   timeout=self.request_timeout if timeout is None else timeout)

    async def ask(self, node_id: str, op: str, args: dict[str, Any], *, hops: int = 0,
                  visited: tuple[str, ...] = ()) -> dict[str, Any]:
        """Ask one neighbour for data it serves (``locate``, ``fetch``); every failure is a
        CnetError: the neighbour's own, or ``node_unreachable``."""
        try:
            return await self.call(node_id, op, args, hops=hops, visited=visited)
        except RemoteError as exc:
            raise remote_error(exc) from None
        except (RequestTimeout, Unreachable) as exc:
            raise Unavailable(f"{node_id}: {exc.message}", code="node_unreachable") from None

    async def forward(self, wl: "Workload", op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run ``op`` on a mirrored workload where it runs, through the neighbour it went to."""
        via = wl.runtime.get("via")
        if not via or self.bus is None:
            raise Unavailable(f"workload {wl.id} runs on {wl.node_id}, which this node cannot reach")
        timeout = self.stop_timeout if op in ("stop", "delete") else self.request_timeout
        try:
            return await self.call(via, op, {"id": wl.id, **args}, timeout=timeout)
        except RemoteError as exc:
            raise remote_error(exc) from None
        except (RequestTimeout, Unreachable) as exc:
            raise Unavailable(f"workload {wl.id} runs on {wl.node_id} through {via}: {exc.message}",
                              code="node_unreachable") from None
