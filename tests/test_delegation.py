"""Issue 4 on real clusters: the seed's Jiangsu scenario, one- and two-hop delegation, mirrors and
forwarding, loop prevention, idempotent retries, placement constraints and the 50-submit race
(the checks of logic alone run in-process, in test_inprocess.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from bus import BusNode, RemoteError

from .bus.harness import until
from .harness import REPO, AgentProcess, gone, load_topology, process_spec, wait_for

JIANGSU = load_topology(REPO / "topologies" / "jiangsu.yaml")
FAST = {"bus": {"heartbeat_interval": 0.2, "heartbeat_misses": 3}}
SMALL_ROOT = {"jiangsu": {"resources": {"cpu": 0.5}}}   # the seed's province with too little cpu
CYCLE = {"a": {"peers": ["b", "c"]}, "b": {"peers": ["a", "c"]}, "c": {"peers": ["a", "b"]}}
SEED_PROCESS = process_spec("test-process", "sleep", ("60",), cpu=1.0, memory=536870912)


@pytest.fixture
def jiangsu(make_cluster):
    """The seed's four nodes, 2 cpu each except jiangsu (0.5)."""
    return make_cluster(JIANGSU, config={**FAST, "resources": {"cpu": 2.0}}, node_config=SMALL_ROOT)


def child_view(agent: AgentProcess, node_id: str) -> dict:
    return next(c for c in agent.api("GET", "/api/nodes").json()["children"] if c["node_id"] == node_id)


def local_workloads(agent: AgentProcess) -> list[dict]:
    """Workloads that run on ``agent`` itself (mirrors left out)."""
    items = agent.api("GET", "/api/workloads").json()["workloads"]
    return [wl for wl in items if wl["node_id"] == agent.node_id]


def running_cpu(agent: AgentProcess) -> float:
    return sum(wl["requirements"]["cpu"] for wl in local_workloads(agent) if wl["status"] == "running")


def assert_no_leaks(cluster: dict[str, AgentProcess]) -> None:
    for agent in cluster.values():
        assert agent.resources()["allocated"]["cpu"] == pytest.approx(running_cpu(agent)), agent.node_id


# -- the seed's scenario ---------------------------------------------------------------------


def test_seed_scenario_lands_on_nanjing_then_on_its_peers(jiangsu):
    root, nanjing = jiangsu["jiangsu"], jiangsu["nanjing"]
    first = root.submit(SEED_PROCESS)
    assert first["status"] == "running" and first["node_id"] == "nanjing"
    assert first["origin"] == "jiangsu" and first["process_pid"]
    assert nanjing.resources()["allocated"]["cpu"] == 1.0
    assert nanjing.workload(first["id"])["status"] == "running"
    # The broadcast reaches jiangsu's view at once, not with some later heartbeat.
    wait_for(lambda: child_view(root, "nanjing")["allocated"]["cpu"] == 1.0, timeout=2.0,
             message="jiangsu's /api/nodes to show nanjing's allocation")
    assert root.resources()["allocated"]["cpu"] == 0.0

    second = root.submit(SEED_PROCESS)
    assert second["node_id"] == "nanjing"
    wait_for(lambda: child_view(root, "nanjing")["available"]["cpu"] == 0.0, timeout=2.0,
             message="nanjing full in jiangsu's view")
    # nanjing is full: two hops, through nanjing's peers.
    third = root.submit(SEED_PROCESS)
    assert third["node_id"] in ("suqian", "changzhou")
    assert third["via"] == "nanjing"
    assert jiangsu[third["node_id"]].resources()["allocated"]["cpu"] == 1.0
    assert nanjing.workload(third["id"])["node_id"] == third["node_id"]   # nanjing mirrors it too
    assert_no_leaks(jiangsu)


