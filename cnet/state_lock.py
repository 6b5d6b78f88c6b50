"""Each node's directories, created and locked at start, so no two agents ever share a file; the
agent's own pid file beside the lock, and how others find the live agent of a state dir."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .config import ConfigError

if TYPE_CHECKING:
    from .config import Config

__all__ = ["AgentPid", "StateLock", "find_agent"]

LOCK_FILE = "agent.lock"   # flocked while the agent lives; holds "NODE pid N"
PID_FILE = "agent.pid"     # the agent's pid, written once every lock is held, removed on exit
_LOCK_RETRY = 0.2          # seconds: a find_agent() probe holds the flock for microseconds


class StateLock:
    """flock()s on the state dir, database, data dir and log dir of one node, and its pid file."""

    def __init__(self, config: "Config"):
        self.config = config
        self._fds: list[int] = []
        self._pid_file: Path | None = None

    def acquire(self) -> None:
        """Create the node's directories and lock them; ConfigError naming the key if in use."""
        cfg = self.config
        places = [("agent.state_dir", cfg.state_dir / LOCK_FILE),
                  ("storage.sqlite.db_path", cfg.db_path.with_name(cfg.db_path.name + ".lock")),
                  ("storage.sqlite.data_path", cfg.data_path / ".cnet.lock"),
                  ("logging.dir", cfg.log_dir / ".cnet.lock")]
        seen: set[Path] = set()
        for key, lock_path in places:
            if lock_path in seen:
                continue
            seen.add(lock_path)
            try:
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"{key}: cannot use {lock_path.parent} ({exc.strerror})") from None
            if not _flock(fd):
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{key}: {lock_path.parent} is in use by another agent "
                                  f"({owner}); give each node its own directory") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{cfg.node_id} pid {os.getpid()}".encode(), 0)
            self._fds.append(fd)
        self._write_pid_file(cfg.state_dir / PID_FILE)

    def _write_pid_file(self, path: Path) -> None:
        temp = path.with_name(f".{PID_FILE}.{os.getpid()}")
        try:
            temp.write_text(f"{os.getpid()}\n")
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ConfigError(f"agent.state_dir: cannot write {path} ({exc.strerror})") from None
        self._pid_file = path

    def release(self) -> None:
        """Remove the pid file (if it is still ours), then let go of the locks."""
        if self._pid_file is not None:
            if _read_pid(self._pid_file) == os.getpid():
                self._pid_file.unlink(missing_ok=True)
            self._pid_file = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


class AgentPid(NamedTuple):
    """What ``find_agent`` saw: the live agent's pid, or the pid a dead one's file named."""

    pid: int | None
    stale: int | None = None


def find_agent(state_dir: Path) -> AgentPid:
    """The agent that holds ``state_dir`` now, whoever started it, known by its agent.lock flock
    rather than by trusting a pid; a pid file that no live agent backs is removed."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:   # no agent ever ran here
        return AgentPid(None, _remove_pid_file(state_dir))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:   # held: an agent lives; its lock file names it
            owner = os.pread(fd, 64, 0).decode(errors="replace").split()
            pid = int(owner[-1]) if owner and owner[-1].isdigit() else _read_pid(state_dir / PID_FILE)
            return AgentPid(pid)
        # Free, and while we hold it no agent can start and write its pid file: any there is stale.
        return AgentPid(None, _remove_pid_file(state_dir))
    finally:
        os.close(fd)


def _flock(fd: int) -> bool:
    """Lock ``fd`` exclusively; False if another agent holds it (a probe's brief hold is waited out)."""
    deadline = time.monotonic() + _LOCK_RETRY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _remove_pid_file(state_dir: Path) -> int | None:
    """Remove a pid file no live agent backs; the pid it named (0 if unreadable), None if none."""
    path = state_dir / PID_FILE
    if not path.exists():
        return None
    pid = _read_pid(path)
    path.unlink(missing_ok=True)
    return pid or 0
