"""Starting one service process: find its program, spawn it with its output in its log file,
and wait until ``GET /health`` answers 200 (or fail with the log's tail)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import CnetError
from .health_probe import probe_health
from .proc import WORKLOAD_ENV, ProcessHandle, describe_exit

if TYPE_CHECKING:
    from ..config import ServiceConfig

__all__ = ["BIN_DIR_ENV", "KILL_GRACE", "LaunchSpec", "ServiceStartFailed", "find_program",
           "launch"]

BIN_DIR_ENV = "CNET_SERVICE_BIN_DIR"  # a directory searched first for the service programs
KILL_GRACE = 2.0                     # SIGTERM -> SIGKILL delay when the agent kills a service
READY_POLL = 0.1                     # seconds between /health probes while a service starts
LOG_TAIL_LINES = 20


class Where(Protocol):
    """Where a service runs and logs (a supervised service has these fields)."""

    workload_id: str
    host: str
    port: int
    log_path: Path


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
    """What a service executor contributes: the program, its own arguments, the log's prefix."""

    program: str          # console script name, e.g. "cnet-inference-yolo"
    args: list[str]       # arguments before --port/--host
    log_prefix: str       # "yolo" -> yolo_service_<port>.log
    gpu_devices: tuple[str, ...] = ()   # the GPUs (uuids) the service process may see


def find_program(name: str) -> str | None:
    """``$CNET_SERVICE_BIN_DIR/name``, else next to this Python (same venv), else on PATH."""
    dirs = [os.environ.get(BIN_DIR_ENV), os.path.dirname(sys.executable)]
    for directory in dirs:
        if directory:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return shutil.which(name)


async def launch(spec: LaunchSpec, svc: "Where", cfg: "ServiceConfig") -> ProcessHandle:
    """Spawn ``svc``'s program and wait until it is healthy; on failure kill it and raise
    ServiceStartFailed."""
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
        handle = ProcessHandle.spawn(argv, env=env, cwd=None, log_path=svc.log_path,
                                     gpu_devices=spec.gpu_devices)
    except OSError as exc:
        raise ServiceStartFailed(f"{program}: cannot start ({exc.strerror or exc})",
                                 svc.log_path, "") from None
    try:
        await _wait_ready(svc, handle, spec.program, offset, cfg)
    except BaseException:
        await handle.terminate(KILL_GRACE)
        raise
    return handle


async def _wait_ready(svc: "Where", handle: ProcessHandle, program: str, offset: int,
                      cfg: "ServiceConfig") -> None:
    deadline = time.monotonic() + cfg.start_timeout
    while True:
        if handle.exited:
            reason = f"{program} {describe_exit(handle.exit_code)} while starting"
            break
        remaining = deadline - time.monotonic()
        ok, why = await probe_health(svc.host, svc.port,
                                     max(0.05, min(cfg.health_timeout, remaining)))
        if ok:
            return
        if time.monotonic() >= deadline:
            reason = f"{program} was not healthy within {cfg.start_timeout:g}s ({why})"
            break
        await asyncio.sleep(min(READY_POLL, max(0.0, deadline - time.monotonic())))
    raise ServiceStartFailed(reason, svc.log_path, _read_tail(svc.log_path, offset))


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