def test_forwarded_logs_stop_and_delete_two_hops_away(jiangsu):
    root = jiangsu["jiangsu"]
    spec = process_spec("chatty", "sh", ("-c", "echo hello-from-afar; sleep 60"), cpu=1.0,
                        placement={"node": "suqian"})
    wl = root.submit(spec)
    assert wl["node_id"] == "suqian" and wl["via"] == "nanjing"
    suqian = jiangsu["suqian"]
    pid = wl["process_pid"]

    logs = wait_for(lambda: (t := root.api("GET", f"/api/workloads/{wl['id']}/logs").text)
                    and "hello-from-afar" in t and t, timeout=10, message="logs through two hops")
    assert "hello-from-afar" in logs

    stopped = root.api("POST", f"/api/workloads/{wl['id']}/stop")
    assert stopped.status_code == 200, stopped.text
    assert suqian.workload(wl["id"])["status"] in ("stopped", "completed")
    wait_for(lambda: root.workload(wl["id"])["status"] in ("stopped", "completed"), timeout=5,
             message="the origin's mirror to follow the stop")
    wait_for(lambda: gone(pid), timeout=10, message="the process to end")
    assert suqian.resources()["allocated"]["cpu"] == 0.0

    deleted = root.api("DELETE", f"/api/workloads/{wl['id']}")
    assert deleted.status_code in (200, 204), deleted.text
    for agent in (root, jiangsu["nanjing"], suqian):
        wait_for(lambda a=agent: a.api("GET", f"/api/workloads/{wl['id']}").status_code == 404,
                 timeout=5, message=f"{wl['id']} gone at {agent.node_id}")


# -- a lost node and its mirrors --------------------------------------------------------------


def test_mirror_of_a_lost_node_says_lost_and_recovers(make_cluster):
    cluster = make_cluster({"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}, config=FAST,
                           node_config=SMALL_ROOT)
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    wl = root.submit(SEED_PROCESS)
    assert wl["node_id"] == "nanjing"
    nanjing.kill()  # its workload keeps running, as after a real crash
    lost = root.wait_status(wl["id"], "lost", timeout=10)
    assert lost["node_id"] == "nanjing" and "nanjing" in lost["message"]
    assert not gone(wl["process_pid"])

    nanjing.start()  # re-adopts the process; jiangsu asks it how the mirror is doing
    back = root.wait_status(wl["id"], "running", timeout=20)
    assert back["node_id"] == "nanjing" and back["process_pid"] == wl["process_pid"]
    assert nanjing.resources()["allocated"]["cpu"] == 1.0


# -- loops, retries and constraints --------------------------------------------------------------


def test_cycle_of_peers_without_room_is_a_clean_503(make_cluster):
    cluster = make_cluster(CYCLE, config={**FAST, "resources": {"cpu": 1.0}})
    for origin in cluster.values():
        resp = origin.api("POST", "/api/workloads", json=process_spec(cpu=2.0), timeout=10)
        assert resp.status_code == 503, resp.text
        reasons = resp.json()["error"]["details"]["reasons"]
        assert {r.split(":")[0] for r in reasons} == {"a", "b", "c"}, reasons
        assert all("cpu 1 free < 2 requested" in r for r in reasons), reasons
    # Room for exactly three across the cycle, six asking at once from everywhere: each request
    # walks the cycle at most once, three run, three get a clean 503, nothing hangs.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: list(cluster.values())[i % 3].api(
            "POST", "/api/workloads", json=process_spec(f"cyc-{i}", cpu=1.0), timeout=20), range(6)))
    assert sorted(r.status_code for r in answers) == [201] * 3 + [503] * 3, [r.text for r in answers]
    assert_no_leaks(cluster)


