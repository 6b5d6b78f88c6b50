"""Prometheus metrics of one agent: workloads by state, allocations, request latencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .resources import KINDS

if TYPE_CHECKING:
    from .register import Register
    from .workload import Workload


class Book(Protocol):
    """Where workload records are kept (the Manager's own, the mirror book)."""

    def list(self) -> list["Workload"]: ...


class AgentMetrics:
    def __init__(self, books: Iterable[Book], register: "Register"):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "cnet_http_request_duration_seconds", "REST request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.submissions = Counter(
            "cnet_workload_submissions_total", "Workload submissions by type and result",
            ["type", "result"], registry=self.registry)
        self.registry.register(_StateCollector(list(books), register))

    def count_submission(self, wtype: str, result: str) -> None:
        self.submissions.labels(wtype, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Reads live state at scrape time, so gauges can never drift from the truth."""

    def __init__(self, books: list[Book], register: "Register"):
        self.books, self.register = books, register

    def collect(self):
        states = GaugeMetricFamily("cnet_workloads", "Workloads by state and type",
                                   labels=["state", "type"])
        counts: dict[tuple[str, str], int] = {}
        for book in self.books:
            for wl in book.list():
                counts[(wl.status, wl.type)] = counts.get((wl.status, wl.type), 0) + 1
        for (state, wtype), count in sorted(counts.items()):
            states.add_metric([state, wtype], count)
        yield states
        for name, vector in (("capacity", self.register.capacity),
                             ("allocated", self.register.allocated),
                             ("available", self.register.available)):
            family = GaugeMetricFamily(f"cnet_resources_{name}",
                                       f"Resources {name} on this node (cpu cores, bytes, gpus)",
                                       labels=["resource"])
            for kind in KINDS:
                family.add_metric([kind], float(getattr(vector, kind)))
            yield family
