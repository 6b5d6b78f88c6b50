"""The routed service endpoint ``/svc/<set id>/…``: which replica of a set answers a request.

This module holds the interface the replica sets provide (:class:`ReplicaSource`) and the pure
choice (:class:`Chooser`: least requests in flight, near replicas preferred, recently
unreachable ones skipped for a while); the forwarding itself is in :mod:`cnet.svc_proxy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Replica:
    """One member of a replica set, as the router sees it."""

    id: str          # the member workload's id
    node_id: str     # the node it runs on
    endpoint: str    # base URL of its service, e.g. "http://10.0.0.5:18123"
    near: bool       # on this node or one of its children: preferred over peers/parent
    usable: bool     # running, healthy (its supervisor's health check), its node not lost


@dataclass(frozen=True)
class ServiceSet:
    """A set of replicas behind one endpoint."""

    id: str
    replicas: tuple[Replica, ...]
    retry_post: bool   # the service's POSTs are pure (inference /predict): safe to retry once


class ReplicaSource(Protocol):
    """Where the router learns the sets this node serves (the replica sets' book)."""

    def service_set(self, set_id: str) -> ServiceSet | None: ...   # None: no such set on this node
