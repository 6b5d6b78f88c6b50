"""Replica sets on real agents: a set of opencv services spread over three nodes, its record,
scale up and down, replacement of a member that fails or whose node is lost, hostile input.

The opencv service with its bundled face cascade needs no model file, so these always run.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests

from cnet.client import SyncClient

from .harness import deep_merge, free_port_range, wait_for
from .service_helpers import FAST_SERVICES

ROOT, LEFT, RIGHT = "jiangsu", "nanjing", "suzhou"
TREE = {ROOT: {}, LEFT: {"parent": ROOT}, RIGHT: {"parent": ROOT}}
GIB = 1 << 30
# Fast supervision, and liveness within a few seconds (a killed node is lost soon).
CONFIG = deep_merge(FAST_SERVICES, {"services": {"max_restarts": 1},
                                    "bus": {"heartbeat_interval": 0.3, "heartbeat_misses": 4}})


def faces(set_id: str = "faces", replicas: int = 3, **extra) -> dict:
    return {"id": set_id, "name": "face-detection", "type": "opencv", "replicas": replicas,
            "config": {"cascade_type": "face"},
            "requirements": {"cpu": 1.0, "memory": GIB // 2}, **extra}


def start_tree(make_cluster, config: dict = CONFIG) -> dict:
    # Each agent its own service ports: they share this machine.
    node_config = {n: {"services": {"port_range": list(free_port_range(20))}} for n in TREE}
    return make_cluster(TREE, config=config, node_config=node_config)


@pytest.fixture
def tree(make_cluster):
    return start_tree(make_cluster)


def _detect(endpoint: str, image_b64: str) -> dict:
    resp = requests.post(endpoint.rstrip("/") + "/predict", json={"image": image_b64}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _set(agent, set_id: str = "faces") -> dict:
    return agent.workload(set_id)


def _running_members(agent, set_id: str, count: int, timeout: float = 30.0) -> list[dict]:
    def ready():
        record = _set(agent, set_id)
        running = [m for m in record["members"] if m["status"] == "running"]
        return len(record["members"]) == count and len(running) == count and running
    return wait_for(ready, timeout=timeout, message=f"{count} running members of {set_id}")


def submit_set(tree, replicas: int) -> tuple[dict, dict, object]:
    """Submit ``faces`` at the root: (the set's record, a member not on the root, its node)."""
    record = tree[ROOT].submit(faces(replicas=replicas))
    victim = next(m for m in record["members"] if m["node_id"] != ROOT)
    return record, victim, tree[victim["node_id"]]


def _fail(host, member_id: str) -> None:
    """kill -9 a member's service until its node gives up on it (max_restarts 1: twice)."""
    for restarts in (0, 1):
        wl = wait_for(lambda n=restarts: (w := host.workload(member_id))["status"] == "running"
                      and w["restart_count"] == n and w, timeout=20,
                      message=f"{member_id} running after {restarts} restarts")
        os.kill(wl["process_pid"], signal.SIGKILL)


def test_three_replicas_spread_over_three_nodes_answer_alike(tree, astronaut_b64):
    root = tree[ROOT]
    record = root.submit(faces())
    assert record["replicas"] == 3 and record["status"] == "running"
    assert record["requirements"] == {"cpu": 1.0, "memory": GIB // 2, "gpu": 0, "storage": 0}
    assert record["endpoint"] == f"http://127.0.0.1:{root.port}/svc/faces/"
    members = record["members"]
    assert [m["id"] for m in members] == ["faces-r1", "faces-r2", "faces-r3"]
    assert sorted(m["node_id"] for m in members) == sorted(TREE)      # one per node
    assert {m["status"] for m in members} == {"running"}
    # Each reserves its own resources on its node.
    for node_id, agent in tree.items():
        assert agent.resources()["allocated"]["cpu"] == 1.0, node_id
    # Members are ordinary workloads too, labelled with their set.
    for m in members:
        wl = tree[m["node_id"]].workload(m["id"])
        assert wl["labels"]["cnet.set"] == "faces" and wl["endpoint"] == m["endpoint"]
    listed = {w["id"]: w for w in root.api("GET", "/api/workloads").json()["workloads"]}
    assert listed["faces"]["members"] == members and {"faces-r1", "faces-r2", "faces-r3"} <= set(listed)
    answers = [_detect(m["endpoint"], astronaut_b64)["detections"] for m in members]
    assert answers[0] and answers[0] == answers[1] == answers[2]
    # The same submission again is the same set; another spec with that id is a conflict.
    again = root.api("POST", "/api/workloads", json=faces())
    assert again.status_code == 200 and again.json()["members"] == members
    other = root.api("POST", "/api/workloads", json=faces(config={"cascade_type": "eye"}))
    assert (other.status_code, other.json()["error"]["code"]) == (409, "id_conflict")


def test_scale_up_and_down(tree):
    root = tree[ROOT]
    root.submit(faces(replicas=1))
    first = _set(root)["members"][0]
    grown = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 3})
    assert grown.status_code == 200, grown.text
    members = grown.json()["members"]
    assert grown.json()["replicas"] == 3 and members[0] == first
    assert sorted(m["node_id"] for m in members) == sorted(TREE)      # away from the first
    # Four: one node holds two.
    four = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 4}).json()
    assert len(four["members"]) == 4 and len({m["node_id"] for m in four["members"]}) == 3
    shrunk = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 1}).json()
    assert shrunk["replicas"] == 1 and len(shrunk["members"]) == 1
    kept = shrunk["members"][0]
    assert kept["node_id"] == ROOT          # the far ones and the newest go first
    gone = {m["id"] for m in four["members"]} - {kept["id"]}
    for m in four["members"]:
        if m["id"] in gone:
            assert tree[m["node_id"]].api("GET", f"/api/workloads/{m['id']}").status_code == 404
    wait_for(lambda: all(a.resources()["allocated"]["cpu"] == (1.0 if n == ROOT else 0.0)
                         for n, a in tree.items()), message="the scaled-away members' release")


