"""The container engine's state as ``/api/health`` shows it, without the container executor.

An agent that has run no container workload has not loaded the container executor
(:mod:`cnet.executors.container`); its health still names the engine and says whether it is up.
The probe runs the engine's blocking ``describe`` in a thread of its own (made when there is an
engine socket to ask: a node without one runs no thread for it) and waits for it at most
``HEALTH_TIMEOUT`` seconds: a hung engine makes health answer with the last state seen (or
``unknown``), never slowly. The container executor, once built, shows the same probe's state.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import CnetError
from .container_engine import Engine

__all__ = ["HEALTH_TIMEOUT", "EngineProbe"]

HEALTH_TIMEOUT = 0.8    # /api/health answers quickly even when the engine hangs


class EngineProbe:
    """The engine at ``url`` (None: ``DOCKER_HOST`` or the default socket) and its last state."""

    def __init__(self, url: str | None):
        self.engine = Engine(url)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnet-engine-probe")
        self._probe: asyncio.Future | None = None
        self._health: tuple[float, dict] | None = None  # (monotonic time, last engine state)

    async def health(self) -> dict:
        """The container executor's health before it is loaded: the engine, nothing watched."""
        return {**await self.state(), "watched": 0}

    async def state(self) -> dict:
        """The engine's state; if it is slow to answer, the last state seen (or "unknown")."""
        missing = self.engine.absent()
        if missing is not None:   # no socket: no thread, nothing to wait for
            self._health = (time.monotonic(), {"engine": self.engine.url, "status": "down",
                                               "error": missing.message})
        else:
            if self._probe is None or self._probe.done():
                loop = asyncio.get_running_loop()
                self._probe = loop.run_in_executor(self._pool, self.engine.describe)
                self._probe.add_done_callback(self._probed)
            try:
                await asyncio.wait_for(asyncio.shield(self._probe), timeout=HEALTH_TIMEOUT)
            except Exception:  # a timeout, or the failure _probed has recorded
                pass
        if self._health is None:
            return {"engine": self.engine.url, "status": "unknown",
                    "error": "the engine has not answered yet"}
        state = dict(self._health[1])
        state["checked_ago"] = round(time.monotonic() - self._health[0], 1)
        return state

    def _probed(self, probe: asyncio.Future) -> None:
        if probe.cancelled():
            return
        exc = probe.exception()
        if exc is None:
            state = probe.result()
        else:
            message = exc.message if isinstance(exc, CnetError) else str(exc)
            state = {"engine": self.engine.url, "status": "down", "error": message}
        self._health = (time.monotonic(), state)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        # Closing the client breaks pending engine calls; containers keep running.
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
