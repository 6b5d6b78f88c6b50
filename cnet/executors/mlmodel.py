"""ML model workloads: the seed's MLModelExecutorDispatcher, one inference service per model.

``model_type`` picks the service program (``yolo`` -> ``cnet-inference-yolo``); the seed's
``tensorflow`` and ``pytorch`` are known but not implemented yet. A relative ``model_path`` is
resolved against the agent's working directory when the workload is submitted; the workload's
config then shows the absolute path, so restarts do not depend on the agent's directory.
Instead of ``model_path``, ``model: {"data_key", "path"}`` names a file of a ``type=data``
upload stored on any node, or ``model_url: "s3://BUCKET/KEY"`` an object of a CNET data gateway:
it is fetched into this node's model cache (:mod:`cnet.model_cache`) when the workload starts,
and the service runs on the cached copy (:mod:`cnet.executors.model_data`).
The speed options are per workload: ``workers``, ``threads`` (ONNX Runtime intra-op threads per
worker) and ``spin`` (let idle intra-op threads spin; the service's default is not to).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..devices import GPU_DEVICES
from ..errors import BadRequest
from ..workload import Workload
from .base import require_str
from .launcher import LaunchSpec, ServiceStartFailed
from .model_data import ModelServiceExecutor, model_options
from .supervisor import Service
from .worker_pool import pool_args, validate_pool

__all__ = ["MLModelExecutor"]


@dataclass(frozen=True)
class _Backend:
    program: str
    log_prefix: str


BACKENDS = {"yolo": _Backend("cnet-inference-yolo", "yolo")}
PROVIDER_UNAVAILABLE = "gpu_provider_unavailable"   # also the service's marker in its log
_NO_PROVIDER = ("the workload asks for a GPU but ONNX Runtime's CUDA execution provider is not "
                "usable here; install the gpu extra (pip install cnet[gpu]) or submit with "
                '"gpu_fallback": "cpu"')
_GPUS = "_gpu_devices"   # the service config key the workload's devices are passed in
NOT_YET = ("tensorflow", "pytorch")


class MLModelExecutor(ModelServiceExecutor):
    type = "mlmodel"
    options = frozenset({"model_type", "model_path", "model", "model_url", "workers", "threads",
                         "spin", "gpu_fallback"})
    cached_model_key = "model_path"   # the service runs on the cached copy

    def validate_options(self, config: dict) -> dict:
        model_type = require_str(config, "model_type")
        if model_type.lower() in NOT_YET:
            raise BadRequest(f"config.model_type: model_type {model_type} is not supported yet "
                             f"(supported: {', '.join(BACKENDS)})", code="model_type_not_supported")
        if model_type.lower() not in BACKENDS:
            raise BadRequest(f"config.model_type: unknown model_type {model_type!r}; expected one of "
                             f"{', '.join([*BACKENDS, *NOT_YET])}", code="unknown_model_type")
        return {"model_type": model_type.lower(), **_model(config),
                **validate_pool(config), **_spin(config), **_gpu_fallback(config)}

    def check_options_here(self, config: dict) -> None:
        if "model_path" in config:
            _check_readable(config["model_path"])
        super().check_options_here(config)

    def launch_spec(self, config: dict) -> LaunchSpec:
        backend = BACKENDS[config["model_type"]]
        # A model named as data: its cached file is filled in by _new_service.
        args = ["--model", config.get("model_path", ""), *pool_args(config)]
        if "spin" in config:
            args.append("--spin" if config["spin"] else "--no-spin")
        if config.get(_GPUS):   # filled in by _new_service
            args += ["--device", ",".join(config[_GPUS])]
            if config.get("gpu_fallback"):
                args += ["--gpu-fallback", config["gpu_fallback"]]
        return LaunchSpec(backend.program, args, backend.log_prefix,
                          gpu_devices=tuple(config.get(_GPUS) or ()))

    # -- starting (a model named as data is fetched first: ModelServiceExecutor) ---------

    async def start(self, workload: Workload) -> dict:
        """Start the service; a GPU workload needs ONNX Runtime's CUDA provider here (a 400
        without it, unless ``gpu_fallback`` is ``cpu``)."""
        fallback = workload.config.get("gpu_fallback")
        if workload.requirements.gpu and fallback != "cpu" and not cuda_provider_installed():
            raise BadRequest(_NO_PROVIDER + " (onnxruntime-gpu is not installed on this node)",
                             code=PROVIDER_UNAVAILABLE)
        try:
            return await super().start(workload)
        except ServiceStartFailed as exc:
            if PROVIDER_UNAVAILABLE in str(exc.details.get("log_tail", "")):
                raise BadRequest(f"{_NO_PROVIDER}: {exc.reason}", code=PROVIDER_UNAVAILABLE,
                                 details=exc.details) from None
            raise

    def _new_service(self, workload: Workload, host: str, port: int) -> Service:
        svc = super()._new_service(workload, host, port)
        if workload.runtime.get(GPU_DEVICES):
            svc.config = {**svc.config, _GPUS: list(workload.runtime[GPU_DEVICES])}
        return svc


def cuda_provider_installed() -> bool:
    """Does this node's ONNX Runtime ship the CUDA execution provider (onnxruntime-gpu)?
    Looked up on disk: the agent never imports ONNX Runtime."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any((Path(where) / "capi").glob("*onnxruntime_providers_cuda*"))
               for where in spec.submodule_search_locations)


def _gpu_fallback(config: dict) -> dict:
    """``gpu_fallback: "cpu"``: run on the CPU where the GPU's provider is not usable."""
    value = config.get("gpu_fallback")
    if value is None:
        return {}
    if value != "cpu":
        raise BadRequest('config.gpu_fallback: must be "cpu" (or left out: fail instead)',
                         code="invalid_field")
    return {"gpu_fallback": value}


def _spin(config: dict) -> dict:
    """The optional ``spin`` flag (ONNX Runtime's ``session.intra_op.allow_spinning``)."""
    value = config.get("spin")
    if value is None:
        return {}
    if not isinstance(value, bool):
        raise BadRequest("config.spin: must be true or false", code="invalid_field")
    return {"spin": value}


def _model(config: dict) -> dict:
    """``model_path`` (a file on the node that runs it), ``model`` or ``model_url`` (data)."""
    return model_options(config, "model_path") or {
        "model_path": _model_path(require_str(config, "model_path"))}


def _model_path(model_path: str) -> str:
    """The model file's absolute path (the file itself is checked where the model runs)."""
    if "\x00" in model_path:
        raise BadRequest("config.model_path: must not contain NUL characters", code="invalid_field")
    return os.path.abspath(os.path.expanduser(model_path))


def _check_readable(model_path: str) -> None:
    """A 400 naming what is wrong unless ``model_path`` is a readable file on this node."""
    path = Path(model_path)
    if not path.exists():
        raise BadRequest(f"config.model_path: {model_path}: no such file", code="model_not_found")
    if not path.is_file():
        raise BadRequest(f"config.model_path: {model_path} is not a file", code="model_not_found")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise BadRequest(f"config.model_path: {model_path}: cannot read ({exc.strerror})",
                         code="model_unreadable") from None