def test_node_specific_checks_are_made_where_the_workload_runs(make_agent, tmp_path):
    """A command only nanjing has is refused at jiangsu but runs when placed on nanjing."""
    tools = tmp_path / "nanjing-bin"
    tools.mkdir()
    (tools / "only-on-nanjing").write_text("#!/bin/sh\nexec sleep 60\n")
    (tools / "only-on-nanjing").chmod(0o755)
    root = make_agent("jiangsu", config=FAST)
    child = make_agent("nanjing", config={**FAST, "parent": {"enabled": True,
                                                              "address": f"127.0.0.1:{root.port}"}},
                       env={"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"})
    wait_for(lambda: [c["status"] for c in root.api("GET", "/api/nodes").json()["children"]] == ["alive"],
             timeout=10, message="nanjing joined at jiangsu")

    there = root.submit(process_spec("there", command="only-on-nanjing", placement={"node": "nanjing"}))
    assert (there["node_id"], there["status"]) == ("nanjing", "running")
    assert child.workload(there["id"])["process_pid"] > 0

    here = root.api("POST", "/api/workloads", json=process_spec("here", command="only-on-nanjing"))
    assert here.status_code == 400, here.text
    assert here.json()["error"]["code"] == "command_not_found"
    assert here.json()["error"]["details"]["node_id"] == "jiangsu"
    # Refused over there: the same 400, naming the node; nothing reserved anywhere.
    far = root.api("POST", "/api/workloads", json=process_spec(
        "far", command="no-such-command-xyz", placement={"node": "nanjing"}))
    assert far.status_code == 400, far.text
    assert far.json()["error"]["code"] == "command_not_found"
    assert far.json()["error"]["details"]["node_id"] == "nanjing"
    names = {wl["name"] for agent in (root, child)
             for wl in agent.api("GET", "/api/workloads").json()["workloads"]}
    assert names == {"there"}
    assert root.api("GET", "/api/resources").json()["allocated"]["cpu"] == 0
    assert child.api("GET", "/api/resources").json()["allocated"]["cpu"] == 1.0


def test_a_neighbour_that_does_not_answer_is_waited_for_not_passed_over(make_cluster):
    """A delegation that times out may still start over there: never start it elsewhere too.
    It carries its deadline, so once over there it is refused as too late: it never starts
    behind the user's back, the origin says so, and the same id can be submitted again."""
    topology = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suqian": {"parent": "jiangsu"}}
    slow_beats = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3, "request_timeout": 0.5},
                  "services": {"start_timeout": 0.1}}   # a delegation times out after 5.1 s
    cluster = make_cluster(topology, config=slow_beats, node_config={
        "jiangsu": {"resources": {"cpu": 0.5}}, "nanjing": {"resources": {"cpu": 4.0}},
        "suqian": {"resources": {"cpu": 2.0}}})
    root, nanjing, suqian = cluster["jiangsu"], cluster["nanjing"], cluster["suqian"]
    nanjing.proc.send_signal(signal.SIGSTOP)   # alive to its neighbours, but answers nothing
    try:
        wl = root.submit(process_spec("patient", cpu=1.0))
        assert (wl["node_id"], wl["status"]) == ("nanjing", "pending"), wl
        assert local_workloads(suqian) == []
    finally:
        nanjing.proc.send_signal(signal.SIGCONT)
    # Both tries reach nanjing once it runs again, after their deadline: refused, not started.
    failed = wait_for(lambda: (w := root.workload(wl["id"]))["status"] == "failed" and w,
                      timeout=15, message="the mirror at jiangsu to learn it never started")
    assert "never started" in failed["message"]
    assert local_workloads(nanjing) == [] and local_workloads(suqian) == []
    again = root.submit(process_spec("patient", cpu=1.0, id=wl["id"]), expect=201)
    assert (again["id"], again["node_id"]) == (wl["id"], "nanjing")
    assert root.wait_status(wl["id"], "running")["node_id"] == "nanjing"
    assert [w["id"] for w in local_workloads(nanjing)] == [wl["id"]]