def test_constraints_apply_to_every_member(make_cluster):
    topology = {ROOT: {}, LEFT: {"parent": ROOT, "labels": {"zone": "a"}},
                RIGHT: {"parent": ROOT, "labels": {"zone": "a"}}, "wuxi": {"parent": ROOT}}
    node_config = {n: {"services": {"port_range": list(free_port_range(10))}} for n in topology}
    root = make_cluster(topology, config=CONFIG, node_config=node_config)[ROOT]
    pinned = root.submit(faces("pinned", replicas=2, placement={"node": LEFT}))
    assert [m["node_id"] for m in pinned["members"]] == [LEFT, LEFT]      # all there
    zoned = root.submit(faces("zoned", replicas=3, placement={"node_selector": {"zone": "a"}}))
    nodes = [m["node_id"] for m in zoned["members"]]
    assert set(nodes) == {LEFT, RIGHT} and len(nodes) == 3     # spread over the two that may


def test_stop_and_delete_the_set_stop_and_delete_every_member(tree):
    root = tree[ROOT]
    members = root.submit(faces())["members"]
    refused = root.api("POST", f"/api/workloads/{members[1]['id']}/stop")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "member_of_set")
    assert root.api("DELETE", f"/api/workloads/{members[1]['id']}").status_code == 409
    stopped = root.api("POST", "/api/workloads/faces/stop").json()
    assert stopped["status"] == "stopped"
    assert {m["status"] for m in stopped["members"]} == {"stopped"}
    scale = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 2})
    assert (scale.status_code, scale.json()["error"]["code"]) == (409, "set_stopped")
    assert root.api("DELETE", "/api/workloads/faces").json() == {"id": "faces", "deleted": True}
    assert root.api("GET", "/api/workloads/faces").status_code == 404
    for m in members:
        assert tree[m["node_id"]].api("GET", f"/api/workloads/{m['id']}").status_code == 404
    assert all(a.resources()["allocated"]["cpu"] == 0.0 for a in tree.values())


