"""The worker-pool options of the inference services: ``workers`` and ``threads``."""

from __future__ import annotations

from ..errors import BadRequest

__all__ = ["MAX_THREADS", "MAX_WORKERS", "pool_args", "validate_pool"]

MAX_WORKERS = 64
MAX_THREADS = 256


def validate_pool(config: dict) -> dict:
    """The optional ``workers`` and ``threads`` counts of an inference service."""
    out = {}
    for key, high in (("workers", MAX_WORKERS), ("threads", MAX_THREADS)):
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise BadRequest(f"config.{key}: must be a whole number, 1..{high}",
                             code="invalid_field")
        out[key] = value
    return out


def pool_args(config: dict) -> list[str]:
    """``--workers K --threads T`` for what the workload's config sets."""
    return [arg for key in ("workers", "threads") if key in config
            for arg in (f"--{key}", str(config[key]))]
