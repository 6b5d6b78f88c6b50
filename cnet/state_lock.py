"""Each node's directories, created and locked at start, so no two agents ever share a file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from .config import Config

__all__ = ["StateLock"]


class StateLock:
    """flock()s on the state dir, database, data dir and log dir of one node."""

    def __init__(self, config: "Config"):
        self.config = config
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Create the node's directories and lock them; ConfigError naming the key if in use."""
        cfg = self.config
        places = [("agent.state_dir", cfg.state_dir / "agent.lock"),
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
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{key}: {lock_path.parent} is in use by another agent "
                                  f"({owner}); give each node its own directory") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{cfg.node_id} pid {os.getpid()}".encode(), 0)
            self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
