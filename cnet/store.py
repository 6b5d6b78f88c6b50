"""Persistent state: peewee models on SQLite in WAL mode (workloads, transitions, data objects).

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

import json
import time
from pathlib import Path

import peewee as pw

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


MODELS = (WorkloadRow, TransitionRow, DataObjectRow)


class Store:
    """One agent's database. Writes are small and synchronous on the event loop."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = pw.SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
        self.db.bind(MODELS)
        self.db.connect()
        self.db.create_tables(MODELS)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    # -- workloads -----------------------------------------------------------------------

    def insert_workload(self, fields: dict) -> None:
        with self.db.atomic():
            WorkloadRow.insert(**fields).execute()
            TransitionRow.insert(workload_id=fields["id"], at=time.time(),
                                 status=fields["status"], message=fields.get("message")).execute()

    def update_workload(self, workload_id: str, fields: dict, transition: str | None = None,
                        message: str | None = None) -> None:
        with self.db.atomic():
            WorkloadRow.update(**fields).where(WorkloadRow.id == workload_id).execute()
            if transition:
                TransitionRow.insert(workload_id=workload_id, at=time.time(), status=transition,
                                     message=message).execute()

    def delete_workload(self, workload_id: str) -> None:
        with self.db.atomic():
            WorkloadRow.delete().where(WorkloadRow.id == workload_id).execute()
            TransitionRow.delete().where(TransitionRow.workload_id == workload_id).execute()
            DataObjectRow.delete().where(DataObjectRow.workload_id == workload_id).execute()

    def load_workloads(self) -> list[dict]:
        return list(WorkloadRow.select().order_by(WorkloadRow.created_at).dicts())

    def transitions(self, workload_id: str) -> list[dict]:
        query = (TransitionRow.select(TransitionRow.at, TransitionRow.status, TransitionRow.message)
                 .where(TransitionRow.workload_id == workload_id).order_by(TransitionRow.id))
        return list(query.dicts())

    # -- data objects --------------------------------------------------------------------

    def insert_objects(self, rows: list[dict]) -> None:
        with self.db.atomic():
            for start in range(0, len(rows), 200):
                DataObjectRow.insert_many(rows[start:start + 200]).execute()

    def objects_of(self, workload_id: str) -> list[dict]:
        query = DataObjectRow.select().where(DataObjectRow.workload_id == workload_id)
        return list(query.order_by(DataObjectRow.key).dicts())
