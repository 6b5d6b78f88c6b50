"""Container workloads: local images run through the Docker Engine API (Docker itself, or
Podman's Docker-compatible service), with the blocking ``docker`` SDK kept off the event loop.

Every engine call runs in a small thread pool with a timeout; each running container is
watched by one daemon thread blocked in the engine's ``wait`` call, which reports the exit back
on the event loop. The SDK is imported and the client created on first use (``container_engine``),
so an agent without an engine starts (and stays small) and reports the engine as down in
``/api/health`` (:mod:`.engine_probe`, which answers for the engine before this is loaded).
The config checks live in ``container_config``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ..devices import GPU_DEVICES
from ..errors import BadRequest, CnetError, NotFound, Unavailable
from ..workload import Workload
from .base import Executor, ExecutorHost
from .container_engine import CALL_TIMEOUT, describe_exit
from .engine_probe import EngineProbe
from .health_probe import url_host
from .proc import gpu_env

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

__all__ = ["ContainerExecutor", "LABEL_NODE", "LABEL_WORKLOAD"]

log = logging.getLogger(__name__)

LABEL_WORKLOAD = "cnet.workload_id"
LABEL_NODE = "cnet.node_id"
LABEL_NAME = "cnet.workload_name"

LOGS_TIMEOUT = 5.0      # the logs handler is synchronous: never hold the loop longer than this
RETRY_MAX = 30.0        # longest pause between attempts to re-watch a container
MIN_MEMORY_LIMIT = 6 * 1024 * 1024  # engines refuse smaller memory limits
POOL_SIZE = 8
NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES"   # read by the NVIDIA container runtime

T = TypeVar("T")


class ContainerExecutor(Executor):
    """``type: container``: one engine container per workload, labelled with its id."""

    type = "container"

    def __init__(self, host: ExecutorHost, probe: EngineProbe | None = None):
        super().__init__(host)
        self.probe = probe or EngineProbe(host.config.container_engine_url)
        self.engine = self.probe.engine
        self.node_id: str = host.config.node_id
        self._pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="cnet-engine")
        self._watches: dict[str, asyncio.Event] = {}
        self._closed = threading.Event()
        self._limits_rejected: str | None = None  # why the engine refused limits, once it has

    # -- checks --------------------------------------------------------------------------

    def validate(self, config: dict) -> dict:
        from .container_config import validate_config  # noqa: PLC0415 -- lazy: first container

        return validate_config(config)

    def check_here(self, config: dict) -> None:
        for volume in config.get("volumes", []):
            host = volume.split(":")[0]
            if not Path(host).exists():
                raise BadRequest(f"config.volumes: {host} does not exist on this node",
                                 code="invalid_field")

    # -- running -------------------------------------------------------------------------

    async def start(self, workload: Workload) -> dict:
        abandoned = threading.Event()
        try:
            runtime = await self._call(self._create_and_start, workload, abandoned)
        except Unavailable:
            # The engine call timed out but may still finish in its thread: whichever of the
            # two comes second removes the container, so nothing is left running unaccounted.
            abandoned.set()
            self._pool.submit(self._remove_quietly, workload.id)
            raise
        self._watch(workload.id, runtime["container_id"])
        return runtime

    def _create_and_start(self, workload: Workload, abandoned: threading.Event) -> dict:
        """Blocking: check the image, create and start the container, return runtime facts."""
        import docker.errors

        client = self.engine.client()
        config = workload.config
        image = config["image"]
        with self.engine.translated(f"looking up image {image}"):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise BadRequest(f"config.image: image {image} not found locally; load or pull it "
                                 "on this node first", code="image_not_found") from None
        limits, note = self._limits(workload)
        try:
            container = self._run(client, workload, limits)
        except CnetError as exc:
            if not limits or not _about_limits(exc.message):
                raise
            self._limits_rejected = exc.message
            log.warning("container engine at %s refused resource limits for %s; running it "
                        "without them: %s", self.engine.url, workload.id, exc.message)
            container = self._run(client, workload, {})
            note = f"not enforced: the engine refused them ({exc.message})"
        try:
            with self.engine.translated("inspecting the new container"):
                container.reload()
            if abandoned.is_set():
                raise Unavailable("the start was abandoned after a timeout", code="engine_unavailable")
        except BaseException:
            self._remove_quietly(workload.id, container.id)
            raise
        ports = _host_ports(container.attrs)
        runtime = {"container_id": container.id, "container_name": container.name,
                   "image": image, "limits": note}
        if ports:
            runtime["ports"] = ports
            tcp = [port for inside, port in ports.items() if inside.endswith("/tcp") and port]
            if tcp:
                # Published on every interface by default: reached at this node's address.
                runtime["endpoint"] = f"http://{url_host(self.host.config.advertise)}:{tcp[0]}"
        return runtime

    def _limits(self, workload: Workload) -> tuple[dict, str]:
        """Engine limits for the declared requirements, and a note on what is enforced."""
        req = workload.requirements
        if self._limits_rejected is not None:
            return {}, f"not enforced: the engine refused them earlier ({self._limits_rejected})"
        limits: dict[str, int] = {}
        if req.cpu > 0:
            cpu = min(req.cpu, self.engine.cpus() or req.cpu)
            limits["nano_cpus"] = max(1, int(cpu * 1e9))
        if req.memory >= MIN_MEMORY_LIMIT:
            limits["mem_limit"] = req.memory
        if not limits:
            return {}, "none requested"
        shown = []
        if "nano_cpus" in limits:
            shown.append(f"cpu {limits['nano_cpus'] / 1e9:g}")
        if "mem_limit" in limits:
            shown.append(f"memory {limits['mem_limit']} bytes")
        return limits, "enforced: " + ", ".join(shown)

    def _run(self, client: "DockerClient", workload: Workload, limits: dict) -> "Container":
        """Blocking: create and start; a container that fails to start is removed again."""
        config = workload.config
        command = [*config.get("command", []), *config.get("args", [])]
        ports = {inside: host for inside, host in config.get("ports", {}).items()}
        gpus = workload.runtime.get(GPU_DEVICES, [])
        doing = f"creating a container from {config['image']}"
        if gpus:
            doing += f" with GPUs {', '.join(gpus)}"
        with self.engine.translated(doing):
            container = client.containers.create(
                config["image"], command=command or None,
                environment={**config.get("env", {}), **_gpu_env(gpus)},
                ports=ports or None, volumes=config.get("volumes") or None,
                working_dir=config.get("working_dir"), detach=True, stdin_open=False, tty=False,
                labels={LABEL_WORKLOAD: workload.id, LABEL_NODE: self.node_id,
                        LABEL_NAME: workload.name[:200]},
                device_requests=_device_requests(gpus), **limits)
        try:
            with self.engine.translated(f"starting container {container.short_id}"):
                container.start()
        except BaseException:
            self._remove_quietly(workload.id, container.id)
            raise
        return container

    # -- watching ------------------------------------------------------------------------

    def _watch(self, workload_id: str, container_id: str | None) -> None:
        """Wait for the container's exit in a daemon thread; report it on the loop."""
        loop = asyncio.get_running_loop()
        self._watches[workload_id] = asyncio.Event()
        threading.Thread(target=self._wait_exit, args=(loop, workload_id, container_id),
                         name=f"cnet-wait-{workload_id}", daemon=True).start()

    def _wait_exit(self, loop: asyncio.AbstractEventLoop, workload_id: str,
                   container_id: str | None) -> None:
        """Thread: block in the engine's wait until the container ends, surviving engine restarts."""
        delay = 1.0
        while not self._closed.is_set():
            try:
                if container_id is None:
                    container_id = self._find(loop, workload_id)
                    if container_id is None:
                        return
                code, message = self._wait_blocking(container_id)
                self._deliver(loop, workload_id, code, message, None)
                return
            except NotFound:
                self._deliver(loop, workload_id, None,
                              f"container {container_id[:12]} no longer exists (removed "
                              "outside CNET or while the agent was down)", False)
                return
            except CnetError as exc:
                if self._closed.is_set():
                    return
                log.warning("watching container of %s: %s; retrying in %.0f s",
                            workload_id, exc.message, delay)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX)

    def _find(self, loop: asyncio.AbstractEventLoop, workload_id: str) -> str | None:
        """Thread: the container of a workload whose id was never recorded (agent crash)."""
        found = self._labelled(workload_id)
        if not found:
            self._deliver(loop, workload_id, None,
                          "the agent stopped before the container was created", False)
            return None
        container = found[0]
        if container.status == "created":
            self._deliver(loop, workload_id, None,
                          "the agent stopped before the container was started", False)
            return None
        self._call_on_loop(loop, self.host.updated, workload_id,
                           {"container_id": container.id, "container_name": container.name})
        return container.id

    def _wait_blocking(self, container_id: str) -> tuple[int | None, str]:
        client = self.engine.client()
        with self.engine.translated(f"waiting for container {container_id[:12]}"):
            result = client.api.wait(container_id, timeout=None)
        code = result.get("StatusCode")
        state: dict = {}
        try:
            with self.engine.translated("inspecting the ended container"):
                state = client.api.inspect_container(container_id).get("State") or {}
        except CnetError:
            pass  # removed already: the exit code is all we know
        return code, describe_exit(code, state)

    def _deliver(self, loop: asyncio.AbstractEventLoop, workload_id: str, code: int | None,
                 message: str, success: bool | None) -> None:
        self._call_on_loop(loop, self._ended, workload_id, code, message, success)

    def _call_on_loop(self, loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
        if self._closed.is_set():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the agent is gone
            pass

    def _ended(self, workload_id: str, code: int | None, message: str,
               success: bool | None) -> None:
        done = self._watches.pop(workload_id, None)
        if done is not None:
            done.set()
        self.host.ended(workload_id, exit_code=code, message=message, success=success)

    # -- stopping, adopting, logs, removal -----------------------------------------------

    async def stop(self, workload: Workload, grace: float) -> None:
        seconds = math.ceil(workload.config.get("stop_grace", grace))
        try:
            await self._call(self._stop_blocking, workload.id, workload.runtime.get("container_id"),
                             seconds, timeout=seconds + CALL_TIMEOUT * 2)
        except NotFound:
            return  # already gone: the watcher reports it
        done = self._watches.get(workload.id)
        if done is not None:
            try:
                await asyncio.wait_for(done.wait(), timeout=CALL_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("container of %s stopped, but its exit was not reported", workload.id)

    def _stop_blocking(self, workload_id: str, container_id: str | None, seconds: int) -> None:
        """Blocking: stop (SIGTERM, SIGKILL after ``seconds``) the workload's container; found
        by its label if the agent stopped before recording its id."""
        client = self.engine.client()
        ids = [container_id] if container_id else [c.id for c in self._labelled(workload_id)]
        for cid in ids:
            with self.engine.translated(f"stopping container {cid[:12]}"):
                client.api.stop(cid, timeout=seconds)

    def adopt(self, workload: Workload) -> str | None:
        # No engine I/O here (the agent is starting): the watcher finds out in the background
        # whether the container still runs, ended (its exit code) or vanished (failed).
        self._watch(workload.id, workload.runtime.get("container_id"))
        return None

    async def logs(self, workload: Workload, tail: int) -> str:
        """The engine's log tail, read off the event loop (a hung engine blocks nothing)."""
        container_id = workload.runtime.get("container_id")
        if container_id is None or tail <= 0:
            return ""
        try:
            return await self._call(self._logs_blocking, container_id, tail, timeout=LOGS_TIMEOUT)
        except NotFound:
            raise NotFound(f"container {container_id[:12]} of workload {workload.id} no longer "
                           "exists; its logs are gone", code="container_not_found") from None

    def _logs_blocking(self, container_id: str, tail: int) -> str:
        client = self.engine.client()
        with self.engine.translated(f"reading the logs of container {container_id[:12]}"):
            data = client.api.logs(container_id, stdout=True, stderr=True, tail=tail)
        return data.decode("utf-8", errors="replace")

    async def remove(self, workload: Workload) -> None:
        await self._call(self._remove_blocking, workload.id, workload.runtime.get("container_id"))

    def _labelled(self, workload_id: str) -> list["Container"]:
        client = self.engine.client()
        with self.engine.translated("listing containers"):
            return client.containers.list(all=True, filters={"label": [
                f"{LABEL_WORKLOAD}={workload_id}", f"{LABEL_NODE}={self.node_id}"]})

    def _remove_blocking(self, workload_id: str, container_id: str | None = None) -> None:
        """Blocking: remove the workload's container(s), running or not."""
        client = self.engine.client()
        ids = {c.id for c in self._labelled(workload_id)}
        if container_id:
            ids.add(container_id)
        for cid in ids:
            try:
                with self.engine.translated(f"removing container {cid[:12]}"):
                    client.api.remove_container(cid, force=True)
            except NotFound:
                pass

    def _remove_quietly(self, workload_id: str, container_id: str | None = None) -> None:
        try:
            self._remove_blocking(workload_id, container_id)
        except CnetError as exc:
            log.warning("could not remove the container of %s: %s", workload_id, exc.message)

    # -- engine health and plumbing ------------------------------------------------------

    async def health(self) -> dict:
        """The engine's state (:class:`EngineProbe`), the containers watched, the limits."""
        state = await self.probe.state()
        state["watched"] = len(self._watches)
        if self._limits_rejected is not None:
            state["limits"] = f"not enforced ({self._limits_rejected})"
        return state

    async def _call(self, fn: Callable[..., T], *args: Any, timeout: float = CALL_TIMEOUT * 2) -> T:
        """Run a blocking engine call in the pool; Unavailable if it does not finish in time."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, functools.partial(fn, *args)), timeout=timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"container engine at {self.engine.url} did not answer within "
                              f"{timeout:g} s", code="engine_unavailable") from None

    async def close(self) -> None:
        self._closed.set()
        self._watches.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.probe.close()   # closing the client breaks the watchers' pending waits


def _gpu_env(gpus: list[str]) -> dict[str, str]:
    """What the container sees of its GPUs: exactly its devices, for CUDA and for the NVIDIA
    container runtime; none at all without (``void``: not even an image's ``all``)."""
    return {**gpu_env(gpus), NVIDIA_ENV: ",".join(gpus) if gpus else "void"}


def _device_requests(gpus: list[str]) -> list | None:
    """``HostConfig.DeviceRequests`` giving the container its GPUs by uuid (None: no GPU)."""
    if not gpus:
        return None
    from docker.types import DeviceRequest  # noqa: PLC0415 -- the SDK is imported on first use

    return [DeviceRequest(driver="nvidia", device_ids=list(gpus), capabilities=[["gpu"]])]


def _host_ports(attrs: dict) -> dict[str, int | None]:
    """``NetworkSettings.Ports`` of an inspected container -> ``{"80/tcp": 18080}``."""
    out: dict[str, int | None] = {}
    for inside, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port = None
        for binding in bindings or []:
            if str(binding.get("HostPort") or "").isdigit():
                port = int(binding["HostPort"])
                break
        out[inside] = port
    return out


def _about_limits(message: str) -> bool:
    """Does an engine error say it cannot apply cpu or memory limits?"""
    text = message.lower()
    return any(s in text for s in ("cgroup", "memory limit", "nanocpu", "cpu quota", "cpu period",
                                   "cpu shares", "cpus", "memory.limit", "swap"))
