"""Crash-safe delete of data workloads: ``deleting`` is persisted (and the objects unlisted) before
a file goes, a restart finishes a delete cut short, and kill -9 mid-delete never leaves a half."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from cnet.errors import NotFound
from cnet.ops import Delete, Get, List
from services.gateway.index import DatabaseIndex

from .bus.harness import until
from .harness import wait_for
from .test_data import BOUNDARY, data_dir, field, filepart, multipart, stored_dirs, upload

MANY = 3000                 # files in the upload deleted in each kill -9 round
KEPT = b"k" * 5000          # a workload that is never deleted: storage must still count it


# -- in one process: the order of a delete and each of its crash points -------------------

async def _upload(agent, name: str, count: int) -> dict:
    """A data upload through the agent's real intake (no HTTP)."""
    body = multipart(field("type", "data"), field("name", name),
                     *(filepart(f"d{i % 5}/f{i}.txt", b"%d" % i) for i in range(count)))
    intake = await agent.uploads.begin(f"multipart/form-data; boundary={BOUNDARY}", len(body))
    await intake.feed(body)
    return (await intake.finish()).to_dict()


def _rows(db: Path, workload_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM data_objects WHERE workload_id = ?",
                            (workload_id,)).fetchone()[0]


def _storage(agent) -> int:
    return agent.register.resources()["allocated"]["storage"]


async def test_a_delete_is_marked_deleting_and_unlisted_before_its_files_go(inprocess_cluster):
    async with inprocess_cluster({"jiangsu": {}}) as cluster:
        agent = cluster["jiangsu"]
        wl = await _upload(agent, "slow-to-go", 20)
        executor = agent.manager.executors["data"]
        remove, may_go = executor.remove, asyncio.Event()

        async def held_remove(workload):
            await may_go.wait()
            await remove(workload)
        executor.remove = held_remove
        first = asyncio.ensure_future(cluster.run("jiangsu", Delete(id=wl["id"])))
        await until(lambda: agent.manager.get(wl["id"]).status == "deleting", 5, "deleting")
        second = asyncio.ensure_future(cluster.run("jiangsu", Delete(id=wl["id"])))

        assert (await cluster.run("jiangsu", Get(id=wl["id"])))["status"] == "deleting"
        listed = await cluster.run("jiangsu", List(status="deleting"))
        assert [w["id"] for w in listed["workloads"]] == [wl["id"]]
        assert _rows(agent.config.db_path, wl["id"]) == 0        # the gateway lists none of it
        assert len(list(Path(wl["path"]).rglob("*.txt"))) == 20  # while every file is still there
        assert _storage(agent) == wl["size"]                     # counted until its files go

        may_go.set()
        assert await first == await second == {"id": wl["id"], "deleted": True}
        with pytest.raises(NotFound):
            await cluster.run("jiangsu", Get(id=wl["id"]))
        assert not Path(wl["path"]).exists() and _storage(agent) == 0


async def test_a_restart_finishes_each_delete_cut_short(inprocess_cluster):
    """Crash points: `deleting` persisted with the files still in place; moved to the trash and
    half removed; all removed but the record left."""
    async with inprocess_cluster({"jiangsu": {}}) as cluster:
        agent = cluster["jiangsu"]
        kept = await _upload(agent, "kept", 3)
        cut = [await _upload(agent, f"cut-{i}", 10) for i in range(3)]
        layout = agent.manager.executors["data"].layout
        db = agent.config.db_path
        await cluster.stop("jiangsu")

        with sqlite3.connect(db) as conn:
            for wl in cut:
                conn.execute("UPDATE workloads SET status = 'deleting' WHERE id = ?", (wl["id"],))
                conn.execute("DELETE FROM data_objects WHERE workload_id = ?", (wl["id"],))
        half = layout.deleted_dir(cut[1]["id"])
        half.parent.mkdir(parents=True, exist_ok=True)
        os.rename(cut[1]["path"], half)
        for path in sorted(half.rglob("*.txt"))[:5]:
            path.unlink()
        os.rename(cut[2]["path"], layout.deleted_dir(cut[2]["id"]))
        for path in layout.deleted_dir(cut[2]["id"]).rglob("*.txt"):
            path.unlink()

        agent = await cluster.start("jiangsu")
        await until(lambda: all(wl["id"] not in agent.manager.workloads for wl in cut), 10,
                    "the deletes cut short to be finished")
        assert sorted(agent.manager.workloads) == [kept["id"]]
        assert _storage(agent) == kept["size"]
        assert [p.name for p in layout.root.iterdir() if p.is_dir() and p != layout.staging] \
            == [kept["data_key"]]
        assert not layout.staging.exists() or list(layout.staging.iterdir()) == []
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT DISTINCT workload_id FROM data_objects").fetchall() == \
                [(kept["id"],)]


