"""The service supervisor: long-running HTTP services (inference shims, the S3 gateway).

``ServiceExecutor`` is the seed's ServiceExecutor (``endpoint`` and ``health_check`` beside the
executor contract). A subclass says which program to run with which arguments; this module
picks the port, starts the program in its own process group with its output in
``<log_dir>/<kind>_service_<port>.log``, waits until ``GET /health`` answers 200, and then
supervises it with one asyncio task per service: a crash is seen at once (pidfd exit watch), a
health check runs every ``services.health_interval`` seconds (a service is unhealthy after
``UNHEALTHY_AFTER`` failed checks in a row), and a crashed or unhealthy service is restarted on
the same port at most ``services.max_restarts`` times over the workload's life (backoff
``restart_backoff * 2**n``) before the workload is ended as failed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import BadRequest, CnetError, Conflict, InsufficientResources, Unavailable
from ..workload import Workload
from . import logfile
from .base import Executor, ExecutorHost, require_str
from .proc import WORKLOAD_ENV, ProcessHandle, describe_exit

__all__ = ["BIN_DIR_ENV", "LaunchSpec", "ServiceExecutor", "ServiceStartFailed", "find_program",
           "pool_args", "probe_health", "validate_pool"]

log = logging.getLogger(__name__)

BIN_DIR_ENV = "CNET_SERVICE_BIN_DIR"  # a directory searched first for the service programs
KILL_GRACE = 2.0                     # SIGTERM -> SIGKILL delay when the supervisor kills a service
UNHEALTHY_AFTER = 3                  # failed health checks in a row that make a service unhealthy
RECHECK_AFTER = 5.0                  # seconds to the next check after a failed one (at most)
READY_POLL = 0.1                     # seconds between /health probes while a service starts
START_ATTEMPTS = 3                   # tries with a fresh port when an auto-picked port was taken
LOG_TAIL_LINES = 20
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ServiceStartFailed(CnetError):
    """A service did not become healthy; ``reason`` is the short cause, the message adds the log."""

    status = 500
    code = "service_start_failed"

    def __init__(self, reason: str, log_path: Path, log_tail: str):
        text = f"{reason}; the log {log_path} ends with:\n{log_tail}" if log_tail.strip() \
            else f"{reason}; the log {log_path} is empty"
        super().__init__(text, details={"log_path": str(log_path), "log_tail": log_tail})
        self.reason = reason


@dataclass(frozen=True)
class LaunchSpec:
    """What a subclass contributes: the program, its own arguments and the log file's prefix."""

    program: str          # console script name, e.g. "cnet-inference-yolo"
    args: list[str]       # arguments before --port/--host
    log_prefix: str       # "yolo" -> yolo_service_<port>.log


@dataclass(eq=False)
class _Service:
    """One supervised service of one workload."""

    workload_id: str
    config: dict
    host: str
    port: int
    log_path: Path
    handle: ProcessHandle | None = None
    restarts: int = 0
    stopping: bool = False
    crashed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class _PortBook:
    """Ports held by the supervised services of this process (ports are machine-wide)."""

    def __init__(self) -> None:
        self._holders: dict[int, str] = {}
        self._cursor: int | None = None

    def holder(self, port: int) -> str | None:
        return self._holders.get(port)

    def claim(self, port: int, workload_id: str) -> None:
        holder = self._holders.get(port)
        if holder is not None and holder != workload_id:
            raise Conflict(f"config.service_port: port {port} is used by service workload {holder}",
                           code="port_in_use")
        self._holders[port] = workload_id

    def release(self, port: int, workload_id: str) -> None:
        if self._holders.get(port) == workload_id:
            del self._holders[port]

    def pick(self, host: str, first: int, last: int, workload_id: str) -> int:
        """Claim a free port of ``first..last``, round-robin so a just-freed port rests a while."""
        size = last - first + 1
        start = first if self._cursor is None or not first <= self._cursor <= last else self._cursor
        for i in range(size):
            port = first + (start - first + i) % size
            if port in self._holders or port_problem(host, port) is not None:
                continue
            self._holders[port] = workload_id
            self._cursor = port + 1
            return port
        raise InsufficientResources(f"no free port left in services.port_range {first}-{last}",
                                    code="no_free_port")


_PORTS = _PortBook()


def port_problem(host: str, port: int) -> OSError | None:
    """Try to bind ``host:port`` as the service will (SO_REUSEADDR); the error if it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host} ({exc.strerror})")
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return exc
    return None


MAX_WORKERS = 64
MAX_THREADS = 256


def validate_pool(config: dict) -> dict:
    """The optional ``workers`` and ``threads`` counts of an inference service."""
    out = {}
    for key, high in (("workers", MAX_WORKERS), ("threads", MAX_THREADS)):
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise BadRequest(f"config.{key}: must be a whole number, 1..{high}",
                             code="invalid_field")
        out[key] = value
    return out


def pool_args(config: dict) -> list[str]:
    """``--workers K --threads T`` for what the workload's config sets."""
    return [arg for key in ("workers", "threads") if key in config
            for arg in (f"--{key}", str(config[key]))]


