"""Agents in one event loop on a hand-moved clock (tests/inprocess.py): the Manager, placement,
the mirror book, liveness and hello admission, with no agent subprocess and no sleep."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from cnet.errors import BadRequest, CnetError, NotFound
from cnet.ops import Delete, Get, List, Nodes, Stop, Submit

from .bus.harness import until
from .harness import REPO, gone, load_topology, process_spec

if TYPE_CHECKING:
    from cnet.agent import Agent

    from .inprocess import Cluster

JIANGSU = load_topology(REPO / "topologies" / "jiangsu.yaml")
PAIR = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}
TWO_CHILDREN = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suqian": {"parent": "jiangsu"}}
SMALL_ROOT = {"jiangsu": {"resources": {"cpu": 0.5}}}   # the seed's province with too little cpu
TWO_CPU = {"resources": {"cpu": 2.0}}
NODE_FIELDS = {"node_id", "role", "status", "last_seen", "address", "capacity", "allocated",
               "available"}


async def submit(cluster: Cluster, name: str, spec: dict) -> dict:
    """Submit at ``name``; the workload placed (wherever it went)."""
    return (await cluster.run(name, Submit(workload=spec)))["workload"]


def allocated(agent: Agent) -> float:
    return agent.register.resources()["allocated"]["cpu"]


def local_ids(agent: Agent) -> list[str]:
    return sorted(wl.id for wl in agent.manager.list())


def assert_no_leaks(cluster: Cluster) -> None:
    for name, agent in cluster.agents.items():
        running = sum(wl.requirements.cpu for wl in agent.manager.list("running"))
        assert allocated(agent) == pytest.approx(running), name


def status_at(cluster: Cluster, name: str, other: str) -> str | None:
    state = cluster[name].bus.neighbour(cluster.node_id(other))
    return state and state.status


def refusals(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


# -- the Manager ---------------------------------------------------------------------------


async def test_admit_stop_delete_a_process(inprocess_cluster):
    async with inprocess_cluster({"jiangsu": {}}) as cluster:
        root = cluster["jiangsu"]
        placed = await cluster.run("jiangsu", Submit(workload=process_spec()))
        wl = placed["workload"]
        assert placed["created"] and (wl["status"], wl["node_id"]) == ("running", "jiangsu")
        assert not gone(wl["process_pid"]) and allocated(root) == 1.0

        stopped = await cluster.run("jiangsu", Stop(id=wl["id"]))
        assert stopped["status"] == "stopped" and gone(wl["process_pid"])
        assert allocated(root) == 0.0                     # the reservation went with it
        assert (await cluster.run("jiangsu", Stop(id=wl["id"])))["status"] == "stopped"

        assert await cluster.run("jiangsu", Delete(id=wl["id"])) == {"id": wl["id"], "deleted": True}
        with pytest.raises(NotFound):
            await cluster.run("jiangsu", Get(id=wl["id"]))
        assert local_ids(root) == []


async def test_a_restarted_agent_recovers_its_running_workload(inprocess_cluster):
    async with inprocess_cluster({"jiangsu": {}}) as cluster:
        wl = await submit(cluster, "jiangsu", process_spec())
        before = cluster["jiangsu"]
        again = await cluster.restart("jiangsu")          # same state dir, a new Agent
        assert again is not before
        back = await cluster.run("jiangsu", Get(id=wl["id"]))
        assert (back["status"], back["process_pid"]) == ("running", wl["process_pid"])
        assert allocated(again) == 1.0

        assert (await cluster.run("jiangsu", Stop(id=wl["id"])))["status"] == "stopped"
        assert gone(wl["process_pid"]) and allocated(again) == 0.0


# -- placement -----------------------------------------------------------------------------


async def test_too_big_for_the_origin_goes_to_the_child_that_fits(inprocess_cluster):
    small = {n: {"resources": {"cpu": 0.5}} for n in ("jiangsu", "nanjing")}
    async with inprocess_cluster(TWO_CHILDREN, node_config=small) as cluster:
        wl = await submit(cluster, "jiangsu", process_spec(cpu=1.0))
        assert (wl["node_id"], wl["status"], wl["origin"]) == ("suqian", "running", "jiangsu")
        assert local_ids(cluster["suqian"]) == [wl["id"]] and allocated(cluster["suqian"]) == 1.0
        assert local_ids(cluster["jiangsu"]) == local_ids(cluster["nanjing"]) == []
        assert_no_leaks(cluster)


async def test_a_placing_node_remakes_its_snapshot_after_each_change_before_it_is_read(
        inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config={"jiangsu": {"resources": {"cpu": 0.5}}}) \
            as cluster:
        root, child = cluster.node_id("jiangsu"), cluster.node_id("nanjing")
        placer = cluster["jiangsu"].placer

        def kept_view(node_id: str):
            snap = placer._snaps[frozenset({root})][1]
            return snap.nodes[snap.index[node_id]]

        # The first delegation reads the neighbours: from now on the root keeps its snapshot.
        await submit(cluster, "jiangsu", process_spec(cpu=1.0))
        # The child's report of its new allocation: the snapshot is remade as it arrives.
        await until(lambda: kept_view(child).available.cpu == 7.0, 5, "the child's report")
        # The root's own allocation: remade after the step that made it, not on the next read.
        await submit(cluster, "jiangsu", process_spec(cpu=0.25, placement={"node": root}))
        await until(lambda: kept_view(root).available.cpu == 0.25, 5, "the root's allocation")


# -- the mirror book -----------------------------------------------------------------------


async def test_the_origin_mirrors_a_delegated_workload_and_hears_only_its_route(inprocess_cluster):
    config = {"jiangsu": {"resources": {"cpu": 0.5}}, "suqian": {"resources": {"cpu": 0.5}}}
    async with inprocess_cluster(TWO_CHILDREN, node_config=config) as cluster:
        root, nanjing, suqian = cluster["jiangsu"], cluster["nanjing"], cluster["suqian"]
        wl = await submit(cluster, "jiangsu", process_spec())
        mirror = root.mirrors.get(wl["id"])
        assert (mirror.node_id, mirror.runtime["via"], mirror.status) == ("nanjing", "nanjing", "running")
        assert local_ids(root) == []

        # suqian reports on it: not the neighbour it went through, so the mirror does not move.
        suqian.bus.publish_event("workload", {**wl, "status": "failed", "message": "forged"})
        await cluster.published("suqian")                 # later on suqian's PUB: the forgery is in
        assert (mirror.status, mirror.message) == ("running", wl["message"])

        await cluster.run("nanjing", Stop(id=wl["id"]))   # nanjing's own report is taken
        await until(lambda: root.mirrors.get(wl["id"]).status == "stopped", 5, "the mirror to follow")
        assert nanjing.manager.get(wl["id"]).status == "stopped"


async def test_a_mirror_turns_lost_with_its_node_and_is_refreshed_when_it_is_heard(inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root = cluster["jiangsu"]
        wl = await submit(cluster, "jiangsu", process_spec())
        assert wl["node_id"] == "nanjing"
        cluster.hold("nanjing")                           # no more heartbeats from nanjing
        await cluster.advance(cluster.loss_window + cluster.interval)
        lost = await cluster.run("jiangsu", Get(id=wl["id"]))
        assert (lost["status"], lost["node_id"]) == ("lost", "nanjing")
        assert "nanjing" in lost["message"]
        assert cluster["nanjing"].manager.get(wl["id"]).status == "running"

        cluster.release("nanjing")
        await cluster.advance(cluster.interval)           # its next beat: alive, mirrors refreshed
        await until(lambda: root.mirrors.get(wl["id"]).status == "running", 5, "the mirror refreshed")
        back = await cluster.run("jiangsu", Get(id=wl["id"]))
        assert (back["node_id"], back["process_pid"]) == ("nanjing", wl["process_pid"])


# -- liveness ------------------------------------------------------------------------------


async def test_lost_after_missed_beats_and_alive_again(inprocess_cluster):
    async with inprocess_cluster(PAIR) as cluster:
        await cluster.advance(10 * cluster.interval)      # beats flow: nobody is lost
        assert status_at(cluster, "jiangsu", "nanjing") == status_at(cluster, "nanjing", "jiangsu") == "alive"

        cluster.hold("nanjing")
        await cluster.advance(cluster.loss_window)        # silent for exactly the window: alive
        assert status_at(cluster, "jiangsu", "nanjing") == "alive"
        await cluster.advance(cluster.interval)           # one beat more: lost
        assert status_at(cluster, "jiangsu", "nanjing") == "lost"
        children = (await cluster.run("jiangsu", Nodes()))["children"]
        assert [(c["node_id"], c["status"]) for c in children] == [("nanjing", "lost")]

        cluster.release("nanjing")
        await cluster.advance(cluster.interval)
        await until(lambda: status_at(cluster, "jiangsu", "nanjing") == "alive", 5, "nanjing alive")
        assert status_at(cluster, "nanjing", "jiangsu") == "alive"   # its own time stood still


# -- hello admission -----------------------------------------------------------------------


async def test_a_child_with_the_wrong_token_is_refused(inprocess_cluster, caplog):
    topology = {**PAIR, "gulou": {"parent": "jiangsu"}}
    async with inprocess_cluster(topology, config={"api": {"token": "s3cret"}},
                                 node_config={"gulou": {"api": {"token": "wrong"}}},
                                 later=["gulou"]) as cluster:
        await cluster.start("gulou", linked=False)
        said = await until(lambda: refusals(caplog, "refused hello from gulou"), 5, "the refusal")
        assert "lacks this node's token" in said[0]
        await until(lambda: refusals(caplog, "(unauthorized)"), 5, "gulou to hear it was refused")
        assert cluster["jiangsu"].bus.neighbour("gulou") is None
        children = (await cluster.run("jiangsu", Nodes()))["children"]
        assert [c["node_id"] for c in children] == ["nanjing"]
        assert cluster["gulou"].bus.neighbour("jiangsu") is None


async def test_a_duplicate_node_id_is_refused(inprocess_cluster, caplog):
    topology = {**PAIR, "twin": {"parent": "jiangsu"}}
    async with inprocess_cluster(topology, node_config={"twin": {"agent": {"node_id": "nanjing"}}},
                                 later=["twin"]) as cluster:
        await cluster.start("twin", linked=False)
        said = await until(lambda: refusals(caplog, "refused hello from nanjing"), 5, "the refusal")
        assert "already joined and alive" in said[0]
        await until(lambda: refusals(caplog, "(duplicate_node)"), 5, "the twin to hear it")
        children = (await cluster.run("jiangsu", Nodes()))["children"]
        first = cluster["nanjing"]
        assert [(c["node_id"], c["address"], c["status"]) for c in children] == \
            [("nanjing", first.config.url, "alive")]
        assert cluster["twin"].bus.neighbour("jiangsu") is None


# -- moved from the process tests (test_delegation.py, test_cluster_bus.py): logic only ------


async def test_subtree_listing(inprocess_cluster):
    async with inprocess_cluster(JIANGSU, config=TWO_CPU, node_config=SMALL_ROOT) as cluster:
        here = await submit(cluster, "jiangsu", process_spec("at-root", cpu=0.25))
        below = await submit(cluster, "nanjing", process_spec("at-nanjing", cpu=1.0))  # there directly
        far = await submit(cluster, "nanjing", process_spec("at-peer", cpu=1.0,
                                                            placement={"node": "changzhou"}))
        local = {wl["id"] for wl in (await cluster.run("jiangsu", List()))["workloads"]}
        assert local == {here["id"]}
        doc = await cluster.run("jiangsu", List.parse({"scope": "subtree"}))
        assert doc["scope"] == "subtree"
        where = {wl["id"]: wl["node_id"] for wl in doc["workloads"]}
        assert where == {here["id"]: "jiangsu", below["id"]: "nanjing", far["id"]: "changzhou"}
        with pytest.raises(BadRequest) as galaxy:
            List.parse({"scope": "galaxy"})
        assert galaxy.value.status == 400


async def test_same_id_never_starts_twice(inprocess_cluster):
    async with inprocess_cluster(JIANGSU, config=TWO_CPU, node_config=SMALL_ROOT) as cluster:
        nanjing = cluster["nanjing"]
        spec = {**process_spec(), "id": "retry-me"}
        first = await cluster.run("jiangsu", Submit(workload=spec))
        again = await cluster.run("jiangsu", Submit(workload=spec))
        assert first["created"] and not again["created"]           # REST: 201, then 200
        first, again = first["workload"], again["workload"]
        assert first["node_id"] == again["node_id"] == "nanjing"
        assert first["process_pid"] == again["process_pid"]
        assert local_ids(nanjing) == ["retry-me"] and allocated(nanjing) == 1.0

        # Known only where it runs: delegating the same id again returns the existing workload.
        there = await submit(cluster, "nanjing", {**process_spec(), "id": "placed-there"})
        via_root = await submit(cluster, "jiangsu", {**process_spec(), "id": "placed-there"})
        assert via_root["node_id"] == "nanjing" and via_root["process_pid"] == there["process_pid"]
        assert local_ids(nanjing) == ["placed-there", "retry-me"] and allocated(nanjing) == 2.0

        with pytest.raises(CnetError) as changed:
            await submit(cluster, "jiangsu", {**spec, "name": "other"})
        assert (changed.value.status, changed.value.code) == (409, "id_conflict")
        assert_no_leaks(cluster)


async def test_placement_constraints(inprocess_cluster):
    async with inprocess_cluster(JIANGSU, config=TWO_CPU, node_config=SMALL_ROOT) as cluster:
        for target in ("nanjing", "suqian", "changzhou"):
            wl = await submit(cluster, "jiangsu", process_spec(cpu=0.25, placement={"node": target}))
            assert wl["node_id"] == target
        north = await submit(cluster, "jiangsu", process_spec(
            cpu=0.25, placement={"node_selector": {"zone": "north"}}))
        assert north["node_id"] == "suqian"
        south = await submit(cluster, "suqian", process_spec(
            cpu=0.25, placement={"node_selector": {"zone": "south"}}))
        assert south["node_id"] in ("nanjing", "changzhou")

        async def refused(placement: dict) -> BadRequest:
            with pytest.raises(BadRequest) as bad:
                await submit(cluster, "jiangsu", process_spec(placement=placement))
            assert bad.value.status == 400
            return bad.value

        assert "unknown strategy 'fastest'" in (await refused({"strategy": "fastest"})).message
        assert "placement" in (await refused({"nodes": "suqian"})).message
        # Impossible constraints (no known node could ever meet them) are the request's fault.
        nowhere = await refused({"node": "shanghai"})
        assert nowhere.code == "impossible_placement" and "shanghai" in nowhere.message
        assert "zone=west" in (await refused({"node_selector": {"zone": "west"}})).message
        assert_no_leaks(cluster)


async def test_jiangsu_cluster_joins_with_roles_and_resources(inprocess_cluster):
    async with inprocess_cluster(JIANGSU, node_config={"nanjing": {"resources": {"cpu": 3.0}}}) as cluster:
        roles = {
            "jiangsu": {"nanjing": "child"},
            "nanjing": {"jiangsu": "parent", "suqian": "peer", "changzhou": "peer"},
            "suqian": {"nanjing": "peer", "changzhou": "peer"},
            "changzhou": {"nanjing": "peer", "suqian": "peer"},
        }
        views = {n: await cluster.run(n, Nodes()) for n in cluster.agents}
        for node_id, doc in views.items():
            assert doc["self"]["node_id"] == node_id and doc["self"]["role"] == "self"
            listed = [e for e in [doc["parent"], *doc["children"], *doc["peers"]] if e]
            assert node_id not in {e["node_id"] for e in listed}          # 剔除本节点
            assert {e["node_id"]: e["role"] for e in listed} == roles[node_id]
            for entry in listed:
                assert NODE_FIELDS <= set(entry), entry
                assert entry["status"] == "alive"
                assert entry["address"] == cluster[entry["node_id"]].config.url
                assert entry["capacity"]["cpu"] == (3.0 if entry["node_id"] == "nanjing" else 8.0)
                assert entry["available"]["cpu"] == entry["capacity"]["cpu"] - entry["allocated"]["cpu"]
        child = views["jiangsu"]["children"][0]
        # nanjing has no children: its subtree is itself; through its peers it reaches 8 free cpu.
        assert child["subtree"]["nodes"] == 1
        assert child["subtree"]["max_free"]["cpu"] == 3.0
        assert child["subtree"]["reach_free"]["cpu"] == 8.0
        assert views["jiangsu"]["self"]["subtree"]["nodes"] == 2


async def test_allocation_reaches_parent_and_peers_before_any_heartbeat(inprocess_cluster):
    # The clock stands still, so no heartbeat goes out: a change seen can only have come by broadcast.
    async with inprocess_cluster(JIANGSU) as cluster:
        watchers = [cluster[n] for n in ("jiangsu", "suqian", "changzhou")]

        def allocated_at(agent: Agent) -> float:
            return agent.bus.neighbour("nanjing").snapshot["allocated"]["cpu"]

        ids = []
        for expected in (1.0, 2.0, 3.0):
            ids.append((await submit(cluster, "nanjing", process_spec(name=f"alloc-{expected:g}")))["id"])
            for agent in watchers:
                await until(lambda a=agent, e=expected: allocated_at(a) == e, 2.0,
                            f"{agent.config.node_id} to see nanjing allocate {expected:g} cpu")
        await cluster.run("nanjing", Stop(id=ids[0]))
        for agent in watchers:
            await until(lambda a=agent: allocated_at(a) == 2.0, 2.0,
                        f"{agent.config.node_id} to see nanjing release 1 cpu")
