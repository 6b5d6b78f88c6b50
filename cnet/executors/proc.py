"""One supervised OS process: spawn in its own process group, watch its exit, stop the group.

Exit is watched with a pidfd on the event loop (no thread, no polling). A process is identified
by pid plus start time, so after an agent restart a reused pid is never mistaken for ours.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import psutil

WORKLOAD_ENV = "CNET_WORKLOAD_ID"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


def gpu_env(gpu_devices: Sequence[str] = ()) -> dict[str, str]:
    """The environment that shows a workload exactly its GPUs (none: an empty list)."""
    return {CUDA_ENV: ",".join(gpu_devices)}


def start_time_of(pid: int) -> float | None:
    """The start time of a living process (None if gone or a zombie)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited while the agent was not its parent; exit code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


class ProcessHandle:
    """A running process we own (spawned) or re-adopted (after an agent restart)."""

    def __init__(self, pid: int, start_time: float, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.start_time = start_time
        self._popen = popen
        self._pidfd: int | None = None
        self._exited = asyncio.Event()
        self.exit_code: int | None = None
        self._on_exit: Callable[[int | None], None] | None = None

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def spawn(cls, argv: list[str], *, env: dict[str, str], cwd: str | None,
              log_path: Path, gpu_devices: Sequence[str] = ()) -> "ProcessHandle":
        """Start ``argv`` (no shell) in a new session with stdout+stderr appended to ``log_path``,
        seeing exactly the GPUs ``gpu_devices`` (uuids; none by default).

        Raises OSError (FileNotFoundError, PermissionError, ...) if it cannot start.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**env, **gpu_env(gpu_devices)}
        with open(log_path, "ab", buffering=0) as log:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True, close_fds=True)
        try:
            started = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            started = 0.0  # already gone: the pidfd below reports the exit at once
        handle = cls(popen.pid, started, popen)
        handle._open_pidfd()
        return handle

    @classmethod
    def adopt(cls, pid: int | None, start_time: float | None) -> "ProcessHandle | None":
        """Re-attach to a process we started before a restart, if it is still that process."""
        if not pid or start_time is None:
            return None
        now = start_time_of(pid)
        if now is None or abs(now - start_time) > 0.05:
            return None
        handle = cls(pid, start_time)
        try:
            handle._open_pidfd()
        except ProcessLookupError:
            return None
        return handle

    @staticmethod
    def find_by_workload(workload_id: str) -> tuple[int, float] | None:
        """Find a process started for ``workload_id`` (via its environment) after a crash
        that happened before its pid was recorded."""
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if proc.environ().get(WORKLOAD_ENV) == workload_id and os.getpgid(proc.pid) == proc.pid:
                    return proc.pid, proc.info["create_time"]
            except (psutil.Error, OSError):
                continue
        return None

    def _open_pidfd(self) -> None:
        self._pidfd = os.pidfd_open(self.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_pidfd)

    # -- watching ------------------------------------------------------------------------

    def on_exit(self, callback: Callable[[int | None], None]) -> None:
        """Call ``callback(exit_code)`` once the process ends (None: unknown, not our child)."""
        self._on_exit = callback
        if self._exited.is_set():
            callback(self.exit_code)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def _on_pidfd(self) -> None:
        self._close_pidfd()
        # Kill what is left of the group while the leader is still a zombie holding its pid,
        # so the group id cannot have been reused yet.
        self._signal_group(signal.SIGKILL)
        if self._popen is not None:
            self.exit_code = self._popen.wait()
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit(self.exit_code)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._pidfd)
            except RuntimeError:
                pass
            os.close(self._pidfd)
            self._pidfd = None

    def detach(self) -> None:
        """Stop watching without touching the process (agent shutdown)."""
        self._close_pidfd()

    # -- stopping ------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def terminate(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; wait for the exit."""
        if self.exited:
            return
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), timeout=grace)
            return
        except asyncio.TimeoutError:
            pass
        self._signal_group(signal.SIGKILL)
        await asyncio.wait_for(self._exited.wait(), timeout=30)
