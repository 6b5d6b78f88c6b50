"""The object index the gateway lists from, and its agent-database form.

``ObjectIndex`` is what the handlers use. ``DatabaseIndex`` reads the agent's ``data_objects``
table read-only (``file:...?mode=ro``); every query runs in autocommit, so a row the agent has
committed (WAL) is visible to the next request. The table's columns are the contract:

    key           TEXT PRIMARY KEY   "<data_key>/<relative path>", the file under the base path
    workload_id   TEXT
    data_key      TEXT
    size          INTEGER
    etag          TEXT               hex MD5, unquoted
    sha256        TEXT               hex SHA-256
    content_type  TEXT
    last_modified REAL               Unix time
"""

from __future__ import annotations

import abc
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from services.gateway.listing import ListingPage, ObjectEntry, list_page

__all__ = ["DatabaseIndex", "IndexUnavailable", "ObjectIndex", "ObjectInfo", "key_range"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class ObjectInfo:
    """What GET and HEAD need to know about one object besides its bytes."""

    key: str
    size: int
    etag: str
    last_modified: float
    content_type: str
    sha256: str | None = None


def key_range(conn: sqlite3.Connection, select: str, lo: str,
              hi: str | None) -> Iterator[tuple]:
    """Rows of ``select`` (``SELECT key, ... FROM table``) with ``lo <= key < hi``, in key order.

    The primary-key index serves both the range and the order; rows are stepped lazily, so a
    caller that stops early (a listing jumping over a common prefix) reads no more.
    """
    sql, params = f"{select} WHERE key >= ?", [lo]
    if hi is not None:
        sql += " AND key < ?"
        params.append(hi)
    cursor = conn.execute(sql + " ORDER BY key", params)
    try:
        yield from cursor
    finally:
        cursor.close()


class IndexUnavailable(Exception):
    """The index cannot be opened or queried (missing database, wrong schema)."""


class ObjectIndex(abc.ABC):
    """Keys, sizes and checksums of the bucket's objects, in key order."""

    kind: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Build or open the index; called once before the server accepts requests."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the index; no call follows."""

    @abc.abstractmethod
    async def list_page(self, *, prefix: str, delimiter: str | None, after: str | None,
                        max_keys: int) -> ListingPage:
        """One ListObjects page (see ``listing.list_page``) with every ETag filled in."""

    @abc.abstractmethod
    async def lookup(self, key: str, file_stat: os.stat_result) -> ObjectInfo | None:
        """The object ``key`` whose file has been opened with ``file_stat``; None if unknown."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many objects the index holds."""


class DatabaseIndex(ObjectIndex):
    """The agent's ``data_objects`` table, opened read-only."""

    kind = "database"

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        if not self.db_path.is_file():
            raise IndexUnavailable(f"index database {self.db_path} does not exist")
        uri = f"file:{quote(str(self.db_path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA query_only = ON")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(data_objects)")}
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"cannot open index database {self.db_path}: {exc}") from exc
        missing = {"key", "size", "etag", "sha256", "content_type", "last_modified"} - columns
        if missing:
            conn.close()
            raise IndexUnavailable(f"{self.db_path}: table data_objects lacks {sorted(missing)}")
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IndexUnavailable("the index is not open")
        return self._conn

    def _rows(self, lo: str, hi: str | None) -> Iterator[ObjectEntry]:
        rows = key_range(self.conn, "SELECT key, size, etag, last_modified FROM data_objects",
                         lo, hi)
        for key, size, etag, last_modified in rows:
            yield ObjectEntry(key, size, etag, last_modified)

    async def list_page(self, *, prefix: str, delimiter: str | None, after: str | None,
                        max_keys: int) -> ListingPage:
        return list_page(self._rows, prefix=prefix, delimiter=delimiter, after=after,
                         max_keys=max_keys)

    async def lookup(self, key: str, file_stat: os.stat_result) -> ObjectInfo | None:
        row = self.conn.execute(
            "SELECT etag, content_type, last_modified, sha256 FROM data_objects WHERE key = ?",
            (key,)).fetchone()
        if row is None:
            return None
        etag, content_type, last_modified, sha256 = row
        # The bytes served are the file's, so its size is the one to announce.
        return ObjectInfo(key, file_stat.st_size, etag, last_modified,
                          content_type or DEFAULT_CONTENT_TYPE, sha256)

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM data_objects").fetchone()[0]
