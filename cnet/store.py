"""Persistent state: peewee models on SQLite in WAL mode (workloads, transitions, data objects,
the replica sets this node is the origin of).

The ``data_objects`` table is also read, read-only, by the S3 gateway (``services/gateway``),
which knows nothing of this module; its columns are a contract:

    key           TEXT PRIMARY KEY   object key inside the bucket: "<data_key>/<relative path>"
    workload_id   TEXT               the data workload that stored it
    data_key      TEXT               first path component of key
    size          INTEGER            bytes
    etag          TEXT               hex MD5 of the content (unquoted)
    sha256        TEXT               hex SHA-256 of the content
    content_type  TEXT
    last_modified REAL               Unix time the object was stored
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import peewee as pw

if TYPE_CHECKING:
    from .workload import Workload

PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",   # durable across process crashes; WAL keeps it consistent
    "foreign_keys": 1,
    "busy_timeout": 5000,
}


class JSONField(pw.TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class _Base(pw.Model):
    class Meta:
        database = None  # bound by Store


class WorkloadRow(_Base):
    id = pw.CharField(primary_key=True, max_length=64)
    name = pw.TextField()
    type = pw.CharField(max_length=32)
    status = pw.CharField(max_length=16, index=True)
    node_id = pw.CharField(max_length=64)        # where it runs
    origin = pw.CharField(max_length=64)         # where it was submitted
    spec = JSONField()                           # config, requirements, placement, labels
    runtime = JSONField(default=dict)            # executor-owned: pid, endpoint, container id, ...
    exit_code = pw.IntegerField(null=True)
    message = pw.TextField(null=True)
    restart_count = pw.IntegerField(default=0)
    created_at = pw.FloatField()
    started_at = pw.FloatField(null=True)
    finished_at = pw.FloatField(null=True)
    version = pw.IntegerField(default=0)         # +1 on every change, by the node running it

    class Meta:
        table_name = "workloads"


class TransitionRow(_Base):
    workload_id = pw.CharField(max_length=64, index=True)
    at = pw.FloatField()
    status = pw.CharField(max_length=16)
    message = pw.TextField(null=True)

    class Meta:
        table_name = "transitions"


class DataObjectRow(_Base):
    key = pw.TextField(primary_key=True)
    workload_id = pw.CharField(max_length=64, index=True)
    data_key = pw.CharField(max_length=128, index=True)
    size = pw.BigIntegerField()
    etag = pw.CharField(max_length=32)
    sha256 = pw.CharField(max_length=64)
    content_type = pw.TextField(default="application/octet-stream")
    last_modified = pw.FloatField()

    class Meta:
        table_name = "data_objects"


class ReplicaSetRow(_Base):
    id = pw.CharField(primary_key=True, max_length=64)
    record = JSONField()                         # cnet.replica_set.ReplicaSet.to_row()

    class Meta:
        table_name = "replica_sets"


MODELS = (WorkloadRow, TransitionRow, DataObjectRow, ReplicaSetRow)
_COLUMNS = {f.column_name: f for f in WorkloadRow._meta.sorted_fields}
_INSERT_TRANSITION = "INSERT INTO transitions (workload_id, at, status, message) VALUES (?, ?, ?, ?)"

log = logging.getLogger(__name__)


def _db_value(column: str, value):
    field_ = _COLUMNS.get(column)
    if field_ is None:
        raise KeyError(f"workloads has no column {column!r}")
    return field_.db_value(value)


class Store:
    """One agent's database. Writes are small and synchronous on the event loop.

    A write that may wait (``insert_soon``, ``update_soon``: a mirror of a workload another node
    runs, which that node's own record can restore, see ``MirrorBook``) is queued and committed
    after the current step, with whatever else the step queued, in one transaction. Queued
    writes always land before any later write, and before the store is read or closed.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = pw.SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
        self._sql: dict[tuple, str] = {}
        self._soon: list[tuple[str, tuple]] = []     # (method, args) of the queued writes
        self.db.connect()
        with self._bound():
            self.db.create_tables(MODELS)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a database made by an earlier version lacks."""
        have = {column.name for column in self.db.get_columns("workloads")}
        if "version" not in have:
            self.db.execute_sql("ALTER TABLE workloads ADD COLUMN version INTEGER NOT NULL DEFAULT 0")

    def _bound(self):
        """The models on this store's database. The model classes are shared by every Store in
        the process (agents run side by side in tests), so each use binds them for its span."""
        return self.db.bind_ctx(MODELS, bind_refs=False, bind_backrefs=False)

    def close(self) -> None:
        self.flush()
        if not self.db.is_closed():
            self.db.close()

    # -- writes that may wait for the end of the step --------------------------------------

    def insert_soon(self, record: "Workload") -> None:
        """``insert_workload`` of ``record``, committed after the current step with the row it
        has then (made then, not on the path that made the record)."""
        self._queue("_insert_record", (record,))

    def update_soon(self, workload_id: str, fields: dict) -> None:
        """``update_workload``, committed after the current step."""
        self._queue("_update", (workload_id, fields, None, None))

    def _queue(self, method: str, args: tuple) -> None:
        if not self._soon:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:          # no loop (a tool, a test): write it now
                with self.db.atomic():
                    getattr(self, method)(*args)
                return
        self._soon.append((method, args))

    def flush(self) -> None:
        """Commit the queued writes, in order, in one transaction (each on its own if that
        fails, so one bad row does not take the others with it)."""
        queued, self._soon = self._soon, []
        if not queued or self.db.is_closed():
            return
        try:
            with self.db.atomic():
                for method, args in queued:
                    getattr(self, method)(*args)
            return
        except pw.PeeweeException:
            pass
        for method, args in queued:
            try:
                with self.db.atomic():
                    getattr(self, method)(*args)
            except pw.PeeweeException as exc:
                log.error("writing workload %s to %s failed: %s", args[0] if method == "_update"
                          else args[0].id, self.path, exc)

    # -- workloads -----------------------------------------------------------------------

    # The hot path (a few writes per workload) uses cached parametrised SQL; peewee would
    # rebuild each statement from its query objects every time.

    def insert_workload(self, fields: dict) -> None:
        self.flush()
        with self.db.atomic():
            self._insert(fields)

    def update_workload(self, workload_id: str, fields: dict, transition: str | None = None,
                        message: str | None = None) -> None:
        self.flush()
        with self.db.atomic():
            self._update(workload_id, fields, transition, message)

    def _insert(self, fields: dict) -> None:
        columns = tuple(fields)
        sql = self._sql.get(("insert", columns))
        if sql is None:
            sql = (f"INSERT INTO workloads ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")
            self._sql[("insert", columns)] = sql
        self.db.execute_sql(sql, [_db_value(c, fields[c]) for c in columns])
        self.db.execute_sql(_INSERT_TRANSITION, (fields["id"], time.time(), fields["status"],
                                                 fields.get("message")))

    def _insert_record(self, record: "Workload") -> None:
        self._insert(record.to_row())

    def _update(self, workload_id: str, fields: dict, transition: str | None,
                message: str | None) -> None:
        columns = tuple(fields)
        sql = self._sql.get(("update", columns))
        if sql is None:
            sql = f"UPDATE workloads SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
            self._sql[("update", columns)] = sql
        self.db.execute_sql(sql, [*(_db_value(c, fields[c]) for c in columns), workload_id])
        if transition:
            self.db.execute_sql(_INSERT_TRANSITION, (workload_id, time.time(), transition, message))

    def delete_workload(self, workload_id: str) -> None:
        self.flush()
        with self._bound(), self.db.atomic():
            WorkloadRow.delete().where(WorkloadRow.id == workload_id).execute()
            TransitionRow.delete().where(TransitionRow.workload_id == workload_id).execute()
            DataObjectRow.delete().where(DataObjectRow.workload_id == workload_id).execute()

    def load_workloads(self) -> list[dict]:
        self.flush()
        with self._bound():
            return list(WorkloadRow.select().order_by(WorkloadRow.created_at).dicts())

    # -- replica sets ------------------------------------------------------------------

    def save_set(self, set_id: str, record: dict) -> None:
        with self._bound(), self.db.atomic():
            ReplicaSetRow.replace(id=set_id, record=record).execute()

    def delete_set(self, set_id: str) -> None:
        with self._bound(), self.db.atomic():
            ReplicaSetRow.delete().where(ReplicaSetRow.id == set_id).execute()

    def load_sets(self) -> list[dict]:
        with self._bound():
            return [row.record for row in ReplicaSetRow.select().order_by(ReplicaSetRow.id)]

    # -- data objects --------------------------------------------------------------------

    def delete_objects(self, workload_id: str) -> None:
        self.flush()
        with self._bound(), self.db.atomic():
            DataObjectRow.delete().where(DataObjectRow.workload_id == workload_id).execute()

    def insert_objects(self, rows: list[dict]) -> None:
        self.flush()
        with self._bound(), self.db.atomic():
            for start in range(0, len(rows), 200):
                DataObjectRow.insert_many(rows[start:start + 200]).execute()
