"""Hostile bus neighbours at a real agent (in-process, tests/inprocess.py): junk heartbeats,
summaries, snapshots and events from a fake child, and an impostor of an alive child. The
agent's own answers (``Nodes``, a submit that needs the neighbour view) stay whole, nothing
leaks, and only the offender's entry says what was refused."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from bus import payloads
from bus import protocol as p
from cnet import neighbours
from cnet.ops import Nodes, Submit

from .bus.test_malformed import RawNeighbour, beat
from .harness import process_spec

if TYPE_CHECKING:
    from .inprocess import Cluster

PAIR = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}
SMALL_ROOT = {"jiangsu": {"resources": {"cpu": 0.5}}, "nanjing": {"resources": {"cpu": 3.0}}}
JUNK = [({"summary": {"nodes": "many"}}, "summary.nodes"),
        ({"snapshot": {"workloads": [1]}}, "snapshot.workloads"),
        ({"snapshot": {"capacity": {"cpu": 1e9}, "available": {"cpu": 1e9}}}, "capacity.cpu"),
        ({"summary": {"max_free": {"cpu": 1e12}, "reach_free": {"cpu": "all"}}}, "max_free.cpu")]


def _no_leaks(cluster: Cluster) -> None:
    for name, agent in cluster.agents.items():
        running = sum(wl.requirements.cpu for wl in agent.manager.list("running"))
        assert agent.register.allocated.cpu == pytest.approx(running), name


async def _nodes(cluster: Cluster, name: str = "jiangsu") -> dict[str, dict]:
    doc = await cluster.run(name, Nodes())
    return {entry["node_id"]: entry for entry in doc["nodes"]}


async def test_junk_from_a_fake_child_leaves_the_nodes_answers_whole(inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root = cluster["jiangsu"]
        async with RawNeighbour(root.bus.router_endpoint) as fake:
            assert isinstance(await fake.hello("mallory"), p.Welcome)
            for seq, (junk, where) in enumerate(JUNK, 2):
                await fake.send(beat("mallory", seq=seq, **junk))
                (answer,) = await fake.answers()
                assert isinstance(answer, p.Reply) and not answer.ok
                assert where in (await _nodes(cluster))["mallory"]["rejected"]
            def junk_event() -> str:
                fake.publish(p.Event(node_id="mallory", epoch=1, seq=9, kind="workload",
                                     data={"id": 5, "status": "running"}, sent_at=0.0),
                             to="jiangsu")
                return root.bus.neighbour("mallory").rejected
            for _ in range(200):                       # until the agent's SUB has joined
                if "workload data.id" in junk_event():
                    break
                await asyncio.sleep(0.01)
            assert "workload data.id" in root.bus.neighbour("mallory").rejected

            nodes = await _nodes(cluster)              # the agent's own answers: whole
            assert nodes["mallory"]["capacity"] is None and nodes["mallory"]["workloads"] is None
            assert nodes["nanjing"]["rejected"] is None
            assert nodes["nanjing"]["capacity"]["cpu"] == 3.0
            assert nodes["jiangsu"]["subtree"]["nodes"] == 2     # no summary of mallory taken
            placed = (await cluster.run("jiangsu", Submit(workload=process_spec())))["workload"]
            assert (placed["node_id"], placed["status"]) == ("nanjing", "running")
            _no_leaks(cluster)


async def test_an_impostor_of_an_alive_child_changes_nothing(inprocess_cluster):
    """B's epoch read off B's PUB, a hello as B with it every 50 ms and a heartbeat of seq
    2**62 claiming 1 cpu: the root keeps B's 3 cpus and sends B's work to B."""
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root, nanjing = cluster["jiangsu"], cluster["nanjing"]
        async with RawNeighbour(root.bus.router_endpoint) as impostor:
            epoch = await impostor.read_epoch(nanjing.bus.pub_endpoint, nanjing.bus.publish)
            lie = {"capacity": {"cpu": 1.0}, "available": {"cpu": 1.0}}
            seen, answers = [], []
            for _ in range(20):
                await impostor.send(p.Hello(node_id="nanjing", role="child", epoch=epoch,
                                            pub=impostor.pub_endpoint))
                await impostor.send(beat("nanjing", epoch, 2**62, snapshot=lie))
                answers += await impostor.answers(0.05)
                seen.append((await _nodes(cluster))["nanjing"]["capacity"]["cpu"])
            assert seen == [3.0] * 20
            assert {a.code for a in answers if isinstance(a, p.Refuse)} == {
                "duplicate_node", "hello_required"}
            placed = (await cluster.run("jiangsu", Submit(workload=process_spec())))["workload"]
            assert placed["node_id"] == "nanjing"
            assert nanjing.manager.get(placed["id"]).status == "running"
            assert not [a for a in await impostor.answers(0.1) if isinstance(a, p.Request)]
            _no_leaks(cluster)


async def test_what_an_agent_sends_fits_the_bus_schemas(inprocess_cluster):
    async with inprocess_cluster(PAIR) as cluster:
        wl = (await cluster.run("nanjing", Submit(workload=process_spec(
            labels={"app": "web"}))))["workload"]
        for agent in cluster.agents.values():
            snap = neighbours.self_snapshot(agent.local)
            summary = neighbours.summary(agent.local, agent.bus.neighbours())
            assert payloads.SNAPSHOT.check(snap, "snapshot") == snap
            assert payloads.SUMMARY.check(summary, "summary") == summary
        assert payloads.WORKLOAD.check(wl, "workload") == wl
        assert payloads.check_result("delegate", wl) == wl


@pytest.mark.parametrize("extra,warned", [({}, True), ({"api": {"token": "t"}}, False)])
async def test_an_exposed_bus_without_curve_or_token_warns_at_start(inprocess_cluster, caplog,
                                                                    extra, warned):
    caplog.set_level(logging.WARNING, logger="cnet.agent")
    config = {"agent": {"address": "0.0.0.0"}, **extra}
    async with inprocess_cluster({"jiangsu": {}}, config=config):
        said = [r.getMessage() for r in caplog.records
                if "the bus listens on 0.0.0.0 with neither Curve nor a token" in r.getMessage()]
        assert bool(said) == warned
