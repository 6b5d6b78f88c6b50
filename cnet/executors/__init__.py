"""Executors: how each workload type is started, watched, stopped and cleaned up.

``Deferred`` stands in for an executor whose module is imported, and which is built, when a
workload of its type first needs it: a node that never runs a service never loads the service
machinery (supervisor, launcher, health probes) at all, and a node that never runs a container
never loads the container executor (its health shows the engine all the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from ..workload import Workload
    from .base import Executor

__all__ = ["Deferred", "Standby"]


class Standby(Protocol):
    """What answers for an executor not built yet (e.g. the container engine's probe)."""

    async def health(self) -> dict | None: ...

    async def close(self) -> None: ...


class Deferred:
    """An executor of type ``type`` built by ``build()`` on first use.

    Until then ``health`` and ``close`` are the ``standby``'s (an object with both, which the
    executor built takes over), or report nothing and close nothing (what a service executor
    reports anyway); everything else builds it.
    """

    def __init__(self, type_: str, build: Callable[[], "Executor"],
                 standby: "Standby | None" = None):
        self.type = type_
        self._build = build
        self._standby = standby
        self._executor: Executor | None = None

    @property
    def executor(self) -> "Executor":
        if self._executor is None:
            self._executor = self._build()
        return self._executor

    @property
    def built(self) -> bool:
        return self._executor is not None

    @property
    def holds_resources_when_ended(self) -> bool:
        return getattr(self.executor, "holds_resources_when_ended", False)

    def validate(self, config: dict) -> dict:
        return self.executor.validate(config)

    def check_here(self, config: dict) -> None:
        self.executor.check_here(config)

    async def start(self, workload: "Workload") -> dict:
        return await self.executor.start(workload)

    async def stop(self, workload: "Workload", grace: float) -> None:
        await self.executor.stop(workload, grace)

    def adopt(self, workload: "Workload") -> str | None:
        return self.executor.adopt(workload)

    async def logs(self, workload: "Workload", tail: int) -> str:
        return await self.executor.logs(workload, tail)

    async def remove(self, workload: "Workload") -> None:
        await self.executor.remove(workload)

    async def health(self) -> dict | None:
        if self._executor is not None:
            return await self._executor.health()
        return await self._standby.health() if self._standby is not None else None

    async def close(self) -> None:
        if self._executor is not None:
            await self._executor.close()
        elif self._standby is not None:
            await self._standby.close()
