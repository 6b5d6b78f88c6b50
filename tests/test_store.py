"""The store opens a database made by an earlier version and adds what it lacks."""

from __future__ import annotations

import asyncio
import sqlite3

from cnet.resources import Resources
from cnet.store import Store
from cnet.workload import Workload


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


def _record(workload_id: str) -> Workload:
    return Workload(id=workload_id, name="job", type="process", config={},
                    requirements=Resources(cpu=1.0), placement={}, labels={}, node_id="nanjing",
                    origin="jiangsu", status="running", version=1)


def _row(workload_id: str) -> dict:
    return _record(workload_id).to_row()


def _committed(path) -> dict[str, tuple]:
    """What another connection reads: only what was committed."""
    with sqlite3.connect(path) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, status, version FROM workloads")}


async def test_writes_that_may_wait_are_committed_after_the_step_in_order(tmp_path):
    path = tmp_path / "cnet.db"
    store = Store(path)
    try:
        store.insert_soon(_record("w1"))
        store.update_soon("w1", {"status": "completed", "version": 2})
        late = _record("w2")
        store.insert_soon(late)
        late.status, late.version = "stopped", 2            # the row it has when written
        assert _committed(path) == {}                       # not within the step
        await asyncio.sleep(0)
        assert _committed(path) == {"w1": ("completed", 2), "w2": ("stopped", 2)}
        # A write that cannot wait lands after whatever was queued before it.
        store.insert_soon(_record("w3"))
        store.update_workload("w3", {"status": "stopped", "version": 2})
        assert _committed(path)["w3"] == ("stopped", 2)
        store.insert_soon(_record("w4"))
        store.delete_workload("w4")
        await asyncio.sleep(0)
        assert "w4" not in _committed(path)
    finally:
        store.close()


async def test_a_queued_write_that_fails_does_not_take_the_others_with_it(tmp_path, caplog):
    path = tmp_path / "cnet.db"
    store = Store(path)
    try:
        store.insert_workload(_row("w1"))
        store.insert_soon(_record("w2"))
        store.insert_soon(_record("w1"))                       # the same id again: refused
        store.insert_soon(_record("w3"))
        await asyncio.sleep(0)
        assert set(_committed(path)) == {"w1", "w2", "w3"}
        assert any("writing workload w1" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_without_a_loop_and_at_close_nothing_queued_is_left_behind(tmp_path):
    path = tmp_path / "cnet.db"
    store = Store(path)
    store.insert_soon(_record("w1"))                           # no loop: written at once
    assert set(_committed(path)) == {"w1"}

    async def queue_and_close() -> None:
        store.update_soon("w1", {"status": "failed", "version": 5})
        store.close()                                       # before the step ends

    asyncio.run(queue_and_close())
    assert _committed(path) == {"w1": ("failed", 5)}
