"""What every request of the gateway shares: the one bucket, its files, index, keys and owner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.gateway.index import ObjectIndex
from services.gateway.metrics import RequestMetrics
from services.gateway.s3xml import Owner
from services.gateway.sigv4 import Credentials

__all__ = ["SERVER_NAME", "Gateway"]

SERVER_NAME = "cnet-gateway-data"


@dataclass
class Gateway:
    bucket: str
    base_real: str
    index: ObjectIndex
    credentials: Credentials | None = None
    region: str = "us-east-1"
    started: float = 0.0
    owner: Owner = field(default_factory=Owner)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)
