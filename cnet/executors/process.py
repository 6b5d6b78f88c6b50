"""Process workloads: a local command run directly (no shell) under supervision."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..devices import GPU_DEVICES
from ..errors import BadRequest
from ..workload import Workload
from . import logfile
from .base import Executor, require_str, require_str_list, require_str_map
from .proc import WORKLOAD_ENV, ProcessHandle, describe_exit


class ProcessExecutor(Executor):
    type = "process"

    def __init__(self, host):
        super().__init__(host)
        self._handles: dict[str, ProcessHandle] = {}

    @property
    def log_dir(self) -> Path:
        return self.host.config.log_dir / "workloads"

    def validate(self, config: dict) -> dict:
        unknown = sorted(set(config) - {"command", "args", "env", "working_dir", "stop_grace"})
        if unknown:
            raise BadRequest(f"config: unknown field(s) for a process: {', '.join(unknown)}",
                             code="invalid_field")
        command = require_str(config, "command")
        args = require_str_list(config, "args")
        env = require_str_map(config, "env")
        working_dir = require_str(config, "working_dir", required=False)
        if "\x00" in command:
            raise BadRequest("config.command: must not contain NUL characters", code="invalid_field")
        grace = config.get("stop_grace")
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float))
                                  or not 0 <= grace <= 3600):
            raise BadRequest("config.stop_grace: seconds, 0..3600", code="invalid_field")
        out = {"command": command, "args": args}
        if env:
            out["env"] = env
        if working_dir is not None:
            out["working_dir"] = working_dir
        if grace is not None:
            out["stop_grace"] = grace
        return out

    def check_here(self, config: dict) -> None:
        working_dir = config.get("working_dir")
        if working_dir is not None and not Path(working_dir).is_dir():
            raise BadRequest(f"config.working_dir: {working_dir} is not a directory",
                             code="invalid_field")
        self._resolve(config["command"], config.get("env", {}), working_dir)

    @staticmethod
    def _resolve(command: str, env: dict[str, str], working_dir: str | None) -> str:
        """The executable's path, or a clear 400 if it cannot be run."""
        if "/" in command:
            path = command if os.path.isabs(command) or working_dir is None \
                else os.path.join(working_dir, command)
            if not os.path.exists(path):
                raise BadRequest(f"config.command: {command}: no such file", code="command_not_found")
            if os.path.isdir(path) or not os.access(path, os.X_OK):
                raise BadRequest(f"config.command: {command}: not executable",
                                 code="command_not_executable")
            return command
        found = shutil.which(command, path=env.get("PATH", os.environ.get("PATH", os.defpath)))
        if found is None:
            raise BadRequest(f"config.command: {command}: command not found in PATH",
                             code="command_not_found")
        return found

    async def start(self, workload: Workload) -> dict:
        config = workload.config
        env = {**os.environ, **config.get("env", {}), WORKLOAD_ENV: workload.id}
        argv0 = self._resolve(config["command"], config.get("env", {}), config.get("working_dir"))
        log_path = self.log_dir / f"{workload.id}.log"
        try:
            handle = ProcessHandle.spawn([argv0, *config.get("args", [])], env=env,
                                         cwd=config.get("working_dir"), log_path=log_path,
                                         gpu_devices=workload.runtime.get(GPU_DEVICES, []))
        except PermissionError:
            raise BadRequest(f"config.command: {config['command']}: permission denied",
                             code="command_not_executable") from None
        except OSError as exc:
            raise BadRequest(f"config.command: {config['command']}: cannot start ({exc.strerror})",
                             code="command_failed") from None
        self._watch(workload.id, handle)
        return {"pid": handle.pid, "_start_time": handle.start_time, "log_path": str(log_path)}

    def _watch(self, workload_id: str, handle: ProcessHandle) -> None:
        self._handles[workload_id] = handle

        def exited(code: int | None) -> None:
            self._handles.pop(workload_id, None)
            self.host.ended(workload_id, exit_code=code, message=describe_exit(code),
                            success=True if code is None else None)

        handle.on_exit(exited)

    async def stop(self, workload: Workload, grace: float) -> None:
        handle = self._handles.get(workload.id)
        if handle is None:
            return
        grace = workload.config.get("stop_grace", grace)
        await handle.terminate(grace)

    def adopt(self, workload: Workload) -> str | None:
        pid, started = workload.runtime.get("pid"), workload.runtime.get("_start_time")
        if pid is None:
            found = ProcessHandle.find_by_workload(workload.id)
            if found is None:
                return "the agent stopped before the process was started"
            pid, started = found
            workload.runtime.update(pid=pid, _start_time=started)
        handle = ProcessHandle.adopt(pid, started)
        if handle is None:
            return f"process {pid} ended while the agent was down"
        self._watch(workload.id, handle)
        return None

    async def logs(self, workload: Workload, tail: int) -> str:
        path = workload.runtime.get("log_path") or self.log_dir / f"{workload.id}.log"
        return logfile.tail(path, tail)

    async def remove(self, workload: Workload) -> None:
        path = workload.runtime.get("log_path")
        if path:
            Path(path).unlink(missing_ok=True)

    async def close(self) -> None:
        for handle in self._handles.values():
            handle.detach()
        self._handles.clear()
