"""Prometheus metrics of one inference service, in a registry of its own."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.inference.pool import WorkerPool

__all__ = ["ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """Request counts and latencies, detections, and live views of the worker pool."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("inference_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("inference_request_seconds", "POST /predict latency",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.worker_seconds = Histogram("inference_worker_seconds",
                                        "decode + inference time inside a worker",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.detections = Counter("inference_detections", "objects returned by /predict",
                                  registry=self.registry)
        self.worker_exits = Counter("inference_worker_exits", "worker processes that exited",
                                    registry=self.registry)
        self._workers_alive = Gauge("inference_workers_alive", "workers ready to serve",
                                    registry=self.registry)
        self._workers_busy = Gauge("inference_workers_busy", "workers serving a request",
                                   registry=self.registry)
        self._queued = Gauge("inference_queue_depth", "requests waiting for a worker",
                             registry=self.registry)

    def watch(self, pool: WorkerPool) -> None:
        """Read the pool's gauges at scrape time."""
        self._workers_alive.set_function(lambda: pool.alive)
        self._workers_busy.set_function(lambda: pool.busy)
        self._queued.set_function(lambda: pool.queued)

    def on_worker_exit(self, pid: int, code: int) -> None:
        self.worker_exits.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
