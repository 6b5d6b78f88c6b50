"""The standalone index: any directory served as a bucket, without the agent's database.

At start the base path is walked into an in-memory SQLite table (key order = UTF-8 byte order,
so listing uses the same range queries as the agent's table). Freshness:

* every ``rescan_interval`` seconds the tree is walked again, but only directories whose mtime
  changed are listed (files added, removed or renamed show up within one interval);
* a file rewritten in place (same directory entry) is noticed by GET/HEAD, which compare the
  opened file's size and mtime with the index and refresh the row; a listing shows the old
  size until then or until its directory changes;
* MD5s (the ETag) are computed by a background task after each walk, and on demand for any
  object a request needs before the task has reached it.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Executor

from services.gateway.index import DEFAULT_CONTENT_TYPE, ObjectIndex, ObjectInfo, key_range
from services.gateway.listing import ListingPage, ObjectEntry, list_page
from services.gateway.scan import (
    DirState,
    FileStat,
    ScanResult,
    md5_file,
    object_key,
    scan_tree,
)

__all__ = ["DirectoryIndex"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE objects (
    key      TEXT PRIMARY KEY,
    parent   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    etag     TEXT
);
CREATE INDEX objects_parent ON objects(parent);
CREATE INDEX objects_unhashed ON objects(key) WHERE etag IS NULL;
"""
HASH_BATCH = 32

HashJob = tuple[str, FileStat]


