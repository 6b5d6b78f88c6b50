"""OpenCV workloads: a Haar-cascade detection service (``cnet-inference-opencv``)."""

from __future__ import annotations

from ..errors import BadRequest
from .launcher import LaunchSpec
from .service import ServiceExecutor
from .worker_pool import pool_args, validate_pool

__all__ = ["OpenCVExecutor"]

CASCADE_TYPES = ("face", "eye", "smile")


class OpenCVExecutor(ServiceExecutor):
    type = "opencv"
    options = frozenset({"cascade_type", "workers", "threads"})

    def validate_options(self, config: dict) -> dict:
        cascade = config.get("cascade_type", "face")
        if cascade not in CASCADE_TYPES:
            raise BadRequest(f"config.cascade_type: must be one of {', '.join(CASCADE_TYPES)} "
                             f"(got {cascade!r})", code="invalid_field")
        return {"cascade_type": cascade, **validate_pool(config)}

    def launch_spec(self, config: dict) -> LaunchSpec:
        return LaunchSpec("cnet-inference-opencv",
                          ["--cascade", config["cascade_type"], *pool_args(config)], "opencv")
