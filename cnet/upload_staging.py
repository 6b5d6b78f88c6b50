"""An upload's files while it arrives: staged under temp names in its staging dir, written and
hashed (MD5 for the ETag, SHA-256) in batches on writer threads, then moved into place at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from .executors.data import TARGET_MARKER, fsync_dir

__all__ = ["BATCH_BYTES", "StagedFile", "Staging"]

BATCH_BYTES = 4 << 20            # hand file data to the writer threads in batches this size
PARALLEL_HASH_BYTES = 256 << 10  # below this a batch is hashed and written on one thread

Run = Callable[..., Awaitable[Any]]   # runs a function on a writer thread


@dataclass(eq=False)
class StagedFile:
    """One file part: written under a temp name, hashed as it is written."""

    path: str                # relative path inside the data key
    temp: Path
    content_type: str
    fd: int = -1
    size: int = 0            # bytes received (counted on the event loop)
    md5: Any = field(default_factory=hashlib.md5)
    sha256: Any = field(default_factory=hashlib.sha256)

    # The methods below run on writer threads, one batch at a time per upload. Each takes one
    # contiguous buffer, so a thread gives up and retakes the GIL once per batch rather than
    # once per network chunk (retaking it can wait a whole switch interval).

    def hash_md5(self, buf: bytearray) -> None:
        self.md5.update(buf)

    def write_and_hash_sha256(self, buf: bytearray) -> None:
        self.sha256.update(buf)
        view = memoryview(buf)
        while view:
            view = view[os.write(self.fd, view):]

    def seal(self) -> None:
        """Make the content durable and close the file."""
        os.fdatasync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def record(self) -> dict:
        return {"path": self.path, "size": self.size, "etag": self.md5.hexdigest(),
                "sha256": self.sha256.hexdigest()}


class Staging:
    """The staged files of one upload: ``open``, ``add`` data, ``end_file``; ``write_pending``
    starts a batch on the writer threads and ``drain`` waits for it."""

    def __init__(self, directory: Path, run: Run):
        self.dir = directory
        self.files: list[StagedFile] = []
        self._run = run
        self._current: StagedFile | None = None
        # File data parsed but not yet handed to a writer thread, and the batch being written.
        self._pending: list[tuple[StagedFile, bytearray]] = []
        self.pending_bytes = 0
        self._to_seal: list[StagedFile] = []
        self._inflight: asyncio.Future | None = None

    @property
    def due(self) -> bool:
        """Enough is pending (or a file is complete) to start the next batch."""
        return self.pending_bytes >= BATCH_BYTES or bool(self._to_seal)

    def open(self, path: str, content_type: str) -> None:
        staged = StagedFile(path=path, temp=self.dir / f"{len(self.files)}.part",
                            content_type=content_type)
        staged.fd = os.open(staged.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.files.append(staged)
        self._current = staged

    def add(self, data: bytes, start: int, end: int) -> None:
        """Queue ``data[start:end]`` for the file being received."""
        staged = self._current
        staged.size += end - start
        if self._pending and self._pending[-1][0] is staged:
            self._pending[-1][1].extend(memoryview(data)[start:end])
        else:
            self._pending.append((staged, bytearray(memoryview(data)[start:end])))
        self.pending_bytes += end - start

    def end_file(self) -> None:
        self._to_seal.append(self._current)
        self._current = None

    def write_pending(self) -> None:
        """Start writing what was queued (call after ``drain``: one batch at a time)."""
        if not self._pending and not self._to_seal:
            return
        batch, to_seal = self._pending, self._to_seal
        self._pending, self.pending_bytes, self._to_seal = [], 0, []
        self._inflight = asyncio.ensure_future(self._write(batch, to_seal))

    async def drain(self) -> None:
        """Wait for the batch being written (shielded: a writer thread is never cut short)."""
        task = self._inflight
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if self._inflight is task and task.done():
                self._inflight = None

    async def close(self) -> None:
        """Drop what is queued and close every file, once the batch being written is done."""
        task = self._inflight
        if task is not None:
            await asyncio.wait([task])  # its threads use the files we are about to close
        self._pending.clear()
        for staged in self.files:
            staged.close()

    async def _write(self, batch: list[tuple[StagedFile, bytearray]],
                     to_seal: list[StagedFile]) -> None:
        run = self._run
        if len(batch) == 1 and len(batch[0][1]) >= PARALLEL_HASH_BYTES:
            # The common case, one large file: MD5 on one thread, SHA-256 and the write on
            # another (hashlib and os.write release the GIL).
            staged, buf = batch[0]
            await asyncio.gather(run(staged.hash_md5, buf), run(staged.write_and_hash_sha256, buf))
            if to_seal:
                await run(_seal_all, to_seal)
            return
        await run(_write_batch, batch, to_seal)

    def place(self, data_key: str, final: Path) -> None:
        """Build the tree inside the staging dir, then move it into place with one rename.

        Runs on a thread, once every file is sealed.
        """
        tree = self.dir / "tree"
        tree.mkdir()
        dirs = {tree}
        for staged in self.files:
            dest = tree / staged.path
            if dest.parent not in dirs:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dirs.update(p for p in dest.parents if tree in p.parents or p == tree)
            os.rename(staged.temp, dest)
        for directory in dirs:
            fsync_dir(directory)
        # The marker lets a restart remove the final dir if we crash before it is recorded.
        marker = self.dir / TARGET_MARKER
        marker.write_text(data_key)
        fsync_dir(self.dir)
        os.rename(tree, final)
        fsync_dir(final.parent)


def _write_batch(batch: list[tuple[StagedFile, bytearray]], to_seal: list[StagedFile]) -> None:
    for staged, buf in batch:
        staged.hash_md5(buf)
        staged.write_and_hash_sha256(buf)
    _seal_all(to_seal)


def _seal_all(files: list[StagedFile]) -> None:
    for staged in files:
        staged.seal()
