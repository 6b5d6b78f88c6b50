"""CNET's ZeroMQ bus: node links, heartbeats, broadcasts, request/reply and CurveZMQ security.

Knows nothing of the agent: the agent gives a :class:`BusNode` callables (snapshot, handler,
on_neighbour, on_event) and calls its methods (publish, publish_event, request, neighbours).
"""

from bus.discovery import DiscoveryError, Endpoints, discover_http
from bus.dispatch import Handler, Sender
from bus.errors import BusError, LostInFlight, RemoteError, RequestTimeout, Unreachable
from bus.liveness import ALIVE, LOST, NeighbourState
from bus.node import BusNode
from bus.protocol import PROTOCOL, TO_ANY, VERSION, Event, ProtocolError, Reply, Request, Update
from bus.security import CurveKeys, generate_keys, token_matches

__all__ = [
    "ALIVE",
    "LOST",
    "LostInFlight",
    "PROTOCOL",
    "TO_ANY",
    "VERSION",
    "BusClient",
    "BusError",
    "BusNode",
    "CurveKeys",
    "DiscoveryError",
    "Endpoints",
    "Event",
    "Handler",
    "NeighbourState",
    "ProtocolError",
    "RemoteError",
    "Reply",
    "Request",
    "RequestTimeout",
    "Sender",
    "Unreachable",
    "Update",
    "Watcher",
    "discover_http",
    "generate_keys",
    "token_matches",
]


def __getattr__(name: str):
    """``BusClient`` and ``Watcher``, imported when first asked for: a node never needs them."""
    if name in ("BusClient", "Watcher"):
        from bus import client  # noqa: PLC0415 -- lazy: clients only

        return getattr(client, name)
    raise AttributeError(f"module 'bus' has no attribute {name!r}")
