"""OpenCV workloads: a Haar-cascade detection service (``cnet-inference-opencv``).

``cascade_type`` picks a cascade bundled with OpenCV (face, eye, smile). A custom cascade file
may be named as data instead, ``model: {"data_key", "path"}`` or ``model_url:
"s3://BUCKET/KEY"`` (:mod:`cnet.executors.model_data`): it is fetched into this node's model
cache when the workload starts and the service loads the cached copy; ``cascade_type`` then
gives its detection settings and the class name of its detections.
"""

from __future__ import annotations

from ..errors import BadRequest
from .launcher import LaunchSpec
from .model_data import ModelServiceExecutor, model_options
from .worker_pool import pool_args, validate_pool

__all__ = ["OpenCVExecutor"]

CASCADE_TYPES = ("face", "eye", "smile")
_FILE = "_cascade_file"   # the service config key the cached cascade file is passed in


class OpenCVExecutor(ModelServiceExecutor):
    type = "opencv"
    options = frozenset({"cascade_type", "model", "model_url", "workers", "threads"})
    cached_model_key = _FILE

    def validate_options(self, config: dict) -> dict:
        cascade = config.get("cascade_type", "face")
        if cascade not in CASCADE_TYPES:
            raise BadRequest(f"config.cascade_type: must be one of {', '.join(CASCADE_TYPES)} "
                             f"(got {cascade!r})", code="invalid_field")
        return {"cascade_type": cascade, **model_options(config, None), **validate_pool(config)}

    def launch_spec(self, config: dict) -> LaunchSpec:
        args = ["--cascade", config["cascade_type"], *pool_args(config)]
        if config.get(_FILE):   # filled in by _new_service
            args += ["--cascade-file", config[_FILE]]
        return LaunchSpec("cnet-inference-opencv", args, "opencv")