def test_a_member_that_fails_is_replaced_within_the_budget(tree):
    root = tree[ROOT]
    _, victim, host = submit_set(tree, 2)
    _fail(host, victim["id"])   # max_restarts 1: restarted by its node once, then failed
    record = wait_for(lambda: (r := _set(root))["restart_count"] == 1 and r, timeout=30,
                      message="the failed member replaced")
    assert victim["id"] not in {m["id"] for m in record["members"]}
    assert record["history"][0]["replaced"] == victim["id"]
    assert record["history"][0]["reason"] == "failed"
    _running_members(root, "faces", 2)
    wait_for(lambda: host.api("GET", f"/api/workloads/{victim['id']}").status_code == 404,
             message="the failed member deleted")


def test_a_member_whose_node_is_lost_is_replaced_elsewhere(tree):
    root = tree[ROOT]
    _, victim, lost = submit_set(tree, 2)
    survivor = next(n for n in TREE if n not in (ROOT, victim["node_id"]))
    lost.kill()                      # kill -9 of its agent: its service runs on, unheard of
    record = wait_for(lambda: (r := _set(root))["restart_count"] == 1 and r, timeout=30,
                      message="the lost member replaced")
    placed = {m["node_id"] for m in record["members"]}
    assert victim["node_id"] not in placed and survivor in placed
    assert record["history"][0]["reason"] == "its node is lost"
    _running_members(root, "faces", 2)
    # The node comes back with the old member still running: it is deleted there.
    lost.start()
    wait_for(lambda: lost.api("GET", f"/api/workloads/{victim['id']}").status_code == 404,
             timeout=30, message="the replaced member deleted once its node is back")
    assert lost.resources()["allocated"]["cpu"] == 0.0
    assert len(_set(root)["members"]) == 2


def test_a_set_deleted_while_a_members_node_is_down_is_deleted_when_it_is_back(tree):
    root = tree[ROOT]
    _, victim, down = submit_set(tree, 3)
    down.kill()
    wait_for(lambda: root.workload(victim["id"])["status"] == "lost", timeout=20,
             message="the member lost")
    assert root.api("DELETE", "/api/workloads/faces").json() == {"id": "faces", "deleted": True}
    record = _set(root)
    assert record["status"] == "deleting" and record["members"] == []
    again = root.api("POST", "/api/workloads", json=faces())
    assert (again.status_code, again.json()["error"]["code"]) == (409, "id_conflict")
    down.start()
    wait_for(lambda: root.api("GET", "/api/workloads/faces").status_code == 404, timeout=30,
             message="the set gone once its last member is")
    for node_id, agent in tree.items():
        assert agent.api("GET", "/api/workloads").json()["workloads"] == [], node_id


def test_replacements_stop_when_the_budget_is_spent(tree):
    root = tree[ROOT]
    # max_restarts 1: one replacement for a set of one; each member fails on its 2nd kill.
    root.submit(faces(replicas=1, placement={"node": LEFT}))
    for replaced in (0, 1):
        _fail(tree[LEFT], _running_members(root, "faces", 1)[0]["id"])
        if replaced == 0:
            wait_for(lambda: _set(root)["restart_count"] == 1, timeout=30,
                     message="the first failure replaced")
    record = wait_for(lambda: (r := _set(root))["status"] == "failed" and r, timeout=30,
                      message="the set failed")
    assert record["restart_count"] == 1 and record["members"][0]["status"] == "failed"
    assert "budget" in record["message"]


