"""Writing a fetched model file: each chunk hashed and written, in order, while the next arrive.

``FileSink`` has two threads of its own, one hashing (sha256 lets go of the GIL for big
buffers) and one writing with ``os.pwrite`` on the open descriptor. ``put`` hands a chunk to
both and returns at once, unless more than ``backlog`` chunks are still waiting (then it
waits for the oldest): the event loop never waits for a chunk's turn, and memory stays bounded.
The writer syncs every ``SYNC_EVERY`` bytes on its way, so the last fsync has little left.
It writes at most ``WRITE_PIECE`` bytes per call: on this project's Linux machines a
buffered write of 4 MiB in one call now and then took the kernel many times as long (seen:
0.7 s instead of 0.11 s for 100 MB), pieces of 1 or 2 MiB never did.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

__all__ = ["FileSink"]

SYNC_EVERY = 8 << 20
WRITE_PIECE = 1 << 20


class FileSink:
    def __init__(self, fd: int, backlog: int):
        self.fd = fd
        self.backlog = backlog
        self.digest = hashlib.sha256()
        self.written = 0
        self._unsynced = 0
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="model-hash")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="model-write")
        self._pending: deque[asyncio.Future] = deque()

    async def put(self, data: bytes | memoryview) -> None:
        """Hash and write ``data`` after the chunks put before it; raises the OSError of a
        write that failed."""
        loop = asyncio.get_running_loop()
        offset, self.written = self.written, self.written + len(data)
        self._pending.append(loop.run_in_executor(self._hasher, self.digest.update, data))
        self._pending.append(loop.run_in_executor(self._writer, self._write, data, offset))
        while len(self._pending) > 2 * self.backlog:
            await self._pending.popleft()

    async def finish(self) -> str:
        """Every chunk hashed, written and synced: the file's sha256 (hex)."""
        while self._pending:
            await self._pending.popleft()
        await asyncio.get_running_loop().run_in_executor(self._writer, os.fsync, self.fd)
        return self.digest.hexdigest()

    async def close(self) -> None:
        """Let the threads end (after a failure too: nothing touches the file after this)."""
        pending, self._pending = list(self._pending), deque()
        await asyncio.gather(*pending, return_exceptions=True)
        self._hasher.shutdown(wait=False)
        self._writer.shutdown(wait=False)

    def _write(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view[:WRITE_PIECE], offset)
            view, offset = view[n:], offset + n
        self._unsynced += len(data)
        if self._unsynced >= SYNC_EVERY:
            os.fdatasync(self.fd)
            self._unsynced = 0
