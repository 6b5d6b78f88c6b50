"""The store opens a database made by an earlier version and adds what it lacks."""

from __future__ import annotations

import sqlite3

from cnet.store import Store


def test_a_database_without_versions_gains_the_column(tmp_path):
    path = tmp_path / "cnet.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE workloads (id VARCHAR(64) PRIMARY KEY, name TEXT, type TEXT, "
                     "status TEXT, node_id TEXT, origin TEXT, spec TEXT, runtime TEXT, "
                     "exit_code INTEGER, message TEXT, restart_count INTEGER, created_at REAL, "
                     "started_at REAL, finished_at REAL)")
        conn.execute("INSERT INTO workloads VALUES ('w1', 'job', 'process', 'running', 'a', 'a', "
                     "'{}', '{}', NULL, NULL, 0, 1.0, 1.0, NULL)")
    store = Store(path)
    try:
        (row,) = store.load_workloads()
        assert row["version"] == 0
        store.update_workload("w1", {"version": 3})
        assert store.load_workloads()[0]["version"] == 3
    finally:
        store.close()
