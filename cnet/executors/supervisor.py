"""Supervision of running services: one tick drives every service of an executor (exit watch,
health checks every ``services.health_interval``, restarts with backoff, giving up)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Coroutine

from .health_probe import probe_health
from .launcher import KILL_GRACE, ServiceStartFailed
from .proc import ProcessHandle, describe_exit

if TYPE_CHECKING:
    from .base import ExecutorHost
    from .ports import PortBook

__all__ = ["Service", "ServiceSupervisor"]

log = logging.getLogger(__name__)

UNHEALTHY_AFTER = 3  # failed health checks in a row that make a service unhealthy
RECHECK_AFTER = 5.0  # seconds to the next check after a failed one (at most)
TICK_MAX = 1.0       # the tick runs at least this often while a service waits for a timer

# What a service is doing between ticks.
RUNNING = "running"  # its process runs; ``due`` is the next health check
RESTART = "restart"  # it must be restarted (``reason``): kill what is left, then back off
BACKOFF = "backoff"  # killed; ``due`` is when the restart starts

Probe = Callable[[str, int, float], Awaitable[tuple[bool, str]]]


@dataclass(eq=False)
class Service:
    """One supervised service of one workload."""

    workload_id: str
    config: dict
    host: str
    port: int
    log_path: Path
    handle: ProcessHandle | None = None
    restarts: int = 0
    stopping: bool = False
    phase: str = RUNNING
    due: float = 0.0            # the supervisor's clock time of the next timer
    failures: int = 0           # failed health checks in a row
    healthy: bool = True        # its last health check passed (the record's runtime "healthy")
    reason: str = ""            # why it is being restarted
    task: asyncio.Task | None = None  # the step in flight (a check, a kill, a launch)


class ServiceSupervisor:
    """The services of one executor and the tick that supervises them all.

    ``tick()`` never waits: it looks at each service that has no step in flight, and starts the
    step that is due (a health check, a kill, a restart) as a task. It runs when a timer is due
    (re-armed for the earliest one, at least every ``TICK_MAX`` seconds), at once when a service
    process exits (its pidfd), and when a step ends. With ``autotick=False`` nothing runs by
    itself: a test calls ``tick()`` and ``settle()`` by hand and moves the injected ``clock``.
    """

    def __init__(self, host: "ExecutorHost", ports: "PortBook",
                 launch: Callable[[Service], Awaitable[ProcessHandle]], *,
                 probe: Probe = probe_health, clock: Callable[[], float] = time.monotonic,
                 autotick: bool = True):
        self._host = host
        self._ports = ports
        self._launch = launch
        self._probe = probe
        self._clock = clock
        self._autotick = autotick
        self._services: dict[str, Service] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._services)

    def get(self, workload_id: str) -> Service | None:
        return self._services.get(workload_id)

    def watch(self, svc: Service, handle: ProcessHandle) -> None:
        """Supervise ``svc``, whose process ``handle`` is healthy now."""
        svc.phase, svc.failures = RUNNING, 0
        svc.due = self._clock() + self._host.config.services.health_interval
        self._install(svc, handle)
        self._services[svc.workload_id] = svc
        self._arm(0.0)

    def forget(self, svc: Service) -> None:
        """Stop supervising ``svc`` and release its port."""
        if self._services.get(svc.workload_id) is svc:
            del self._services[svc.workload_id]
        self._ports.release(svc.port, svc.workload_id)

    # -- the tick ------------------------------------------------------------------------

    def tick(self) -> None:
        """Start what is due for each service without a step in flight."""
        now = self._clock()
        for svc in list(self._services.values()):
            if svc.task is not None or svc.stopping:
                continue
            if svc.phase == RUNNING and svc.handle.exited:
                self._needs_restart(svc, f"crashed ({describe_exit(svc.handle.exit_code)})")
            if svc.phase == RESTART:
                self._step(svc, self._kill(svc))
            elif now >= svc.due:
                self._step(svc, self._check(svc) if svc.phase == RUNNING else self._relaunch(svc))
        waiting = [svc.due for svc in self._services.values()
                   if svc.task is None and not svc.stopping]
        if waiting:
            self._arm(min(TICK_MAX, min(waiting) - self._clock()))

    async def settle(self) -> None:
        """Wait until no step is in flight (for driving the tick by hand)."""
        while steps := [svc.task for svc in self._services.values()
                        if svc.task is not None and not svc.task.done()]:
            await asyncio.gather(*steps, return_exceptions=True)
        await asyncio.sleep(0)

    def _arm(self, delay: float) -> None:
        if not self._autotick:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.tick()

    def _step(self, svc: Service, step: Coroutine) -> None:
        task = asyncio.ensure_future(step)
        svc.task = task

        def done(_task: asyncio.Task) -> None:
            if task.cancelled():
                return
            if task.exception() is not None:
                # ``svc.task`` stays set, so the tick leaves this service alone from now on.
                log.error("supervision of service %s stopped", svc.workload_id,
                          exc_info=task.exception())
                return
            svc.task = None
            self._arm(0.0)

        task.add_done_callback(done)

    def _install(self, svc: Service, handle: ProcessHandle) -> None:
        svc.handle = handle

        def exited(_code: int | None) -> None:
            if svc.handle is handle and not svc.stopping:
                self._arm(0.0)  # a crash is acted on at once, not at the next timer

        handle.on_exit(exited)

    # -- the steps -----------------------------------------------------------------------

    def _needs_restart(self, svc: Service, reason: str) -> None:
        log.warning("service %s on port %d %s", svc.workload_id, svc.port, reason)
        svc.phase, svc.reason, svc.failures = RESTART, reason, 0

    async def _check(self, svc: Service) -> None:
        cfg = self._host.config.services
        ok, why = await self._probe(svc.host, svc.port, cfg.health_timeout)
        svc.failures = 0 if ok else svc.failures + 1
        if ok != svc.healthy:   # shown at once: a replica set's endpoint routes around it
            svc.healthy = ok
            self._host.updated(svc.workload_id, runtime={"healthy": ok})
        if svc.failures >= UNHEALTHY_AFTER and not svc.handle.exited:
            self._needs_restart(svc, f"was unhealthy ({why}; {svc.failures} checks in a row)")
            return
        # After a failed check, confirm sooner: a blip (a worker being replaced) heals itself.
        wait = cfg.health_interval if svc.failures == 0 else min(cfg.health_interval, RECHECK_AFTER)
        svc.due = self._clock() + wait

    async def _kill(self, svc: Service) -> None:
        """End what is left of the process; then back off, or give up when out of restarts."""
        cfg = self._host.config.services
        await svc.handle.terminate(KILL_GRACE)
        if svc.restarts < cfg.max_restarts:
            svc.phase = BACKOFF
            svc.due = self._clock() + cfg.restart_backoff * 2 ** svc.restarts
            return
        self.forget(svc)
        self._host.ended(svc.workload_id, exit_code=svc.handle.exit_code, success=False,
                         message=f"the service {svc.reason}; restarted {svc.restarts} times, "
                                 "giving up")

    async def _relaunch(self, svc: Service) -> None:
        cfg = self._host.config.services
        limit = cfg.max_restarts
        svc.restarts += 1
        n = svc.restarts
        try:
            handle = await self._launch(svc)
        except ServiceStartFailed as exc:
            log.warning("service %s: restart %d of %d failed: %s", svc.workload_id, n, limit,
                        exc.reason)
            self._host.updated(svc.workload_id, restart_count=n,
                               message=f"restart {n} of {limit} failed: {exc.reason}")
            svc.phase, svc.reason = RESTART, f"failed to restart ({exc.reason})"
            return
        self._install(svc, handle)
        svc.phase, svc.due = RUNNING, self._clock() + cfg.health_interval
        svc.healthy = True     # the launch waited for its first good health check
        log.info("service %s restarted (%d of %d), pid %d", svc.workload_id, n, limit, handle.pid)
        self._host.updated(svc.workload_id, runtime={"pid": handle.pid, "healthy": True,
                                                    "_start_time": handle.start_time},
                           restart_count=n,
                           message=f"restarted ({n} of {limit}) after the service {svc.reason}")

    # -- stopping ------------------------------------------------------------------------

    async def stop(self, workload_id: str, grace: float) -> Service | None:
        """Stop supervising the service and end its process; the service, if there was one."""
        svc = self._services.get(workload_id)
        if svc is None:
            return None
        svc.stopping = True
        if svc.task is not None:
            svc.task.cancel()
            await asyncio.gather(svc.task, return_exceptions=True)
        await svc.handle.terminate(grace)
        self.forget(svc)
        return svc

    async def close(self) -> None:
        """Stop supervising everything, leaving the processes running (agent shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        services = list(self._services.values())
        for svc in services:
            svc.stopping = True
            if svc.task is not None:
                svc.task.cancel()
        await asyncio.gather(*(svc.task for svc in services if svc.task), return_exceptions=True)
        for svc in services:
            svc.handle.detach()
            self._ports.release(svc.port, svc.workload_id)
        self._services.clear()
