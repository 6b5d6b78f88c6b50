"""Prometheus metrics of one agent: workloads by state, allocations, request latencies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .resources import KINDS

if TYPE_CHECKING:
    from .manager import Manager
    from .register import Register


class AgentMetrics:
    def __init__(self, manager: "Manager", register: "Register"):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "cnet_http_request_duration_seconds", "REST request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.submissions = Counter(
            "cnet_workload_submissions_total", "Workload submissions by type and result",
            ["type", "result"], registry=self.registry)
        self.registry.register(_StateCollector(manager, register))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Reads live state at scrape time, so gauges can never drift from the truth."""

    def __init__(self, manager: "Manager", register: "Register"):
        self.manager, self.register = manager, register

    def collect(self):
        states = GaugeMetricFamily("cnet_workloads", "Workloads by state and type",
                                   labels=["state", "type"])
        for (state, wtype), count in sorted(self.manager.count_by_state().items()):
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
