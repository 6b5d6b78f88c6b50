"""The routed service endpoint ``/svc/<set id>/…``: which replica of a set answers a request.

This module holds the interface the replica sets provide (:class:`ReplicaSource`) and the pure
choice (:class:`Chooser`: least requests in flight, near replicas preferred, recently
unreachable ones skipped for a while); the forwarding itself is in :mod:`cnet.svc_proxy`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Replica:
    """One member of a replica set, as the router sees it."""

    id: str          # the member workload's id
    node_id: str     # the node it runs on
    endpoint: str    # base URL of its service, e.g. "http://10.0.0.5:18123"
    near: bool       # on this node or one of its children: preferred over peers/parent
    usable: bool     # running, its node not lost
    healthy: bool = True   # its last health check (its supervisor's) passed


@dataclass(frozen=True)
class ServiceSet:
    """A set of replicas behind one endpoint."""

    id: str
    replicas: tuple[Replica, ...]
    retry_post: bool   # the service's POSTs are pure (inference /predict): safe to retry once


class ReplicaSource(Protocol):
    """Where the router learns the sets this node serves (the replica sets' book).

    A source may also offer ``watch(callback) -> unwatch``: it then calls ``callback(set_id)``
    (at once, on the event loop) whenever a member of that set may have changed usability
    (its record, its node's status), and the router cuts short the requests in flight to a
    member that is no longer usable. Without the hook those wait for their answer or time out.
    A member that fails a health check stays usable (``healthy`` False): new requests avoid it
    while another passes, and those in flight to it wait for its answer (it is slow, not gone).
    """

    def service_set(self, set_id: str) -> ServiceSet | None: ...   # None: no such set on this node


class Chooser:
    """Which usable replica takes the next request: a pure decision over this router's counts.

    - Replicas the source marks unusable are never chosen.
    - A replica this router just failed to reach is skipped for ``quarantine`` seconds (passive
      health), unless every usable one is in that state: then the one whose mark ends first is
      tried rather than refusing outright.
    - Of the rest, those failing their health checks are skipped while one passing them is
      left, and taken when none is: a member that is slow (a loaded machine fails a check) is
      still where a request goes when the others are out, or were tried and failed.
    - Among the rest, the fewest requests in flight wins. Near replicas (this node and its
      children) are preferred: a far one (peer, parent) is taken only when it has at least
      ``near_slack`` fewer requests in flight than every near one. With the default of 1 this
      is least-in-flight with ties going near; so an idle set sends everything to near replicas,
      and a busy one spills over the tree.
    - Equal candidates take turns, so sequential requests spread over equal near replicas.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, quarantine: float = 3.0,
                 near_slack: int = 1) -> None:
        if near_slack < 1:
            raise ValueError("near_slack: at least 1")
        self.clock = clock
        self.quarantine = quarantine
        self.near_slack = near_slack
        self._in_flight: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self._turn = 0

    def in_flight(self, replica_id: str) -> int:
        return self._in_flight.get(replica_id, 0)

    def pick(self, replicas: Iterable[Replica], exclude: Container[str] = ()) -> Replica | None:
        """The replica for the next request, or None when no usable one is left."""
        usable = [r for r in replicas if r.usable and r.id not in exclude]
        if not usable:
            return None
        now = self.clock()
        up = [r for r in usable if self._down_until.get(r.id, 0.0) <= now]
        if not up:
            return min(usable, key=lambda r: self._down_until[r.id])
        up = [r for r in up if r.healthy] or up
        near = [r for r in up if r.near]
        far = [r for r in up if not r.near]
        if near and far:
            best_near = min(self.in_flight(r.id) for r in near)
            best_far = min(self.in_flight(r.id) for r in far)
            pool = far if best_near - best_far >= self.near_slack else near
        else:
            pool = near or far
        least = min(self.in_flight(r.id) for r in pool)
        tied = [r for r in pool if self.in_flight(r.id) == least]
        self._turn += 1
        return tied[self._turn % len(tied)]

    def started(self, replica_id: str) -> None:
        self._in_flight[replica_id] = self.in_flight(replica_id) + 1

    def finished(self, replica_id: str) -> None:
        left = self.in_flight(replica_id) - 1
        if left > 0:
            self._in_flight[replica_id] = left
        else:
            self._in_flight.pop(replica_id, None)

    def unreachable(self, replica_id: str) -> None:
        """This router could not reach it (refused, reset, no answer): skip it for a while."""
        now = self.clock()
        self._down_until = {k: v for k, v in self._down_until.items() if v > now}
        self._down_until[replica_id] = now + self.quarantine

    def reached(self, replica_id: str) -> None:
        """It answered: whatever mark it had is lifted."""
        self._down_until.pop(replica_id, None)
