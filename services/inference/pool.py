"""The worker pool: K worker processes, each behind its own REQ socket, supervised by the shim.

A request takes an idle worker (FIFO) or waits in a bounded queue; a full queue is refused at
once. A worker's exit is seen at once through a pidfd on the event loop; the worker is replaced
(with backoff if it keeps failing to load) and a request it was serving is retried once on
another worker. A worker that overruns the request timeout is killed and replaced.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from services.inference import protocol
from services.inference.protocol import PredictParams

__all__ = [
    "PoolError",
    "QueueFull",
    "QueueTimeout",
    "StartupError",
    "WorkerDied",
    "WorkerPool",
    "WorkerSpec",
    "WorkerTimeout",
]

log = logging.getLogger(__name__)

RESPAWN_BACKOFF_MIN = 0.5
RESPAWN_BACKOFF_MAX = 30.0
STOP_GRACE = 5.0


class PoolError(Exception):
    """A request the pool could not serve."""


class QueueFull(PoolError):
    """Every worker is busy and the wait queue is full."""


class QueueTimeout(PoolError):
    """No worker became free within the request timeout."""


class WorkerDied(PoolError):
    """The worker serving the request exited (after the one retry)."""


class WorkerTimeout(PoolError):
    """The worker did not answer within the request timeout; it has been replaced."""


class StartupError(Exception):
    """A worker could not start or load its detector."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of the pool runs: a detector kind and its keyword options."""

    kind: str
    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class Worker:
    """One worker process and the shim-side end of its socket."""

    slot: int
    process: subprocess.Popen[bytes]
    endpoint: str
    socket: zmq.asyncio.Socket
    died: asyncio.Future[int]
    pidfd: int
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self.died.done()


