"""Prometheus metrics of one agent: workloads by state, allocations, request latencies.

Written out in the Prometheus text format (version 0.0.4) here: three metric families do not
need prometheus-client, whose import alone is about 2 MB of an idle agent's memory (the
inference services, which export more, still use it).
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Iterable, Protocol

from .resources import KINDS

if TYPE_CHECKING:
    from .register import Register
    from .workload import Workload

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Book(Protocol):
    """Where workload records are kept (the Manager's own, the mirror book)."""

    def list(self) -> list["Workload"]: ...


class _Observations:
    """One histogram's counts and sum for one set of label values."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)    # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class Histogram:
    """Observations in cumulative buckets (``le``: at most the bound), per label values."""

    def __init__(self, name: str, help_text: str, labels: Iterable[str],
                 buckets: Iterable[float]):
        self.name, self.help, self.labelnames = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[tuple[str, ...], _Observations] = {}

    def labels(self, *values: str) -> _Observations:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Observations(self.buckets)
        return series

    def lines(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "histogram")
        for values, series in self._series.items():
            labels = dict(zip(self.labelnames, values))
            total = 0
            for bound, count in zip((*self.buckets, math.inf), series.counts):
                total += count
                yield _sample(f"{self.name}_bucket", {**labels, "le": _value(bound)}, total)
            yield _sample(f"{self.name}_count", labels, total)
            yield _sample(f"{self.name}_sum", labels, series.sum)


class Counter:
    """Counts that only go up, per label values (``name`` ends in ``_total``)."""

    def __init__(self, name: str, help_text: str, labels: Iterable[str]):
        self.name, self.help, self.labelnames = name, help_text, tuple(labels)
        self._counts: dict[tuple[str, ...], float] = {}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self._counts[values] = self._counts.get(values, 0.0) + amount

    def lines(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "counter")
        for values, count in self._counts.items():
            yield _sample(self.name, dict(zip(self.labelnames, values)), count)


def gauge(name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> Iterable[str]:
    yield from _header(name, help_text, "gauge")
    for labels, value in samples:
        yield _sample(name, labels, value)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AgentMetrics:
    def __init__(self, books: Iterable[Book], register: "Register"):
        self.books, self.register = list(books), register
        self.requests = Histogram("cnet_http_request_duration_seconds", "REST request latency",
                                  ["method", "route", "status"], LATENCY_BUCKETS)
        self.submissions = Counter("cnet_workload_submissions_total",
                                   "Workload submissions by type and result", ["type", "result"])

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request. A method outside HTTP's usual ones is counted as ``other``:
        any token is a valid method, and each new label value would be a series kept for
        good (a client sending made-up methods must not grow the agent's memory)."""
        label = method if method in METHODS else "other"
        self.requests.labels(label, route, str(status)).observe(seconds)

    def count_submission(self, wtype: str, result: str) -> None:
        self.submissions.inc(wtype, result)

    def render(self) -> bytes:
        lines = [*self.requests.lines(), *self.submissions.lines(), *self._state()]
        return ("\n".join(lines) + "\n").encode()

    def _state(self) -> Iterable[str]:
        """Read from live state at scrape time, so gauges can never drift from the truth."""
        counts: dict[tuple[str, str], int] = {}
        for book in self.books:
            for wl in book.list():
                counts[(wl.status, wl.type)] = counts.get((wl.status, wl.type), 0) + 1
        yield from gauge("cnet_workloads", "Workloads by state and type",
                         [({"state": state, "type": wtype}, count)
                          for (state, wtype), count in sorted(counts.items())])
        for name, vector in (("capacity", self.register.capacity),
                             ("allocated", self.register.allocated),
                             ("available", self.register.available)):
            yield from gauge(f"cnet_resources_{name}",
                             f"Resources {name} on this node (cpu cores, bytes, gpus)",
                             [({"resource": kind}, getattr(vector, kind)) for kind in KINDS])


def _header(name: str, help_text: str, kind: str) -> Iterable[str]:
    text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    yield f"# HELP {name} {text}"
    yield f"# TYPE {name} {kind}"


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_value(value)}"
    pairs = ",".join(f'{key}="{_escape(str(labels[key]))}"' for key in sorted(labels))
    return f"{name}{{{pairs}}} {_value(value)}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)
