"""The gateway's request counters and their Prometheus text form (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter

__all__ = ["RequestMetrics"]

# Any other method is counted as "other", so a client cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH"})


class RequestMetrics:
    """Answers by method and status code, and the bytes of object data sent."""

    def __init__(self) -> None:
        self.answers: Counter[tuple[str, int]] = Counter()
        self.bytes_sent = 0

    def count(self, method: str | None, status: int) -> None:
        self.answers[(method if method in METHODS else "other", status)] += 1

    def render(self, *, objects: int, uptime: float) -> str:
        lines = ["# HELP cnet_gateway_requests_total Requests answered, by method and status.",
                 "# TYPE cnet_gateway_requests_total counter"]
        for (method, status), number in sorted(self.answers.items()):
            lines.append(f'cnet_gateway_requests_total{{method="{method}",code="{status}"}} '
                         f"{number}")
        lines += ["# HELP cnet_gateway_object_bytes_sent_total Object bytes sent by GET.",
                  "# TYPE cnet_gateway_object_bytes_sent_total counter",
                  f"cnet_gateway_object_bytes_sent_total {self.bytes_sent}",
                  "# HELP cnet_gateway_objects Objects in the bucket's index.",
                  "# TYPE cnet_gateway_objects gauge",
                  f"cnet_gateway_objects {objects}",
                  "# HELP cnet_gateway_uptime_seconds Seconds since the gateway started.",
                  "# TYPE cnet_gateway_uptime_seconds gauge",
                  f"cnet_gateway_uptime_seconds {uptime:.3f}"]
        return "\n".join(lines) + "\n"