def test_the_same_id_sent_twice_at_once_is_placed_once(make_cluster):
    topology = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}
    beats = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3}}
    cluster = make_cluster(topology, config=beats, node_config={"jiangsu": {"resources": {"cpu": 0.5}}})
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    spec = process_spec("twice", cpu=1.0, id="a1b2c3d4e5f60718")
    nanjing.proc.send_signal(signal.SIGSTOP)   # hold the first placement in flight
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(root.api, "POST", "/api/workloads", json=spec)
            wait_for(lambda: root.workload(spec["id"]).get("status") == "pending", timeout=5,
                     message="jiangsu to show the workload as pending while it places it")
            second = pool.submit(root.api, "POST", "/api/workloads", json=spec)
            nanjing.proc.send_signal(signal.SIGCONT)
            answers = sorted([first.result(), second.result()], key=lambda r: r.status_code)
    finally:
        nanjing.proc.send_signal(signal.SIGCONT)
    assert [r.status_code for r in answers] == [200, 201], [r.text for r in answers]
    assert {(r.json()["id"], r.json()["node_id"]) for r in answers} == {(spec["id"], "nanjing")}
    assert [w["id"] for w in local_workloads(nanjing)] == [spec["id"]]


def test_a_delegation_lost_with_its_node_ends_failed_not_forgotten(make_cluster):
    # nanjing is lost (3 s) before the first try times out (5.1 s): the retry cannot even be sent.
    topology = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}
    beats = {"bus": {"heartbeat_interval": 1.0, "heartbeat_misses": 3, "request_timeout": 0.5},
             "services": {"start_timeout": 0.1}}
    cluster = make_cluster(topology, config=beats, node_config={"jiangsu": {"resources": {"cpu": 0.5}}})
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    nanjing.proc.send_signal(signal.SIGSTOP)
    wl = root.submit(process_spec("unlucky", cpu=1.0))
    assert wl["status"] == "pending"
    nanjing.kill()      # the requests it never read die with it
    nanjing.start()     # it comes back without the workload
    done = wait_for(lambda: (w := root.workload(wl["id"]))["status"] == "failed" and w, timeout=30,
                    message="jiangsu to learn that the workload never started")
    assert "never started" in done["message"]
    assert local_workloads(nanjing) == []


def test_a_delegation_that_comes_back_is_refused_as_a_loop(agent):
    """The visited guard itself: a node that finds itself among the visited refuses at once."""

    async def delegate_back() -> RemoteError:
        visitor = BusNode("visitor", peers=[f"127.0.0.1:{agent.port}"], heartbeat_interval=0.2)
        await visitor.start()
        try:
            await until(lambda: [n.status for n in visitor.neighbours()] == ["alive"], timeout=10,
                        what="the visitor to join jiangsu as a peer")
            with pytest.raises(RemoteError) as refused:
                await visitor.call("jiangsu", "delegate", {"workload": process_spec("looped")},
                                   hops=2, visited=["jiangsu", "visitor"])
            return refused.value
        finally:
            await visitor.close()

    refused = asyncio.run(delegate_back())
    assert refused.code == "loop" and refused.details["status"] == 409
    assert "already visited" in refused.message
    assert agent.api("GET", "/api/workloads").json()["count"] == 0
    assert agent.resources()["allocated"]["cpu"] == 0


# -- the race ----------------------------------------------------------------------------------


def test_fifty_concurrent_submits_for_twenty_slots(make_cluster):
    cluster = make_cluster(JIANGSU, config={**FAST, "resources": {"cpu": 5.0}})
    agents = list(cluster.values())

    def submit(i: int):
        return agents[i % 4].api("POST", "/api/workloads", json=process_spec(f"race-{i}", cpu=1.0),
                                 timeout=60)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 20 and codes.count(503) == 30, [r.text for r in answers if r.status_code != 201]
    for resp in answers:
        if resp.status_code == 503:
            error = resp.json()["error"]
            assert error["code"] == "insufficient_resources" and error["details"]["reasons"]
        else:
            assert resp.json()["status"] == "running"
    running = {a.node_id: len(local_workloads(a)) for a in agents}
    assert running == {n: 5 for n in cluster}
    assert_no_leaks(cluster)