def test_a_member_that_failed_while_its_origin_was_down_is_replaced_at_its_restart(tree):
    root = tree[ROOT]
    _, victim, host = submit_set(tree, 2)
    root.terminate()
    _fail(host, victim["id"])
    host.wait_status(victim["id"], "failed", timeout=20)
    root.start()
    record = wait_for(lambda: (r := _set(root))["restart_count"] == 1 and r, timeout=30,
                      message="the failed member replaced after the origin's restart")
    assert victim["id"] not in {m["id"] for m in record["members"]}
    _running_members(root, "faces", 2)


def test_a_shrink_takes_the_far_members_first(make_cluster):
    # A peer of the origin is far (not the origin nor below it): its member goes first.
    # (One way: with peers naming each other, the second link to come up renews the session
    # and fails a delegation already in flight, node_lost "joined again".)
    topology = {ROOT: {"peers": ["zhejiang"]}, LEFT: {"parent": ROOT}, "zhejiang": {}}
    node_config = {n: {"services": {"port_range": list(free_port_range(20))}} for n in topology}
    agents = make_cluster(topology, config=CONFIG, node_config=node_config)
    root = agents[ROOT]
    members = root.submit(faces())["members"]
    assert sorted(m["node_id"] for m in members) == sorted(topology)
    far = next(m for m in members if m["node_id"] == "zhejiang")
    with SyncClient(root.url, timeout=30) as client:     # the bus door, as `cnet scale`
        shrunk = client.scale("faces", 2)
    assert far["id"] not in {m["id"] for m in shrunk["members"]}
    assert len(shrunk["members"]) == 2
    assert agents["zhejiang"].api("GET", f"/api/workloads/{far['id']}").status_code == 404


def test_the_set_outlives_a_restart_of_its_origin(tree):
    root = tree[ROOT]
    members = root.submit(faces(replicas=2))["members"]
    root.terminate()
    root.start()
    record = _running_members(root, "faces", 2)
    assert [m["id"] for m in record] == [m["id"] for m in members]
    assert _set(root)["replicas"] == 2


def test_an_origin_killed_while_placing_a_set_finishes_it_with_no_member_unknown(tree):
    root = tree[ROOT]
    answers: list = []

    def post() -> None:
        try:
            answers.append(root.api("POST", "/api/workloads", json=faces(), timeout=30))
        except requests.RequestException as exc:     # killed before it answered
            answers.append(exc)

    submit = threading.Thread(target=post)
    submit.start()
    wait_for(lambda: root.api("GET", "/api/workloads/faces").status_code == 200,
             interval=0.005, message="the set listed")
    root.kill()                      # while its members are being placed (or just after)
    submit.join(timeout=30)
    root.start()
    members = {m["id"] for m in _running_members(root, "faces", 3)}
    labelled = set()
    for agent in tree.values():
        for wl in agent.api("GET", "/api/workloads").json()["workloads"]:
            if wl["labels"].get("cnet.set") == "faces" and wl["status"] in ("pending", "running"):
                labelled.add(wl["id"])
    assert labelled == members        # every member running is one its set knows


BAD = [
    ("replicas 0", faces(replicas=0), 400, "invalid_field"),
    ("replicas 33", faces(replicas=33), 400, "invalid_field"),
    ("replicas not a number", faces(replicas="3"), 400, "invalid_field"),
    ("replicas true", faces(replicas=True), 400, "invalid_field"),
    ("a process set", {**faces(), "type": "process", "config": {"command": "sleep"}}, 400,
     "invalid_field"),
    ("an id too long", faces(set_id="x" * 55), 400, "invalid_field"),
    ("another strategy", faces(placement={"strategy": "binpack"}), 400, "invalid_field"),
    ("the set label", faces(labels={"cnet.set": "x"}), 400, "invalid_field"),
    ("a bad cascade", faces(config={"cascade_type": "ears"}), 400, None),
    ("more than the tree has", faces(requirements={"cpu": 100}), 503, "insufficient_resources"),
]