def _source_root() -> str:
    """Directory holding the ``services`` package, so ``python -m`` finds it from any cwd."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerPool:
    """Starts, dispatches to, replaces and stops the workers."""

    def __init__(self, spec: WorkerSpec, size: int, queue_size: int, request_timeout: float,
                 start_timeout: float = 60.0,
                 on_worker_exit: Callable[[int, int], None] | None = None) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self.spec = spec
        self.size = size
        self.queue_size = queue_size
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.on_worker_exit = on_worker_exit
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self._context = zmq.asyncio.Context()
        self._dir = tempfile.mkdtemp(prefix="cnet-inference-")
        self._workers: dict[int, Worker] = {}
        self._idle: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Worker]] = collections.deque()
        self._busy = 0
        self._generation = 0
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()

    # -- status -----------------------------------------------------------------------------

    @property
    def alive(self) -> int:
        return sum(1 for w in self._workers.values() if w.alive and w.ready)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self._busy

    def status(self) -> dict[str, Any]:
        return {
            "total": self.size,
            "alive": self.alive,
            "busy": self._busy,
            "queued": self.queued,
            "queue_size": self.queue_size,
            "restarts": self.restarts,
            "pids": sorted(w.pid for w in self._workers.values() if w.alive and w.ready),
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Start every worker and wait until each has loaded its detector; return its info."""
        try:
            workers = await asyncio.gather(*(self._spawn(slot) for slot in range(self.size)))
        except BaseException:
            await self.close()
            raise
        for worker in workers:
            self._release(worker)
        return self.info

    async def _spawn(self, slot: int) -> Worker:
        loop = asyncio.get_running_loop()
        self._generation += 1
        endpoint = f"ipc://{self._dir}/worker-{slot}-{self._generation}.sock"
        command = [sys.executable, "-m", "services.inference.worker", "--endpoint", endpoint,
                   "--kind", self.spec.kind, "--options", json.dumps(self.spec.options),
                   "--parent-pid", str(os.getpid())]
        env = {**os.environ, **self.spec.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_source_root(), env.get("PYTHONPATH")) if p)
        # fork+exec returns at once; the child is then watched through a pidfd, never waited on
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)  # noqa: ASYNC220
        pidfd = os.pidfd_open(process.pid)
        socket = self._context.socket(zmq.REQ)
        socket.linger = 0
        socket.connect(endpoint)
        worker = Worker(slot, process, endpoint, socket, loop.create_future(), pidfd)
        self._workers[slot] = worker
        loop.add_reader(pidfd, self._on_exit, worker)
        try:
            reply = await self._call(worker, protocol.encode_request(protocol.OP_PING),
                                     self.start_timeout)
        except PoolError as exc:
            self._kill(worker)
            raise StartupError(f"worker did not start: {exc}") from exc
        if not reply["ok"]:
            self._kill(worker)
            raise StartupError(reply["error"]["message"])
        self.info = reply.get("info") or {}
        worker.ready = True
        log.info("worker %d ready (pid %d)", slot, worker.pid)
        return worker

    def _on_exit(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        code = worker.process.wait()
        worker.socket.close(linger=0)
        if worker in self._idle:
            self._idle.remove(worker)
        if not worker.died.done():
            worker.died.set_result(code)
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        if self.on_worker_exit is not None:
            self.on_worker_exit(worker.pid, code)
        if self._closing:
            return
        log.warning("worker %d (pid %d) exited with %s; replacing it", worker.slot, worker.pid, code)
        if worker.ready:
            task = loop.create_task(self._respawn(worker.slot))
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _respawn(self, slot: int) -> None:
        delay = RESPAWN_BACKOFF_MIN
        while not self._closing:
            try:
                worker = await self._spawn(slot)
            except StartupError as exc:
                log.error("replacing worker %d failed: %s; retrying in %.1fs", slot, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESPAWN_BACKOFF_MAX)
                continue
            if self._closing:
                self._kill(worker)
                return
            self.restarts += 1
            self._release(worker)
            return

    def _kill(self, worker: Worker) -> None:
        if worker.alive:
            try:
                worker.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after a grace period) and clean up."""
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        workers = list(self._workers.values())
        for worker in workers:
            if worker.alive:
                worker.process.terminate()
        pending = [w.died for w in workers if w.alive]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_GRACE)
            for worker in workers:
                self._kill(worker)
            if still:
                await asyncio.wait(still, timeout=STOP_GRACE)
        self._context.destroy(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- dispatch ---------------------------------------------------------------------------

    def _release(self, worker: Worker) -> None:
        """Hand a free worker to the oldest waiter, else put it at the back of the idle line."""
        if not worker.alive or self._closing:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _acquire(self, deadline: float) -> Worker:
        while True:
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive:
                    return worker
            if self._closing:
                raise PoolError("service is shutting down")
            if len(self._waiters) >= self.queue_size:
                raise QueueFull(f"all {self.size} workers busy and {self.queue_size} requests queued")
            waiter: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    worker = await waiter
            except (TimeoutError, asyncio.CancelledError) as exc:
                if waiter.done() and not waiter.cancelled():
                    self._release(waiter.result())  # it arrived as we gave up: pass it on
                if isinstance(exc, TimeoutError):
                    raise QueueTimeout("no worker became free in time") from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if worker.alive:
                return worker

    async def _call(self, worker: Worker, frames: list[bytes], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply, the worker's death, or the timeout."""
        await worker.socket.send_multipart(frames, copy=False)
        receive = asyncio.ensure_future(worker.socket.recv_multipart())
        try:
            done, _ = await asyncio.wait({receive, worker.died}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not receive.done():
                receive.cancel()
        if not done:
            raise WorkerTimeout(f"worker {worker.pid} did not answer within {timeout:g}s")
        if receive in done and not receive.cancelled() and receive.exception() is None:
            try:
                return protocol.decode_reply(receive.result())
            except protocol.ProtocolError as exc:
                self._kill(worker)
                raise WorkerDied(f"worker {worker.pid} sent a malformed reply: {exc}") from exc
        # The worker exited (its socket is closed under the pending receive when we see it).
        self._kill(worker)
        code = worker.died.result() if worker.died.done() else "an unknown status"
        raise WorkerDied(f"worker {worker.pid} exited with {code}")

    async def predict(self, params: PredictParams, image: bytes) -> dict[str, Any]:
        """Run one predict on a free worker; retry once if that worker dies mid-request."""
        frames = protocol.encode_request(protocol.OP_PREDICT, params, image)
        try:
            return await self._attempt(frames)
        except WorkerDied as exc:
            log.warning("%s during a request; retrying it on another worker", exc)
            return await self._attempt(frames)

    async def _attempt(self, frames: list[bytes]) -> dict[str, Any]:
        deadline = time.monotonic() + self.request_timeout
        worker = await self._acquire(deadline)
        self._busy += 1
        try:
            reply = await self._call(worker, frames, max(0.1, deadline - time.monotonic()))
        except WorkerDied:
            raise
        except BaseException:  # timeout or cancellation: the REQ socket is mid-request
            self._kill(worker)
            raise
        finally:
            self._busy -= 1
        self._release(worker)
        return reply