def find_program(name: str) -> str | None:
    """``$CNET_SERVICE_BIN_DIR/name``, else next to this Python (same venv), else on PATH."""
    dirs = [os.environ.get(BIN_DIR_ENV), os.path.dirname(sys.executable)]
    for directory in dirs:
        if directory:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return shutil.which(name)


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


async def probe_health(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """``GET /health`` on ``host:port``: (True, "") on 200, else (False, why)."""
    try:
        return await asyncio.wait_for(_get_health(host, port), timeout)
    except asyncio.TimeoutError:
        return False, f"/health did not answer within {timeout:g}s"
    except OSError as exc:
        return False, f"cannot connect to {host}:{port} ({exc.strerror or exc})"


async def _get_health(host: str, port: int) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /health HTTP/1.1\r\nHost: {_url_host(host)}:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        # Drain a little of the answer so the server does not write into a closed socket.
        await reader.read(64 * 1024)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "/health did not answer HTTP"
    code = int(parts[1])
    return (True, "") if code == 200 else (False, f"/health answered {code}")


class ServiceExecutor(Executor):
    """Base of the service workload types; subclasses implement ``validate_options`` and
    ``launch_spec``. Config fields every service has: ``service_port``, ``service_host``."""

    options: ClassVar[frozenset[str]] = frozenset()  # the subclass's own config fields

    def __init__(self, host: ExecutorHost):
        super().__init__(host)
        self._services: dict[str, _Service] = {}

    # -- what subclasses provide ---------------------------------------------------------

    def validate_options(self, config: dict) -> dict:
        """Check and normalise the type's own fields (``options``); raise BadRequest."""
        return {}

    def check_options_here(self, config: dict) -> None:
        """Check the type's own (validated) fields against this node; raise BadRequest."""

    def launch_spec(self, config: dict) -> LaunchSpec:
        raise NotImplementedError

    # -- validation ----------------------------------------------------------------------

    def validate(self, config: dict) -> dict:
        unknown = sorted(set(config) - {"service_port", "service_host"} - self.options)
        if unknown:
            raise BadRequest(f"config: unknown field(s) for {self.type}: {', '.join(unknown)}",
                             code="invalid_field")
        out = self.validate_options(config)
        host = require_str(config, "service_host", required=False, default="127.0.0.1")
        if any(c.isspace() or c == "\x00" for c in host):
            raise BadRequest("config.service_host: must be a host name or address",
                             code="invalid_field")
        port = config.get("service_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise BadRequest("config.service_port: must be a whole number, 1..65535",
                             code="invalid_field")
        out["service_host"] = host
        if port is not None:
            out["service_port"] = port
        return out

    def check_here(self, config: dict) -> None:
        self.check_options_here(config)
        program = self.launch_spec(config).program
        if find_program(program) is None:
            raise Unavailable(f"{program} is not installed (looked in {BIN_DIR_ENV}, "
                              f"{os.path.dirname(sys.executable)} and PATH)",
                              code="service_not_installed")
        self._check_bind(config["service_host"], config.get("service_port"))

    @staticmethod
    def _check_bind(host: str, port: int | None) -> None:
        problem = port_problem(host, port or 0)
        if problem is None:
            return
        if problem.errno == errno.EADDRINUSE:
            if _PORTS.holder(port) is not None:
                return  # one of our services: the same workload resubmitted, or start() says 409
            raise Conflict(f"config.service_port: {host}:{port} is already in use",
                           code="port_in_use")
        if problem.errno == errno.EACCES:
            raise BadRequest(f"config.service_port: no permission to listen on port {port}",
                             code="invalid_field")
        raise BadRequest(f"config.service_host: cannot listen on {host} "
                         f"({problem.strerror or problem})", code="invalid_field")

    # -- starting ------------------------------------------------------------------------

    async def start(self, workload: Workload) -> dict:
        cfg = self.host.config.services
        host = workload.config.get("service_host", "127.0.0.1")
        explicit = workload.config.get("service_port")
        for attempt in range(1, START_ATTEMPTS + 1):
            if explicit is not None:
                _PORTS.claim(explicit, workload.id)
                port = explicit
            else:
                port = _PORTS.pick(host, *cfg.port_range, workload.id)
            svc = self._new_service(workload, host, port)
            try:
                handle = await self._launch(svc)
            except ServiceStartFailed:
                _PORTS.release(port, workload.id)
                taken = port_problem(host, port) is not None
                if explicit is None and taken and attempt < START_ATTEMPTS:
                    log.info("%s: port %d was taken while starting; trying another", workload.id, port)
                    continue
                raise
            except BaseException:
                _PORTS.release(port, workload.id)
                raise
            break
        self._install(svc, handle)
        self._services[workload.id] = svc
        svc.task = asyncio.ensure_future(self._supervise(svc))
        return {"pid": handle.pid, "_start_time": handle.start_time, "endpoint": self._endpoint(svc),
                "port": port, "log_path": str(svc.log_path)}

    def _new_service(self, workload: Workload, host: str, port: int) -> _Service:
        prefix = self.launch_spec(workload.config).log_prefix
        return _Service(workload_id=workload.id, config=workload.config, host=host, port=port,
                        log_path=self.host.config.log_dir / f"{prefix}_service_{port}.log",
                        restarts=workload.restart_count)

    def _endpoint(self, svc: _Service) -> str:
        host = svc.host
        if host in WILDCARDS:
            agent_host = self.host.config.address
            host = agent_host if agent_host not in WILDCARDS else WILDCARDS[host]
        return f"http://{_url_host(host)}:{svc.port}"

    async def _launch(self, svc: _Service) -> ProcessHandle:
        """Spawn the program and wait until it is healthy; on failure kill it and raise."""
        spec = self.launch_spec(svc.config)
        program = find_program(spec.program)
        svc.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = svc.log_path.stat().st_size if svc.log_path.exists() else 0
        if program is None:
            raise ServiceStartFailed(f"{spec.program} is not installed", svc.log_path, "")
        argv = [program, *spec.args, "--port", str(svc.port), "--host", svc.host]
        with open(svc.log_path, "a", encoding="utf-8") as f:
            f.write(f"--- cnet: {time.strftime('%Y-%m-%d %H:%M:%S')} workload {svc.workload_id} "
                    f"starts {' '.join(argv)}\n")
        env = {**os.environ, WORKLOAD_ENV: svc.workload_id, "PYTHONUNBUFFERED": "1"}
        try:
            handle = ProcessHandle.spawn(argv, env=env, cwd=None, log_path=svc.log_path)
        except OSError as exc:
            raise ServiceStartFailed(f"{program}: cannot start ({exc.strerror or exc})",
                                     svc.log_path, "") from None
        try:
            await self._wait_ready(svc, handle, spec.program, offset)
        except BaseException:
            await handle.terminate(KILL_GRACE)
            raise
        return handle

    async def _wait_ready(self, svc: _Service, handle: ProcessHandle, program: str,
                          offset: int) -> None:
        cfg = self.host.config.services
        deadline = time.monotonic() + cfg.start_timeout
        probe_host = WILDCARDS.get(svc.host, svc.host)
        while True:
            if handle.exited:
                reason = f"{program} {describe_exit(handle.exit_code)} while starting"
                break
            remaining = deadline - time.monotonic()
            ok, why = await probe_health(probe_host, svc.port, max(0.05, min(cfg.health_timeout,
                                                                            remaining)))
            if ok:
                return
            if time.monotonic() >= deadline:
                reason = f"{program} was not healthy within {cfg.start_timeout:g}s ({why})"
                break
            await asyncio.sleep(min(READY_POLL, max(0.0, deadline - time.monotonic())))
        raise ServiceStartFailed(reason, svc.log_path, _read_tail(svc.log_path, offset))

    def _install(self, svc: _Service, handle: ProcessHandle) -> None:
        svc.handle = handle
        svc.crashed.clear()

        def exited(_code: int | None) -> None:
            if svc.handle is handle and not svc.stopping:
                svc.crashed.set()

        handle.on_exit(exited)

    # -- supervision ---------------------------------------------------------------------

    async def _supervise(self, svc: _Service) -> None:
        cfg = self.host.config.services
        probe_host = WILDCARDS.get(svc.host, svc.host)
        failures = 0
        while True:
            # After a failed check, confirm sooner: a blip (a worker being replaced) heals itself.
            wait = cfg.health_interval if failures == 0 else min(cfg.health_interval, RECHECK_AFTER)
            try:
                await asyncio.wait_for(svc.crashed.wait(), timeout=wait)
            except asyncio.TimeoutError:
                ok, why = await probe_health(probe_host, svc.port, cfg.health_timeout)
                failures = 0 if ok else failures + 1
                if failures < UNHEALTHY_AFTER:
                    continue
                reason = f"was unhealthy ({why}; {failures} checks in a row)"
            failures = 0
            if svc.handle.exited:
                reason = f"crashed ({describe_exit(svc.handle.exit_code)})"
            log.warning("service %s on port %d %s", svc.workload_id, svc.port, reason)
            if not await self._restart(svc, reason):
                return

    async def _restart(self, svc: _Service, reason: str) -> bool:
        """Restart until healthy; False when out of restarts (the workload has then ended)."""
        cfg = self.host.config.services
        limit = cfg.max_restarts
        while svc.restarts < limit:
            await svc.handle.terminate(KILL_GRACE)
            await asyncio.sleep(cfg.restart_backoff * 2 ** svc.restarts)
            svc.restarts += 1
            n = svc.restarts
            try:
                handle = await self._launch(svc)
            except ServiceStartFailed as exc:
                reason = f"failed to restart ({exc.reason})"
                log.warning("service %s: restart %d of %d failed: %s", svc.workload_id, n, limit,
                            exc.reason)
                self.host.updated(svc.workload_id, restart_count=n,
                                  message=f"restart {n} of {limit} failed: {exc.reason}")
                continue
            self._install(svc, handle)
            log.info("service %s restarted (%d of %d), pid %d", svc.workload_id, n, limit, handle.pid)
            self.host.updated(svc.workload_id, runtime={"pid": handle.pid,
                                                        "_start_time": handle.start_time},
                              restart_count=n, message=f"restarted ({n} of {limit}) after the service {reason}")
            return True
        await svc.handle.terminate(KILL_GRACE)
        self._forget(svc)
        self.host.ended(svc.workload_id, exit_code=svc.handle.exit_code, success=False,
                        message=f"the service {reason}; restarted {svc.restarts} times, giving up")
        return False

    def _forget(self, svc: _Service) -> None:
        if self._services.get(svc.workload_id) is svc:
            del self._services[svc.workload_id]
        _PORTS.release(svc.port, svc.workload_id)

    # -- the seed's ServiceExecutor ------------------------------------------------------

    def endpoint(self, workload: Workload) -> str | None:
        """The service's base URL while it is supervised here, else None."""
        svc = self._services.get(workload.id)
        return self._endpoint(svc) if svc is not None else None

    async def health_check(self, workload: Workload) -> bool:
        """One ``GET /health`` now (does not count towards restarts)."""
        svc = self._services.get(workload.id)
        if svc is None:
            return False
        ok, _why = await probe_health(WILDCARDS.get(svc.host, svc.host), svc.port,
                                      self.host.config.services.health_timeout)
        return ok

    # -- stopping, adoption, logs --------------------------------------------------------

    async def stop(self, workload: Workload, grace: float) -> None:
        svc = self._services.get(workload.id)
        if svc is None:
            return
        svc.stopping = True
        if svc.task is not None:
            svc.task.cancel()
            await asyncio.gather(svc.task, return_exceptions=True)
        await svc.handle.terminate(grace)
        self._forget(svc)
        self.host.ended(workload.id, exit_code=svc.handle.exit_code, message="stopped")

    def adopt(self, workload: Workload) -> str | None:
        runtime = workload.runtime
        port = runtime.get("port")
        if runtime.get("pid") is None or port is None:
            found = ProcessHandle.find_by_workload(workload.id)
            if found is not None:  # it never answered: the agent died while it was starting
                try:
                    os.killpg(found[0], signal.SIGKILL)
                except OSError:
                    pass
            return "the agent stopped while the service was starting"
        handle = ProcessHandle.adopt(runtime["pid"], runtime.get("_start_time"))
        if handle is None:
            return f"service process {runtime['pid']} ended while the agent was down"
        svc = self._new_service(workload, workload.config.get("service_host", "127.0.0.1"), port)
        if runtime.get("log_path"):
            svc.log_path = Path(runtime["log_path"])
        _PORTS.claim(port, workload.id)
        self._install(svc, handle)
        self._services[workload.id] = svc
        svc.task = asyncio.ensure_future(self._supervise(svc))
        return None

    async def logs(self, workload: Workload, tail: int) -> str:
        path = workload.runtime.get("log_path")
        return logfile.tail(path, tail) if path else ""

    async def remove(self, workload: Workload) -> None:
        port, path = workload.runtime.get("port"), workload.runtime.get("log_path")
        # The log file is named by port: keep it while another service uses that port.
        if path and port is not None and _PORTS.holder(port) in (None, workload.id):
            Path(path).unlink(missing_ok=True)

    async def health(self) -> dict | None:
        return {"services": len(self._services)}

    async def close(self) -> None:
        services = list(self._services.values())
        for svc in services:
            svc.stopping = True
            if svc.task is not None:
                svc.task.cancel()
        await asyncio.gather(*(svc.task for svc in services if svc.task), return_exceptions=True)
        for svc in services:
            svc.handle.detach()
            _PORTS.release(svc.port, svc.workload_id)
        self._services.clear()


def _read_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after ``offset`` (this start's output)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "".join(data.decode("utf-8", errors="replace").splitlines(keepends=True)[-lines:])