@pytest.mark.parametrize("what,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_a_bad_set_is_refused_and_changes_nothing(make_agent, what, body, status, code):
    agent = make_agent(config=CONFIG)
    resp = agent.api("POST", "/api/workloads", json=body)
    assert resp.status_code == status, resp.text
    if code:
        assert resp.json()["error"]["code"] == code
    assert agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert agent.resources()["allocated"]["cpu"] == 0.0


def test_a_set_that_does_not_fit_whole_places_nothing(tree):
    root = tree[ROOT]
    # Each node has 8 cpus: 3 members of 6 fit, a fourth does not.
    resp = root.api("POST", "/api/workloads", json=faces(replicas=4, requirements={"cpu": 6}))
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "insufficient_resources"
    wait_for(lambda: all(a.api("GET", "/api/workloads").json()["workloads"] == []
                         and a.resources()["allocated"]["cpu"] == 0.0 for a in tree.values()),
             message="every member placed deleted")
    assert root.api("GET", "/api/workloads/faces").status_code == 404


def test_bad_scales_are_refused_and_change_nothing(tree):
    root = tree[ROOT]
    root.submit(faces(replicas=1, requirements={"cpu": 5}))    # one such member per node
    plain = root.submit({"id": "plain", "name": "p", "type": "process",
                         "config": {"command": "sleep", "args": ["60"]}})
    before = _set(root)
    for body, status, code in (({"replicas": 0}, 400, "invalid_field"),
                               ({"replicas": 33}, 400, "invalid_field"),
                               ({"replicas": "2"}, 400, "invalid_field"),
                               ({}, 400, "invalid_field"),
                               ({"replicas": 2, "colour": "red"}, 400, "invalid_field"),
                               ([2], 400, "invalid_body")):
        resp = root.api("POST", "/api/workloads/faces/scale", json=body)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), body
    resp = root.api("POST", f"/api/workloads/{plain['id']}/scale", json={"replicas": 2})
    assert (resp.status_code, resp.json()["error"]["code"]) == (409, "not_a_set")
    resp = root.api("POST", "/api/workloads/nope/scale", json={"replicas": 2})
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "not_found")
    resp = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 9,
                                                                "requirements": {"cpu": 1}})
    assert resp.status_code == 400
    assert _set(root)["members"] == before["members"]
    # A scale that does not fit whole adds nothing.
    resp = root.api("POST", "/api/workloads/faces/scale", json={"replicas": 4})
    assert resp.status_code == 503, resp.text
    wait_for(lambda: sum(a.resources()["allocated"]["cpu"] for a in tree.values()) == 5.0,
             message="the members of the refused scale deleted")
    assert _set(root)["members"] == before["members"] and _set(root)["replicas"] == 1


def test_no_other_workload_takes_a_sets_id(make_agent):
    """A set is a workload to its clients (listed, deleted by its id): a plain submission of
    its id is a conflict (it was a 201, hidden behind the set in the listing and left behind
    when the set was deleted; the OpenAPI fuzzing found it with id "0")."""
    agent = make_agent(config=CONFIG)
    agent.submit(faces(replicas=1, requirements={"cpu": 0.5}))

    def listed():
        return {(wl["id"], wl["type"]) for wl in agent.api("GET", "/api/workloads").json()[
            "workloads"]}

    before = listed()
    for body in ({"id": "faces", "name": "p", "type": "process",
                  "config": {"command": "sleep", "args": ["30"]}},
                 {k: v for k, v in faces(requirements={"cpu": 0.5}).items() if k != "replicas"}):
        resp = agent.api("POST", "/api/workloads", json=body)
        assert (resp.status_code, resp.json()["error"]["code"]) == (409, "id_conflict"), resp.text
    assert listed() == before == {("faces", "opencv"), ("faces-r1", "opencv")}
    assert agent.api("DELETE", "/api/workloads/faces").status_code == 200
    assert agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert agent.resources()["allocated"]["cpu"] == 0.0
