"""Exact reconciliation after a cut, in-process on a hand-moved clock: when a node is heard
again (after a new handshake) every mirror of the origin equals the node's own record."""

from __future__ import annotations

import asyncio
import sqlite3

from cnet.ops import Caller, Delegate, Delete, Get, List, Reconcile, Stop

from .bus.harness import until
from .harness import process_spec
from .test_inprocess import PAIR, SMALL_ROOT, submit


async def _cut(cluster) -> None:
    cluster.hold("nanjing")                            # nanjing beats no more: lost at jiangsu
    await cluster.advance(cluster.loss_window + cluster.interval)


async def _heal(cluster) -> None:
    cluster.release("nanjing")
    await cluster.advance(cluster.interval)


async def test_changes_during_a_cut_show_at_the_origin_once_the_node_is_back(inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root = cluster["jiangsu"]
        keeps = await submit(cluster, "jiangsu", process_spec("keeps"))
        stopped = await submit(cluster, "jiangsu", process_spec("stopped"))
        done = await submit(cluster, "jiangsu", process_spec(
            "done", command="sh", args=["-c", f"while [ ! -e {cluster.root}/go ]; do sleep 0.02; done"]))
        deleted = await submit(cluster, "jiangsu", process_spec("deleted"))
        assert {w["node_id"] for w in (keeps, stopped, done, deleted)} == {"nanjing"}

        await _cut(cluster)
        assert {root.mirrors.get(w["id"]).status for w in (keeps, stopped, done, deleted)} == {"lost"}
        # Meanwhile on nanjing (its events do not reach jiangsu: it is lost there).
        await cluster.run("nanjing", Stop(id=stopped["id"]))
        (cluster.root / "go").touch()
        await until(lambda: cluster["nanjing"].manager.get(done["id"]).status == "completed", 5,
                    "the job to complete on nanjing")
        await cluster.run("nanjing", Delete(id=deleted["id"]))

        await _heal(cluster)
        nanjing = cluster["nanjing"].manager

        def reconciled() -> bool:
            return all(root.mirrors.get(w["id"]) is not None
                       and root.mirrors.get(w["id"]).status == nanjing.get(w["id"]).status
                       for w in (keeps, stopped, done)) and root.mirrors.get(deleted["id"]) is None

        await until(reconciled, 5, "every mirror to equal nanjing's record")
        for w in (keeps, stopped, done):
            mirror, real = root.mirrors.get(w["id"]), nanjing.get(w["id"])
            assert (mirror.status, mirror.version, mirror.exit_code) == (
                real.status, real.version, real.exit_code)
        listed = (await cluster.run("jiangsu", List()))["workloads"]
        assert sorted(w["name"] for w in listed) == ["done", "keeps", "stopped"]   # no ghost


async def test_a_workload_started_although_its_delegation_failed_is_listed(inprocess_cluster):
    """The origin gave up on the answer (say nanjing was lost before it came): nanjing runs
    it anyway, and the reconcile at the next join lists it at the origin."""
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root, nanjing = cluster["jiangsu"], cluster["nanjing"]
        spec = {**process_spec("orphan", cpu=1.0), "id": "0rphan000000cafe"}
        await cluster.run("nanjing", Delegate(workload=spec, origin="jiangsu"),
                          Caller(node_id="jiangsu", hops=1, visited=("jiangsu",)))
        assert root.mirrors.get(spec["id"]) is None
        await _cut(cluster)
        await _heal(cluster)
        await until(lambda: root.mirrors.get(spec["id"]) is not None, 5, "jiangsu to list it")
        seen = await cluster.run("jiangsu", Get(id=spec["id"]))
        assert (seen["node_id"], seen["status"]) == ("nanjing", "running")
        assert nanjing.manager.get(spec["id"]).status == "running"


async def test_a_mirror_whose_write_never_landed_comes_back_from_the_node_running_it(
        inprocess_cluster):
    """The origin answers before its mirror is committed (mirrors are written after the step,
    ``Store.insert_soon``). Had it crashed in between, nothing is lost: the node running the
    workload committed its record before answering, and names it at the next join."""
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        wl = await submit(cluster, "jiangsu", process_spec("kept"))
        assert wl["node_id"] == "nanjing"
        db = cluster["jiangsu"].store.path
        await cluster.stop("jiangsu")
        with sqlite3.connect(db) as conn:            # as if the crash had come before the commit
            assert conn.execute("DELETE FROM workloads WHERE id = ?", (wl["id"],)).rowcount == 1
        root = await cluster.start("jiangsu")             # it loaded no mirror of it
        await until(lambda: root.mirrors.get(wl["id"]) is not None, 5, "jiangsu to list it again")
        seen = await cluster.run("jiangsu", Get(id=wl["id"]))
        assert (seen["node_id"], seen["status"], seen["via"]) == ("nanjing", "running", "nanjing")
        await cluster.run("jiangsu", Stop(id=wl["id"]))      # and it is reached through it
        assert cluster["nanjing"].manager.get(wl["id"]).status == "stopped"


async def test_reconcile_answers_only_for_what_was_asked_and_what_the_asker_delegated(
        inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        wl = await submit(cluster, "jiangsu", process_spec("mine"))
        await submit(cluster, "nanjing", process_spec("nanjing's own"))
        answer = await cluster.run("nanjing", Reconcile(ids=(wl["id"], "nosuchid")),
                                   Caller(node_id="jiangsu"))
        assert [w["id"] for w in answer["workloads"]] == [wl["id"]]
        assert answer["extra"] == []
        stranger = await cluster.run("nanjing", Reconcile(), Caller(node_id="suqian"))
        assert stranger["workloads"] == stranger["extra"] == []


async def test_a_dropped_workload_event_is_healed_by_the_next_view_change(inprocess_cluster):
    """Workload events are broadcasts (PUB/SUB may drop one); a neighbour's heartbeats carry its
    view reliably, so a changed view with a live mirror through it checks that mirror again."""
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root, nanjing = cluster["jiangsu"], cluster["nanjing"]
        wl = await submit(cluster, "jiangsu", process_spec("ends"))
        # As if the broadcast of its end were lost: jiangsu takes no report while it stops.
        take = root.mirrors.update
        root.mirrors.update = lambda *args, **kwargs: None
        try:
            await cluster.run("nanjing", Stop(id=wl["id"]))
            await cluster.published("nanjing")
        finally:
            root.mirrors.update = take
        assert root.mirrors.get(wl["id"]).status == "running"
        assert nanjing.manager.get(wl["id"]).status == "stopped"
        await cluster.advance(3 * cluster.interval)
        await submit(cluster, "nanjing", process_spec("another"))     # nanjing's view changes
        await until(lambda: root.mirrors.get(wl["id"]).status == "stopped", 5,
                    "the mirror healed from nanjing's record")


async def test_nothing_starts_in_the_background_once_the_node_is_stopping(inprocess_cluster):
    """stop() cancels what runs in the background, then closes the bus; a neighbour's rejoin
    or view change seen meanwhile must not start a reconcile that nobody will cancel."""
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        nanjing = cluster["nanjing"]
        begun = []

        async def background() -> None:
            begun.append(True)
            await asyncio.Event().wait()

        stopping = asyncio.ensure_future(cluster.stop("nanjing"))
        await asyncio.sleep(0)                      # stop() has begun: its first await
        nanjing.spawn(nanjing.watch.reconciler.reconcile(cluster.node_id("jiangsu")))
        nanjing.spawn(background())
        await stopping
        await asyncio.sleep(0)
        assert not begun
        assert not [t for t in asyncio.all_tasks() if "reconcile" in repr(t.get_coro())
                    and not t.done()]
