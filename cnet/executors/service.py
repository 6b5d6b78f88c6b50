"""The service executor: the base of the service workload types (inference shims, the S3 gateway).

``ServiceExecutor`` is the seed's ServiceExecutor (``endpoint`` and ``health_check`` beside the
executor contract). A subclass says which program to run with which arguments; this class
checks the config, takes a port from the agent's ``PortBook``, starts the program
(``launcher``: its output in ``<log_dir>/<kind>_service_<port>.log``, ready once ``GET /health``
answers 200) and hands it to its ``ServiceSupervisor``, which restarts a crashed or unhealthy
service at most ``services.max_restarts`` times before the workload is ended as failed.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import ClassVar

from ..errors import BadRequest, Conflict, Unavailable
from ..workload import Workload
from . import logfile
from .base import Executor, ExecutorHost, require_str
from .health_probe import WILDCARDS, probe_health, url_host
from .launcher import BIN_DIR_ENV, LaunchSpec, ServiceStartFailed, find_program, launch
from .ports import PortBook, port_problem
from .proc import ProcessHandle
from .supervisor import Service, ServiceSupervisor
from .worker_pool import pool_args, validate_pool

# The names this module has always offered; each now lives in the module of its role.
__all__ = ["BIN_DIR_ENV", "LaunchSpec", "ServiceExecutor", "ServiceStartFailed", "find_program",
           "pool_args", "probe_health", "validate_pool"]

log = logging.getLogger(__name__)

START_ATTEMPTS = 3  # tries with a fresh port when an auto-picked port was taken


class ServiceExecutor(Executor):
    """Base of the service workload types; subclasses implement ``validate_options`` and
    ``launch_spec``. Config fields every service has: ``service_port``, ``service_host``.

    ``ports`` is the agent's one port book, shared by all its service executors.
    """

    options: ClassVar[frozenset[str]] = frozenset()  # the subclass's own config fields

    def __init__(self, host: ExecutorHost, *, ports: PortBook):
        super().__init__(host)
        self.ports = ports
        self.supervisor = ServiceSupervisor(host, ports, self._launch)

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
        # Left out, it stays out: the node that runs the service picks its own bind address.
        host = require_str(config, "service_host", required=False)
        if host is not None and any(c.isspace() or c == "\x00" for c in host):
            raise BadRequest("config.service_host: must be a host name or address",
                             code="invalid_field")
        port = config.get("service_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise BadRequest("config.service_port: must be a whole number, 1..65535",
                             code="invalid_field")
        if host is not None:
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
        self._check_bind(self._bind_host(config), config.get("service_port"))

    def _check_bind(self, host: str, port: int | None) -> None:
        problem = port_problem(host, port or 0)
        if problem is None:
            return
        if problem.errno == errno.EADDRINUSE:
            if self.ports.holder(port) is not None:
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
        host = self._bind_host(workload.config)
        explicit = workload.config.get("service_port")
        for attempt in range(1, START_ATTEMPTS + 1):
            if explicit is not None:
                self.ports.claim(explicit, workload.id)
                port = explicit
            else:
                port = self.ports.pick(host, *cfg.port_range, workload.id)
            svc = self._new_service(workload, host, port)
            try:
                handle = await self._launch(svc)
            except ServiceStartFailed:
                self.ports.release(port, workload.id)
                taken = port_problem(host, port) is not None
                if explicit is None and taken and attempt < START_ATTEMPTS:
                    log.info("%s: port %d was taken while starting; trying another", workload.id, port)
                    continue
                raise
            except BaseException:
                self.ports.release(port, workload.id)
                raise
            break
        self.supervisor.watch(svc, handle)
        return {"pid": handle.pid, "_start_time": handle.start_time, "endpoint": self._endpoint(svc),
                "port": port, "log_path": str(svc.log_path)}

    def _new_service(self, workload: Workload, host: str, port: int) -> Service:
        prefix = self.launch_spec(workload.config).log_prefix
        return Service(workload_id=workload.id, config=workload.config, host=host, port=port,
                       log_path=self.host.config.log_dir / f"{prefix}_service_{port}.log",
                       restarts=workload.restart_count)

    async def _launch(self, svc: Service) -> ProcessHandle:
        return await launch(self.launch_spec(svc.config), svc, self.host.config.services)

    def _bind_host(self, config: dict) -> str:
        """Where the service listens: its ``service_host``, else where the agent listens (a
        loopback agent's services stay on loopback; a wildcard agent's are reachable)."""
        return config.get("service_host") or self.host.config.address

    def _endpoint(self, svc: Service) -> str:
        """The URL handed out: an explicit ``service_host`` as it is, a wildcard one or none
        at all as this node's advertised address."""
        host = svc.config.get("service_host")
        if host is None or host in WILDCARDS:
            host = self.host.config.advertise
        return f"http://{url_host(host)}:{svc.port}"

    # -- the seed's ServiceExecutor ------------------------------------------------------

    def endpoint(self, workload: Workload) -> str | None:
        """The service's base URL while it is supervised here, else None."""
        svc = self.supervisor.get(workload.id)
        return self._endpoint(svc) if svc is not None else None

    async def health_check(self, workload: Workload) -> bool:
        """One ``GET /health`` now (does not count towards restarts)."""
        svc = self.supervisor.get(workload.id)
        if svc is None:
            return False
        ok, _why = await probe_health(svc.host, svc.port, self.host.config.services.health_timeout)
        return ok

    # -- stopping, adoption, logs --------------------------------------------------------

    async def stop(self, workload: Workload, grace: float) -> None:
        svc = await self.supervisor.stop(workload.id, grace)
        if svc is not None:
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
        svc = self._new_service(workload, self._bind_host(workload.config), port)
        if runtime.get("log_path"):
            svc.log_path = Path(runtime["log_path"])
        self.ports.claim(port, workload.id)
        self.supervisor.watch(svc, handle)
        return None

    async def logs(self, workload: Workload, tail: int) -> str:
        path = workload.runtime.get("log_path")
        return logfile.tail(path, tail) if path else ""

    async def remove(self, workload: Workload) -> None:
        port, path = workload.runtime.get("port"), workload.runtime.get("log_path")
        # The log file is named by port: keep it while another service uses that port.
        if path and port is not None and self.ports.holder(port) in (None, workload.id):
            Path(path).unlink(missing_ok=True)

    async def health(self) -> dict | None:
        return {"services": len(self.supervisor)}

    async def close(self) -> None:
        await self.supervisor.close()