# -- a real agent, kill -9 mid-delete ------------------------------------------------------

def _send_delete(agent, workload_id: str) -> socket.socket:
    """Send ``DELETE`` and do not wait for the reply."""
    sock = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    sock.sendall(f"DELETE /api/workloads/{workload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    return sock


def _files(path: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(path))


def _record(agent, workload_id: str) -> str | None:
    with sqlite3.connect(f"file:{agent.state_dir / 'cnet.db'}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT status FROM workloads WHERE id = ?", (workload_id,)).fetchone()
    return row and row[0]


def _listed(agent) -> list[str]:
    """Every key the S3 gateway's index (the agent's data_objects table) lists."""
    async def keys() -> list[str]:
        index = DatabaseIndex(agent.state_dir / "cnet.db")
        await index.start()
        try:
            page = await index.list_page(prefix="", delimiter=None, after=None, max_keys=100_000)
        finally:
            await index.close()
        return [entry.key for entry in page.contents]
    return asyncio.run(keys())


def _assert_nothing_listed_is_missing(agent) -> None:
    missing = [key for key in _listed(agent) if not (data_dir(agent) / key).is_file()]
    assert missing == [], f"{len(missing)} listed object(s) have no file, e.g. {missing[:3]}"


def _kill_during_delete(agent, wl: dict, when: str) -> int | None:
    """DELETE ``wl`` and kill -9 the agent at ``when``; the files left in its trash then."""
    final = Path(wl["path"])
    trash = data_dir(agent) / ".cnet-staging" / f"deleted-{wl['id']}"
    sock = _send_delete(agent, wl["id"])

    def due() -> bool:
        if when == "at once":
            return True
        if final.exists():
            return False
        left = _files(trash) if trash.exists() else 0
        return when == "moved" or left <= MANY * (0.9 if when == "10% gone" else 0.5)
    wait_for(due, timeout=10, interval=0.001, message=f"the delete to reach {when}")
    agent.kill()
    sock.close()
    return _files(trash) if trash.exists() else None


def _settled(agent, workload_id: str) -> dict | None:
    """The workload once it is no longer ``deleting`` (status None when it is gone)."""
    resp = agent.api("GET", f"/api/workloads/{workload_id}")
    if resp.status_code == 404:
        return {"status": None}
    return resp.json() if resp.json()["status"] != "deleting" else None


def test_kill_9_mid_delete_never_leaves_a_half(agent):
    kept = upload(agent, "kept", [("kept.txt", KEPT)])
    files = [(f"d{i % 30}/f{i}.txt", b"%06d" % i) for i in range(MANY)]
    size = sum(len(content) for _, content in files)
    caught_mid_way = 0
    for when in ("at once", "moved", "10% gone", "50% gone"):
        t0 = time.monotonic()
        wl = upload(agent, f"many {when}", files)
        left = _kill_during_delete(agent, wl, when)
        # The crash point as the gateway would see it: the record is gone, or `deleting` with
        # none of its objects listed, or intact with all of them.
        status = _record(agent, wl["id"])
        listed = sum(key.startswith(wl["data_key"] + "/") for key in _listed(agent))
        assert (status, listed) in ((None, 0), ("deleting", 0), ("completed", MANY)), \
            (when, status, listed)
        _assert_nothing_listed_is_missing(agent)
        caught_mid_way += left is not None and 0 < left < MANY

        agent.start()
        settled = wait_for(lambda wid=wl["id"]: _settled(agent, wid), timeout=15,
                           message="the delete cut short to be finished")
        if settled["status"] is None:   # gone, every trace of it
            assert status in (None, "deleting"), (when, status)
            assert stored_dirs(agent) == [kept["data_key"]]
            wait_for(lambda: not list((data_dir(agent) / ".cnet-staging").glob("*")),
                     timeout=10, message="the trash to be emptied")
            assert agent.resources()["allocated"]["storage"] == len(KEPT)
        else:   # killed before `deleting` was persisted: intact, every file in place
            assert (status, settled["status"], settled["file_count"]) == \
                ("completed", "completed", MANY)
            assert _files(Path(wl["path"])) == MANY
            assert agent.resources()["allocated"]["storage"] == len(KEPT) + size
            assert agent.api("DELETE", f"/api/workloads/{wl['id']}").status_code == 200
        assert agent.workload(kept["id"])["status"] == "completed"
        _assert_nothing_listed_is_missing(agent)
        print(f"{when}: record {status}, {left} file(s) left in the trash at the kill, "
              f"round {time.monotonic() - t0:.2f}s")
    assert caught_mid_way, "no round killed the agent while the files were being removed"
    assert agent.resources()["allocated"]["storage"] == len(KEPT)
    assert _listed(agent) == [f"{kept['data_key']}/kept.txt"]