class DirectoryIndex(ObjectIndex):
    """Index of the regular files under ``base_real`` (already resolved), refreshed by mtime."""

    kind = "directory"

    def __init__(self, base_real: str, executor: Executor, rescan_interval: float = 2.0):
        self.base_real = base_real
        self.rescan_interval = rescan_interval
        self._executor = executor
        self._conn = sqlite3.connect(":memory:", isolation_level=None)
        self._conn.executescript(_SCHEMA)
        self._dirs: dict[str, DirState] = {}
        self._backlog = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.rescan()
        self._tasks = [asyncio.create_task(self._rescan_forever(), name="gateway-rescan"),
                       asyncio.create_task(self._hash_backlog(), name="gateway-hash")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # gather() with return_exceptions collects the tasks' CancelledErrors but still lets
        # a cancellation of close() itself through.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._conn.close()

    # -- freshness ---------------------------------------------------------------------------

    async def rescan(self) -> None:
        """Walk the tree once (changed directories only) and apply what changed."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, scan_tree, self.base_real,
                                            dict(self._dirs))
        self._apply(result)

    def _apply(self, result: ScanResult) -> None:
        conn = self._conn
        added = False
        conn.execute("BEGIN")
        try:
            for rel in result.removed:
                conn.execute("DELETE FROM objects WHERE parent = ?", (rel,))
            for rel, files in result.changed.items():
                known = {key: (size, mtime_ns) for key, size, mtime_ns in conn.execute(
                    "SELECT key, size, mtime_ns FROM objects WHERE parent = ?", (rel,))}
                current = {object_key(rel, name): found for name, found in files.items()}
                conn.executemany("DELETE FROM objects WHERE key = ?",
                                 [(key,) for key in known.keys() - current.keys()])
                fresh = [(key, rel, found.size, found.mtime_ns)
                         for key, found in current.items()
                         if known.get(key) != (found.size, found.mtime_ns)]
                conn.executemany("INSERT OR REPLACE INTO objects (key, parent, size, mtime_ns, etag)"
                                 " VALUES (?, ?, ?, ?, NULL)", fresh)
                added = added or bool(fresh)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._dirs = result.dirs
        if added:
            self._backlog.set()

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval)
            try:
                await self.rescan()
            except Exception:
                log.exception("rescan of %s failed", self.base_real)

    async def _hash_backlog(self) -> None:
        while True:
            jobs = [(key, FileStat(size, mtime_ns)) for key, size, mtime_ns in self._conn.execute(
                "SELECT key, size, mtime_ns FROM objects WHERE etag IS NULL LIMIT ?",
                (HASH_BATCH,))]
            if not jobs:
                self._backlog.clear()
                await self._backlog.wait()
                continue
            try:
                await self._hash(jobs)
            except Exception:
                log.exception("hashing objects under %s failed", self.base_real)
                await asyncio.sleep(self.rescan_interval)

    async def _hash(self, jobs: list[HashJob]) -> dict[str, str]:
        """MD5 of each job's file, stored when the file still has the stat it was queued with.

        A file that cannot be read leaves the index (a later walk brings it back if it returns);
        one that changed meanwhile gets its new size and mtime and waits for the next round.
        """
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._hash_files, jobs)
        done: dict[str, str] = {}
        for (key, queued), (now, etag) in zip(jobs, results, strict=True):
            if now is None:
                self._conn.execute("DELETE FROM objects WHERE key = ? AND size = ? AND mtime_ns = ?",
                                   (key, queued.size, queued.mtime_ns))
            elif now != queued or etag is None:
                self._conn.execute("UPDATE objects SET size = ?, mtime_ns = ?, etag = NULL"
                                   " WHERE key = ?", (now.size, now.mtime_ns, key))
            else:
                self._conn.execute("UPDATE objects SET etag = ? WHERE key = ? AND size = ?"
                                   " AND mtime_ns = ?", (etag, key, now.size, now.mtime_ns))
                done[key] = etag
        return done

    def _hash_files(self, jobs: list[HashJob]) -> list[tuple[FileStat | None, str | None]]:
        """(stat after hashing, MD5 if the file did not change while it was read) per job."""
        results: list[tuple[FileStat | None, str | None]] = []
        for key, queued in jobs:
            path = os.path.join(self.base_real, key)
            etag = md5_file(path) if _stat(path) == queued else None
            results.append((_stat(path), etag))
        return results

    # -- queries -----------------------------------------------------------------------------

    def _rows(self, lo: str, hi: str | None) -> Iterator[ObjectEntry]:
        for key, size, etag, mtime_ns in key_range(
                self._conn, "SELECT key, size, etag, mtime_ns FROM objects", lo, hi):
            yield ObjectEntry(key, size, etag, mtime_ns / 1e9)

    async def list_page(self, *, prefix: str, delimiter: str | None, after: str | None,
                        max_keys: int) -> ListingPage:
        page = list_page(self._rows, prefix=prefix, delimiter=delimiter, after=after,
                         max_keys=max_keys)
        unhashed = [entry for entry in page.contents if entry.etag is None]
        if unhashed:
            jobs = [(entry.key, found) for entry in unhashed
                    if (found := self._stat_of(entry.key)) is not None]
            etags = await self._hash(jobs)
            page.contents = [entry if entry.etag is not None else
                             ObjectEntry(entry.key, entry.size, etags[entry.key],
                                         entry.last_modified)
                             for entry in page.contents
                             if entry.etag is not None or entry.key in etags]
        return page

    def _stat_of(self, key: str) -> FileStat | None:
        row = self._conn.execute("SELECT size, mtime_ns FROM objects WHERE key = ?",
                                 (key,)).fetchone()
        return FileStat(*row) if row else None

    async def lookup(self, key: str, file_stat: os.stat_result) -> ObjectInfo | None:
        row = self._conn.execute("SELECT size, mtime_ns, etag FROM objects WHERE key = ?",
                                 (key,)).fetchone()
        if row is None:
            return None
        opened = FileStat(file_stat.st_size, file_stat.st_mtime_ns)
        etag = row[2]
        if FileStat(row[0], row[1]) != opened:
            self._conn.execute("UPDATE objects SET size = ?, mtime_ns = ?, etag = NULL"
                               " WHERE key = ?", (opened.size, opened.mtime_ns, key))
            etag = None
        if etag is None:
            etag = (await self._hash([(key, opened)])).get(key)
            if etag is None:
                return None
        content_type = mimetypes.guess_type(key)[0] or DEFAULT_CONTENT_TYPE
        return ObjectInfo(key, opened.size, etag, opened.mtime_ns / 1e9, content_type)

    def count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM objects").fetchone()[0]


def _stat(path: str) -> FileStat | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return FileStat(info.st_size, info.st_mtime_ns)
