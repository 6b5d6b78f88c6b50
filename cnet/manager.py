"""The Manager: the workload lifecycle and the only writer of workload state.

validate -> reserve -> execute -> track -> stop -> release. Every transition is persisted to the
store and published on the event hub (which feeds the WebSocket and the bus).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .devices import GPU_DEVICES
from .errors import CnetError, Conflict, NotFound
from .events import TO, addressee
from .resources import Resources
from .workload import (
    COMPLETED,
    DELETING,
    ENDED,
    FAILED,
    FROM,
    LIVE,
    PENDING,
    RUNNING,
    STOPPED,
    STOPPING,
    Submission,
    Workload,
    parse_submission,
)

if TYPE_CHECKING:
    from .config import Config
    from .events import EventHub
    from .executors.base import Executor
    from .register import Register
    from .store import Store

log = logging.getLogger(__name__)


class Manager:
    def __init__(self, config: "Config", store: "Store", register: "Register", hub: "EventHub"):
        self.config = config
        self.node_id = config.node_id
        self.store = store
        self.register = register
        self.hub = hub
        self.executors: dict[str, "Executor"] = {}
        self.workloads: dict[str, Workload] = {}
        self.live: dict[str, Workload] = {}     # local workloads pending, running or stopping
        self._stops: dict[str, asyncio.Task] = {}
        self._deletes: dict[str, asyncio.Task] = {}
        self._starting: dict[str, asyncio.Future] = {}
        gpus = getattr(config, "gpus", None)
        if gpus and register.allocated.is_zero():
            register.use_devices(gpus)   # the devices detected or configured, by uuid

    def add_executor(self, executor: "Executor") -> None:
        self.executors[executor.type] = executor

    # -- queries -------------------------------------------------------------------------

    def get(self, workload_id: str) -> Workload:
        wl = self.workloads.get(workload_id)
        if wl is None:
            raise NotFound(f"workload {workload_id} not found")
        return wl

    def list(self, status: str | None = None, wtype: str | None = None) -> list[Workload]:
        return [wl for wl in self.workloads.values()
                if (status is None or wl.status == status) and (wtype is None or wl.type == wtype)]

    async def logs(self, workload_id: str, tail: int) -> str:
        wl = self.get(workload_id)
        return await self.executors[wl.type].logs(wl, tail)

    # -- submission ----------------------------------------------------------------------

    def validate(self, body) -> Submission:
        """Check a request completely (common fields and the type's config) without effects."""
        return self.validate_config(parse_submission(body, self.executors.keys()))

    def validate_config(self, sub: Submission) -> Submission:
        """Check a submission's config with its type's executor; the config as it will run."""
        config = self.executors[sub.type].validate(sub.config)
        return Submission(**{**sub.__dict__, "config": config})

    async def admit(self, sub: Submission, origin: str | None = None,
                    ready_within: float | None = None, upstream: str | None = None) -> Workload:
        """Reserve and start a validated submission on this node (raises if it does not fit).

        ``upstream`` is the neighbour that delegated it here, if one did. With ``ready_within``
        (seconds), a start that takes longer (a service that is slow to
        become healthy) is answered with the workload still ``pending``: it moves to
        ``running``, or to ``failed`` with its reservation released, when the start ends.
        Without it, a failed start leaves nothing: no record, no reservation.
        """
        if sub.id in self.workloads:
            raise Conflict(f"workload id {sub.id} already exists", code="id_conflict")
        try:
            self.executors[sub.type].check_here(sub.config)
        except CnetError as exc:
            exc.details.setdefault("node_id", self.node_id)  # which node said no, when delegated
            raise
        wl = Workload(id=sub.id, name=sub.name, type=sub.type, config=sub.config,
                      requirements=sub.requirements, placement=sub.placement, labels=sub.labels,
                      node_id=self.node_id, origin=origin or self.node_id,
                      runtime={FROM: upstream} if upstream else {})
        # Listed before the reservation, so the broadcast it triggers already counts it.
        self.workloads[wl.id] = self.live[wl.id] = wl
        try:
            self.register.allocate(sub.id, sub.requirements)
        except BaseException:
            del self.workloads[wl.id], self.live[wl.id]
            self.register.release(sub.id)   # whatever failed, no reservation stays behind
            raise
        if sub.requirements.gpu:
            wl.runtime[GPU_DEVICES] = self.register.gpu_devices(sub.id)
        started = asyncio.get_running_loop().create_future()
        self._starting[wl.id] = started
        start: asyncio.Future | None = None
        try:
            self.store.insert_workload(wl.to_row())
            start = asyncio.ensure_future(self.executors[wl.type].start(wl))
            if ready_within is not None:
                await _done_or_late(start, ready_within)
                if not start.done():
                    start.add_done_callback(lambda task: self._started_late(wl, task, started))
                    return wl
            runtime = await start
        except BaseException:
            if start is not None and not start.done():
                start.cancel()
            # Nothing accepted, nothing kept: no record, no reservation.
            self.workloads.pop(wl.id, None)
            self.live.pop(wl.id, None)
            self.register.release(wl.id)
            self.store.delete_workload(wl.id)
            self._starting.pop(wl.id, None)
            started.set_result(None)
            raise
        self._starting.pop(wl.id, None)
        started.set_result(None)
        self._running(wl, runtime)
        return wl

    def _running(self, wl: Workload, runtime: dict) -> None:
        wl.runtime.update(runtime)
        if wl.status == PENDING:  # it may already have ended while starting
            wl.started_at = time.time()
            self._transition(wl, RUNNING, runtime=wl.runtime, started_at=wl.started_at)
        else:
            self.store.update_workload(wl.id, {"runtime": wl.runtime})

    def _started_late(self, wl: Workload, start: asyncio.Future, started: asyncio.Future) -> None:
        """A start that outlived its caller's wait ended: the workload runs, or it failed."""
        self._starting.pop(wl.id, None)
        started.set_result(None)
        if start.cancelled():
            self._finish(wl, FAILED, None, "its start was cancelled (the agent is stopping)")
        elif (exc := start.exception()) is not None:
            reason = exc.message if isinstance(exc, CnetError) else f"{type(exc).__name__}: {exc}"
            log.warning("workload %s failed to start: %s", wl.id, reason)
            self._finish(wl, FAILED, None, f"failed to start: {reason}")
        else:
            self._running(wl, start.result())

    # A data upload is reserved as its bytes arrive (resize), then recorded complete on
    # arrival (record_data) or dropped (release); until it is recorded it is not listed.

    def resize(self, workload_id: str, total: Resources) -> None:
        """Set an unrecorded workload's reservation to ``total`` in one step (see Register)."""
        self.register.resize(workload_id, total)

    def release(self, workload_id: str) -> None:
        """Drop the reservation of a workload that will not be recorded (a failed upload)."""
        self.register.release(workload_id)

    def record_data(self, workload_id: str, name: str, started_at: float, runtime: dict,
                    objects: list[dict]) -> Workload:
        """Record a data upload that arrived complete, with its ``data_objects`` rows.

        Its reservation is trued to the storage its files use (a shrink, never refused); the
        workload row and the object rows are written in one transaction, then it is published.
        """
        if workload_id in self.workloads:
            raise Conflict(f"workload id {workload_id} already exists", code="id_conflict")
        size = sum(o["size"] for o in objects)
        wl = Workload(id=workload_id, name=name, type="data", config={},
                      requirements=Resources(storage=size), node_id=self.node_id,
                      origin=self.node_id, status=COMPLETED, created_at=started_at,
                      started_at=started_at, finished_at=time.time(), exit_code=None,
                      message=f"stored {len(objects)} file(s), {size} bytes", runtime=runtime)
        self.register.resize(workload_id, wl.requirements)
        with self.store.db.atomic():
            self.store.insert_workload(wl.to_row())
            self.store.insert_objects(objects)
        self.workloads[wl.id] = wl
        self._publish(wl)
        return wl

    @staticmethod
    def same_or_conflict(existing: Workload, sub: Submission) -> Workload:
        """A resubmission with a known id: the same spec returns it, another is a conflict."""
        same = (existing.name == sub.name and existing.type == sub.type
                and existing.config == sub.config and existing.requirements == sub.requirements)
        if not same:
            raise Conflict(f"workload id {sub.id} already exists with a different spec",
                           code="id_conflict")
        return existing

    # -- stopping and deleting -----------------------------------------------------------

    async def stop(self, workload_id: str) -> Workload:
        """Stop a live workload; stopping an ended one is a no-op."""
        wl = self.get(workload_id)
        starting = self._starting.get(wl.id)
        if starting is not None:
            await asyncio.shield(starting)
        if wl.status not in LIVE:
            return wl
        task = self._stops.get(wl.id)
        if task is None:
            task = asyncio.ensure_future(self._stop(wl))
            self._stops[wl.id] = task
            task.add_done_callback(lambda _t: self._stops.pop(wl.id, None))
        await asyncio.shield(task)
        return wl

    async def _stop(self, wl: Workload) -> None:
        if wl.status != STOPPING:
            self._transition(wl, STOPPING)
        try:
            await self.executors[wl.type].stop(wl, self.config.stop_grace)
        except CnetError as exc:
            # It may still be running (e.g. its engine is down): keep it and its reservation.
            log.warning("stopping %s failed: %s", wl.id, exc.message)
            if wl.status == STOPPING:
                self._transition(wl, RUNNING, message=f"stop failed: {exc.message}")
            raise
        if wl.status == STOPPING:  # the executor had nothing left to wait for
            self._finish(wl, STOPPED, wl.exit_code, "stopped")

    async def delete(self, workload_id: str) -> None:
        """Stop (if live) and delete a workload; one delete runs per workload, to the end."""
        wl = self.get(workload_id)
        if wl.live:
            await self.stop(workload_id)
        task = self._deletes.get(wl.id)
        if task is None:
            task = self._deletes[wl.id] = asyncio.ensure_future(self._delete(wl))
            task.add_done_callback(lambda _t: self._deletes.pop(wl.id, None))
        await asyncio.shield(task)

    async def _delete(self, wl: Workload) -> None:
        """Crash-safe: ``deleting`` is persisted before anything goes, and its data objects are
        unlisted in the same transaction; a delete cut short is finished at start (recover)."""
        if wl.status != DELETING:
            with self.store.db.atomic():
                self.store.delete_objects(wl.id)
                self._transition(wl, DELETING)
        await self.executors[wl.type].remove(wl)   # if it fails, a retry or a restart ends it
        self.workloads.pop(wl.id, None)
        self.live.pop(wl.id, None)
        self.register.release(wl.id)
        self.store.delete_workload(wl.id)
        self.hub.publish({"type": "workload_deleted", "id": wl.id, "node_id": self.node_id,
                          TO: addressee(wl, self.node_id)})

    # -- executor callbacks (ExecutorHost) -----------------------------------------------

    def ended(self, workload_id: str, *, exit_code: int | None = None,
              message: str | None = None, success: bool | None = None) -> None:
        wl = self.workloads.get(workload_id)
        if wl is None or wl.status in ENDED:
            return
        if wl.status == STOPPING:
            status, message = STOPPED, "stopped on request"
        else:
            ok = success if success is not None else exit_code == 0
            status = COMPLETED if ok else FAILED
        self._finish(wl, status, exit_code, message)

    def updated(self, workload_id: str, runtime: dict | None = None,
                restart_count: int | None = None, message: str | None = None) -> None:
        wl = self.workloads.get(workload_id)
        if wl is None:
            return
        fields: dict = {}
        if runtime:
            wl.runtime.update(runtime)
            fields["runtime"] = wl.runtime
        if restart_count is not None:
            wl.restart_count = fields["restart_count"] = restart_count
        if message is not None:
            wl.message = fields["message"] = message
        if fields:
            wl.version += 1
            self.store.update_workload(wl.id, {**fields, "version": wl.version})
            self._publish(wl)

    # -- recovery ------------------------------------------------------------------------

    def recover(self, records: list[Workload]) -> None:
        """Take this node's workloads after a restart (``records``: all the store held, mirrors
        of workloads elsewhere included and left out); re-adopt the live ones, rebuild
        allocations."""
        adopted = failed = deleting = 0
        for wl in records:
            if wl.node_id != self.node_id:
                continue
            self.workloads[wl.id] = wl
            executor = self.executors.get(wl.type)
            if executor is None:
                continue
            if wl.status in LIVE:
                self.live[wl.id] = wl
            if (getattr(executor, "holds_resources_when_ended", False)
                    and wl.status in (COMPLETED, DELETING)):
                self.register.adopt(wl.id, wl.requirements)   # until its files are gone
            if wl.status == DELETING:
                deleting += 1
                asyncio.ensure_future(self.delete(wl.id)).add_done_callback(
                    lambda task, wid=wl.id: _log_failed_delete(wid, task))
            if wl.status not in LIVE:
                continue
            reason = executor.adopt(wl)
            if reason is not None:
                failed += 1
                self._finish(wl, FAILED, None, reason, release=False)
                continue
            adopted += 1
            self.register.adopt(wl.id, wl.requirements, wl.runtime.get(GPU_DEVICES))
            if wl.requirements.gpu:   # as rebuilt (a recorded device may be gone)
                wl.runtime[GPU_DEVICES] = self.register.gpu_devices(wl.id)
            if wl.status == PENDING:
                wl.started_at = time.time()
                self._transition(wl, RUNNING, runtime=wl.runtime, started_at=wl.started_at)
            elif wl.status == STOPPING:
                asyncio.ensure_future(self.stop(wl.id))
        if adopted or failed or deleting:
            log.info("recovered workloads: %d re-adopted, %d failed while the agent was down, "
                     "%d deletes cut short being finished", adopted, failed, deleting)

    # -- transitions ---------------------------------------------------------------------

    def _finish(self, wl: Workload, status: str, exit_code: int | None, message: str | None,
                release: bool = True) -> None:
        wl.exit_code, wl.message, wl.finished_at = exit_code, message, time.time()
        executor = self.executors.get(wl.type)
        keeps = status == COMPLETED and getattr(executor, "holds_resources_when_ended", False)
        # Out of the live set first: the snapshot the release broadcasts must not still count it.
        self._transition(wl, status, exit_code=exit_code, message=message,
                         finished_at=wl.finished_at, runtime=wl.runtime)
        if release and not keeps:
            self.register.release(wl.id)

    def _transition(self, wl: Workload, status: str, **fields) -> None:
        wl.status = status
        if status in LIVE:
            self.live[wl.id] = wl
        else:
            self.live.pop(wl.id, None)
        wl.version += 1
        self.store.update_workload(wl.id, {"status": status, **fields, "version": wl.version},
                                   transition=status, message=fields.get("message"))
        self._publish(wl)

    def _publish(self, wl: Workload) -> None:
        self.hub.publish({"type": "workload", "workload": wl.to_dict(), TO: addressee(wl, self.node_id)})

    async def close(self) -> None:
        for executor in self.executors.values():
            await executor.close()


def _log_failed_delete(workload_id: str, task: asyncio.Future) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("finishing the delete of %s failed (a DELETE or a restart retries): %r",
                    workload_id, exc)


async def _done_or_late(task: asyncio.Future, within: float) -> None:
    """Wait until ``task`` is done or ``within`` seconds passed, whichever is first (it keeps
    running): ``asyncio.wait({task}, timeout=within)`` without its sets and extra callbacks."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_=None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = loop.call_later(within, wake)
    task.add_done_callback(wake)
    try:
        await woken
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
