"""Service models named as data, for the service executors that run a model file (mlmodel,
opencv): ``model: {"data_key", "path"}`` (a file of a ``type=data`` upload) or ``model_url:
"s3://BUCKET/KEY"`` (an object of a CNET data gateway), anywhere in the tree.

``model_options`` checks the config (one way of naming the model); ``DataModels`` fetches the
named model into this node's model cache (:mod:`cnet.model_cache`) when the workload starts,
holds the entry while it runs (and again after an agent restart) and lets it go after.
``ModelServiceExecutor`` is the service executor that does so, handing the service the cached
file's path in its config key ``cached_model_key``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, ClassVar

from ..data_locator import model_ref, model_source, model_url
from ..errors import BadRequest, Unavailable
from ..workload import Workload
from .service import ServiceExecutor
from .supervisor import Service

if TYPE_CHECKING:
    from ..model_cache import ModelCache

__all__ = ["DataModels", "ModelServiceExecutor", "model_options"]

DATA_FIELDS = ("model", "model_url")


def model_options(config: dict, local: str | None) -> dict:
    """The one field naming the model: ``local`` (a path on the node that runs it, checked by
    the caller; None if the type has none), ``model`` or ``model_url``. Empty when none is
    given and ``local`` is None (the type has a default)."""
    given = [k for k in (local, *DATA_FIELDS) if k is not None and k in config]
    if len(given) > 1:
        raise BadRequest(f"config: {' or '.join(given)}, not both", code="invalid_field")
    if "model" in given:
        return {"model": model_ref(config["model"]).args()}
    if "model_url" in given:
        ref = model_url(config["model_url"])
        return {"model_url": ref.key}
    return {}


class DataModels:
    """The cached model files of one executor's workloads (None cache: models as data refused)."""

    def __init__(self, cache: "ModelCache | None"):
        self.cache = cache

    @staticmethod
    def named(config: dict) -> bool:
        return any(k in config for k in DATA_FIELDS)

    def check_here(self, config: dict) -> None:
        if self.named(config) and self.cache is None:
            raise Unavailable("config.model: this node has no model cache", code="model_not_found")

    async def start(self, workload: Workload,
                    start: Callable[[Workload], Awaitable[dict]]) -> dict:
        """``start`` the service once its model (if named as data) is in the cache."""
        source = model_source(workload.config)
        if source is None or self.cache is None:
            return await start(workload)
        entry = await self.cache.acquire(workload.id, source)
        try:
            runtime = await start(workload)
        except BaseException:
            self.cache.release(workload.id)
            raise
        return {**runtime, "model_sha256": entry.sha256, "model_file": str(entry.path)}

    def adopt(self, workload: Workload, adopt: Callable[[Workload], str | None]) -> str | None:
        """After an agent restart: hold the entry again while the service is adopted."""
        if self.named(workload.config) and self.cache is not None:
            self.cache.adopt(workload.id, workload.runtime.get("model_sha256"))
        reason = adopt(workload)
        if reason is not None:
            self.release(workload)
        return reason

    def file(self, workload: Workload) -> Path | None:
        """The cached file the service runs on, if its model is named as data."""
        if not self.named(workload.config) or self.cache is None:
            return None
        return self.cache.path_for(workload.id)

    def release(self, workload: Workload) -> None:
        if self.cache is not None:
            self.cache.release(workload.id)


class ModelServiceExecutor(ServiceExecutor):
    """A service executor whose model may be named as data (``model``, ``model_url``)."""

    cached_model_key: ClassVar[str] = ""   # the service config key the cached file goes in

    def __init__(self, host, *, ports, models: "ModelCache | None" = None):
        super().__init__(host, ports=ports)
        self.models = DataModels(models)

    def check_options_here(self, config: dict) -> None:
        self.models.check_here(config)

    async def start(self, workload: Workload) -> dict:
        return await self.models.start(workload, super().start)

    def adopt(self, workload: Workload) -> str | None:
        return self.models.adopt(workload, super().adopt)

    def _new_service(self, workload: Workload, host: str, port: int) -> Service:
        svc = super()._new_service(workload, host, port)
        cached = self.models.file(workload)
        if cached is not None:
            svc.config = {**svc.config, self.cached_model_key: str(cached)}
        return svc

    async def remove(self, workload: Workload) -> None:
        self.models.release(workload)
        await super().remove(workload)
