"""Issue 3 on real clusters: joins, heartbeats, broadcasts, lost and returning nodes, hostile
frames, duplicate ids and the ``cnet cluster`` launcher, each agent its own process (the checks
of logic alone run in-process, in test_inprocess.py)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
import yaml
import zmq

from bus import RequestTimeout, Watcher
from bus.protocol import Hello, Refuse, Reply, Request, decode, encode, new_corr_id

from .bus.test_malformed import hostile_frames
from .harness import REPO, AgentProcess, free_port, gone, link_cluster, process_spec, wait_for

FAST = {"bus": {"heartbeat_interval": 0.2, "heartbeat_misses": 3}}
PAIR = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}


def view(agent: AgentProcess) -> dict:
    return agent.api("GET", "/api/nodes", timeout=5).json()


def neighbour(agent: AgentProcess, node_id: str) -> dict | None:
    """``node_id`` as ``agent``'s /api/nodes shows it (None if it is not listed)."""
    doc = view(agent)
    entries = [doc["parent"], *doc["children"], *doc["peers"]]
    return next((e for e in entries if e and e["node_id"] == node_id), None)


def status_of(agent: AgentProcess, node_id: str) -> str | None:
    entry = neighbour(agent, node_id)
    return entry and entry["status"]


# -- joins and heartbeats ------------------------------------------------------------------


def test_heartbeats_keep_neighbours_fresh(make_cluster):
    cluster = make_cluster(PAIR, config=FAST)
    parent, child = cluster["jiangsu"], cluster["nanjing"]
    first = neighbour(parent, "nanjing")["seq"]
    # Over many heartbeat intervals the snapshot sequence moves on and nobody goes lost.
    seq = wait_for(lambda: (e := neighbour(parent, "nanjing"))["seq"] >= first + 10 and e,
                   timeout=15, message="ten more heartbeats from nanjing")["seq"]
    for _ in range(10):             # at each of ten more heartbeats, as it comes
        entry = wait_for(lambda s=seq: (e := neighbour(parent, "nanjing"))["seq"] > s and e,
                         timeout=15, message="nanjing's next heartbeat")
        seq = entry["seq"]
        assert entry["status"] == "alive" and status_of(child, "jiangsu") == "alive"
        # Inside the loss window (3 misses x 0.2 s), give or take one liveness tick.
        assert entry["last_seen"] < 3 * 0.2 + 0.3


def test_a_change_deep_in_the_tree_reaches_the_root_before_any_heartbeat(make_cluster):
    # Heartbeats every 30 s: nothing below can reach the root in time unless passed up at once.
    slow = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3}}
    chain = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "xuanwu": {"parent": "nanjing"}}
    cluster = make_cluster(chain, config=slow)
    root, leaf = cluster["jiangsu"], cluster["xuanwu"]

    def subtree() -> dict:
        return neighbour(root, "nanjing")["subtree"]

    wait_for(lambda: subtree()["nodes"] == 2, timeout=5, message="xuanwu in nanjing's subtree at jiangsu")
    assert subtree()["live_workloads"] == 0
    wl = leaf.submit(process_spec(name="deep", cpu=1.5))
    wait_for(lambda: subtree()["live_workloads"] == 1 and subtree()["allocated"]["cpu"] == 1.5,
             timeout=3, message="jiangsu to see the workload on its grandchild")
    listed = root.api("GET", "/api/workloads", params={"scope": "subtree"}).json()["workloads"]
    assert [(w["id"], w["node_id"]) for w in listed] == [(wl["id"], "xuanwu")]
    leaf.api("POST", f"/api/workloads/{wl['id']}/stop")
    wait_for(lambda: subtree()["live_workloads"] == 0 and subtree()["allocated"]["cpu"] == 0,
             timeout=3, message="jiangsu to see the grandchild's workload end")


async def test_a_change_passed_up_goes_to_the_parent_alone(make_cluster):
    """A workload below nanjing reaches the root at once, but nanjing broadcasts nothing of it:
    its children and peers (the watcher here stands for them) read no summary, so waking them
    for one would cost each of them a decode (at 300 agents: 16 children for each change)."""
    slow = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3}}
    chain = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "xuanwu": {"parent": "nanjing"}}
    cluster = make_cluster(chain, config=slow)
    root, middle, leaf = cluster["jiangsu"], cluster["nanjing"], cluster["xuanwu"]

    def subtree() -> dict:
        return neighbour(root, "nanjing")["subtree"]

    wait_for(lambda: subtree()["nodes"] == 2, timeout=5, message="xuanwu in nanjing's subtree at jiangsu")
    watcher = Watcher(middle.api("GET", "/api/bus").json()["pub"], topics=[b"update"])
    try:
        await watcher.connected(timeout=5)
        leaf.submit(process_spec(name="deep", cpu=1.5))
        wait_for(lambda: subtree()["live_workloads"] == 1, timeout=3,
                 message="jiangsu to see the workload on its grandchild")
        with pytest.raises(RequestTimeout):        # passed up on the link, not on nanjing's PUB
            await watcher.next(timeout=0.5)
        middle.submit(process_spec(name="own", cpu=0.5))   # nanjing's own change is broadcast
        update = await watcher.next(timeout=5)
        assert update.node_id == "nanjing" and update.snapshot["allocated"]["cpu"] == 0.5
    finally:
        watcher.close()


def test_a_peer_joining_below_the_root_is_reachable_from_it_at_once(make_agent):
    # Heartbeats every 30 s: jiangsu can only learn that nanjing now reaches suqian if told.
    slow = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3}}
    topology = {"jiangsu": {}, "nanjing": {"parent": "jiangsu", "peers": ["suqian"]},
                "suqian": {"peers": ["nanjing"]}}
    agents = {n: make_agent(n, slow, start=False) for n in topology}
    link_cluster(agents, topology)
    agents["jiangsu"].start()
    agents["nanjing"].start()
    wait_for(lambda: status_of(agents["jiangsu"], "nanjing") == "alive", timeout=10,
             message="nanjing alive at jiangsu")
    pinned = process_spec("to-suqian", placement={"node": "suqian"})
    refused = agents["jiangsu"].api("POST", "/api/workloads", json=pinned)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "impossible_placement"

    agents["suqian"].start()
    wait_for(lambda: status_of(agents["nanjing"], "suqian") == "alive", timeout=10,
             message="suqian alive at nanjing")
    placed = wait_for(lambda: agents["jiangsu"].api("POST", "/api/workloads", json=pinned).status_code == 201,
                      timeout=3, message="jiangsu to place a workload on suqian through nanjing")
    assert placed
    assert [wl["name"] for wl in agents["suqian"].api("GET", "/api/workloads").json()["workloads"]] == ["to-suqian"]


# -- loss and return -----------------------------------------------------------------------


def test_killed_node_is_lost_and_comes_back_alive(make_cluster):
    topology = {"jiangsu": {}, "nanjing": {"parent": "jiangsu", "peers": ["suqian"]},
                "suqian": {"peers": ["nanjing"]}}
    cluster = make_cluster(topology, config=FAST)
    parent, nanjing, peer = cluster["jiangsu"], cluster["nanjing"], cluster["suqian"]
    nanjing.kill()
    wait_for(lambda: status_of(parent, "nanjing") == "lost", timeout=10, message="nanjing lost at jiangsu")
    wait_for(lambda: status_of(peer, "nanjing") == "lost", timeout=10, message="nanjing lost at suqian")
    assert neighbour(parent, "nanjing")["last_seen"] > 0.6

    nanjing.start()  # same ports, same state dir; nobody is told
    wait_for(lambda: status_of(parent, "nanjing") == "alive", timeout=15, message="nanjing alive at jiangsu")
    wait_for(lambda: status_of(peer, "nanjing") == "alive", timeout=15, message="nanjing alive at suqian")
    wait_for(lambda: status_of(nanjing, "jiangsu") == "alive" and status_of(nanjing, "suqian") == "alive",
             timeout=15, message="nanjing's own links alive")


def test_restarted_parent_is_rejoined(make_cluster):
    cluster = make_cluster(PAIR, config=FAST)
    parent, child = cluster["jiangsu"], cluster["nanjing"]
    parent.kill()
    wait_for(lambda: status_of(child, "jiangsu") == "lost", timeout=10, message="jiangsu lost at nanjing")
    parent.start()
    wait_for(lambda: status_of(parent, "nanjing") == "alive", timeout=15, message="nanjing re-joined jiangsu")
    wait_for(lambda: status_of(child, "jiangsu") == "alive", timeout=15, message="jiangsu alive at nanjing")
    assert neighbour(parent, "nanjing")["capacity"]["cpu"] == 8.0  # a full snapshot came with it


# -- hostile input and a duplicate id --------------------------------------------------------


def test_malformed_frames_at_a_live_router(make_cluster):
    cluster = make_cluster(PAIR, config=FAST)
    parent = cluster["jiangsu"]
    router = parent.api("GET", "/api/bus").json()["router"]
    first_seq = neighbour(parent, "nanjing")["seq"]
    frames = hostile_frames(random.Random(3))
    done = threading.Event()
    sent = []

    def fire() -> None:
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.linger = 0
        raw.sndhwm = 0
        raw.connect(router)
        try:
            for i, message in enumerate(frames):
                raw.send_multipart(message)
                sent.append(i)
                if i % 100 == 0:
                    time.sleep(0.005)  # a few rounds, so REST and heartbeats interleave
        finally:
            raw.close(linger=0)
            context.term()
            done.set()

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    answered = 0
    while not done.is_set() or answered < 5:
        assert parent.api("GET", "/api/health", timeout=5).status_code == 200
        assert status_of(parent, "nanjing") == "alive"
        answered += 1
    thread.join(timeout=30)
    assert len(sent) == len(frames)
    # Heartbeats went on through the flood, both ways.
    wait_for(lambda: neighbour(parent, "nanjing")["seq"] > first_seq + 5, timeout=10,
             message="nanjing's heartbeats after the flood")
    assert status_of(cluster["nanjing"], "jiangsu") == "alive"
    assert parent.submit(process_spec(cpu=0.5))["status"] == "running"


@pytest.fixture
def twin(tmp_path):
    """A second agent called ``nanjing`` in its own directory (make_agent keys dirs by node id)."""
    agent = AgentProcess(tmp_path / "twin", "nanjing", FAST)
    yield agent
    agent.cleanup()


def test_duplicate_node_id_is_refused(make_cluster, twin):
    cluster = make_cluster(PAIR, config=FAST)
    parent, first = cluster["jiangsu"], cluster["nanjing"]
    link_cluster({"jiangsu": parent, "nanjing": twin}, PAIR)
    twin.start()
    refused = wait_for(lambda: [line for line in parent.output.read_text().splitlines()
                                if "refused hello from nanjing" in line], timeout=10,
                       message="jiangsu to log the refused hello")
    assert "ERROR" in refused[0] and "already joined and alive" in refused[0]
    told = wait_for(lambda: [line for line in twin.output.read_text().splitlines()
                             if "refused our hello" in line], timeout=10,
                    message="the twin to log that it was refused")
    assert "ERROR" in told[0] and "(duplicate_node)" in told[0]
    # The parent keeps the first nanjing, alive, with its address.
    for _ in range(5):
        children = view(parent)["children"]
        assert [(c["node_id"], c["address"], c["status"]) for c in children] == \
            [("nanjing", first.url, "alive")]
        time.sleep(0.2)
    assert status_of(twin, "jiangsu") is None or status_of(twin, "jiangsu") != "alive"


def test_with_a_token_only_nodes_that_have_it_join(make_cluster, make_agent):
    secured = {**FAST, "api": {"token": "s3cret"}}
    cluster = make_cluster(PAIR, config=secured)   # both have it: joined, and work is delegated
    parent = cluster["jiangsu"]
    assert parent.submit(process_spec(cpu=0.5, placement={"node": "nanjing"}))["node_id"] == "nanjing"

    # An agent without the token cannot join, and both sides say why.
    stranger = make_agent("gulou", config={**FAST, "parent": {"enabled": True,
                                                              "address": f"127.0.0.1:{parent.port}"}})
    wait_for(lambda: "lacks this node's token" in parent.output.read_text(), timeout=10,
             message="jiangsu to log the refused hello")
    wait_for(lambda: "(unauthorized)" in stranger.output.read_text(), timeout=10,
             message="gulou to log that it was refused")
    assert [c["node_id"] for c in view(parent)["children"]] == ["nanjing"]

    # Nor can a raw socket that claims to be a child, and so nothing it asks for is done.
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(parent.api("GET", "/api/bus").json()["router"])
    try:
        raw.send_multipart(encode(Hello(node_id="mallory", role="child")))
        assert raw.poll(5000), "no answer to the hello"
        refusal = decode(raw.recv_multipart())
        assert isinstance(refusal, Refuse) and refusal.code == "unauthorized"
        raw.send_multipart(encode(Request(corr_id=new_corr_id(), op="submit",
                                          args={"workload": process_spec("intruder")})))
        assert raw.poll(5000), "no answer to the request"
        answer = decode(raw.recv_multipart())   # taken as a client's: without the token, 401
        assert isinstance(answer, Reply) and not answer.ok and answer.error["code"] == "unauthorized"
    finally:
        raw.close(linger=0)
        context.term()
    assert "intruder" not in {wl["name"] for wl in parent.api("GET", "/api/workloads").json()["workloads"]}


# -- the launcher ------------------------------------------------------------------------------


@pytest.fixture
def jiangsu_file(tmp_path):
    """A copy of topologies/jiangsu.yaml on free ports and a temp state dir; ``cluster down``
    afterwards whatever the test did."""
    topo = yaml.safe_load((REPO / "topologies" / "jiangsu.yaml").read_text())
    topo["state_dir"] = str(tmp_path / "run")
    topo["defaults"]["bus"] = {"heartbeat_interval": 0.2}
    topo["defaults"]["resources"]["cpu"] = 2.0
    for node in topo["nodes"].values():
        node.pop("storage", None)     # the root's /tmp paths belong to `make run`, not to a test
        node["port"] = free_port()
        node["bus"] = {"router_port": free_port(), "pub_port": free_port()}
    path = tmp_path / "jiangsu.yaml"
    path.write_text(yaml.safe_dump(topo))
    yield path, topo
    cnet("cluster", "down", str(path), check=False)


def cnet(*args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cnet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_launcher_up_status_down(jiangsu_file, tmp_path):
    path, topo = jiangsu_file
    up = cnet("cluster", "up", str(path), "--timeout", "60")
    urls = {n: f"http://127.0.0.1:{node['port']}" for n, node in topo["nodes"].items()}
    for node_id, url in urls.items():
        assert f"{node_id}: {url}/" in up.stdout, up.stdout

    status = cnet("cluster", "status", str(path))
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    for node_id in urls:
        assert " up " in lines[node_id], status.stdout
        assert "lost" not in lines[node_id] and "unknown" not in lines[node_id]
        assert "=alive" in lines[node_id]

    # Something running on every node (jiangsu's 2 cpu fill, then it delegates), so down must
    # stop workloads too.
    placed = {}
    for _ in range(4):
        wl = requests.post(urls["jiangsu"] + "/api/workloads", json=process_spec(cpu=2.0),
                           timeout=30).json()
        assert wl["status"] == "running", wl
        placed[wl["node_id"]] = wl["process_pid"]
    assert set(placed) == set(urls)
    workload_pids = list(placed.values())
    agent_pids = [int((tmp_path / "run" / n / "agent.pid").read_text()) for n in urls]

    down = cnet("cluster", "down", str(path))
    for node_id in urls:
        assert f"{node_id}: stopped" in down.stdout, down.stdout
    for pid in agent_pids + workload_pids:
        assert gone(pid), f"pid {pid} survived `cluster down`: {psutil.Process(pid).cmdline()}"
    assert not any((tmp_path / "run" / n / "agent.pid").exists() for n in urls)   # clean exits
    after = cnet("cluster", "status", str(path), check=False)
    assert after.returncode != 0 and after.stdout.count(" down ") == 4


def test_launcher_fails_with_the_log_tail_of_a_node_that_does_not_come_up(jiangsu_file, tmp_path):
    path, topo = jiangsu_file
    with socket.socket() as taken:   # suqian's port is held by someone else
        taken.bind(("127.0.0.1", topo["nodes"]["suqian"]["port"]))
        taken.listen()
        up = cnet("cluster", "up", str(path), "--timeout", "30", check=False)
    assert up.returncode == 1
    assert "suqian" in up.stderr and "already in use" in up.stderr, up.stderr
    # What it did start is stopped again: no agent is left behind.
    for node_id in topo["nodes"]:
        pid_file = tmp_path / "run" / node_id / "agent.pid"
        assert not pid_file.exists(), f"{node_id} left running"


@pytest.fixture
def by_hand(jiangsu_file, tmp_path):
    """Start one node of the topology as a user would, ``cnet agent --topology FILE --node ID``;
    every agent it started is gone afterwards."""
    path, topo = jiangsu_file
    procs: list[subprocess.Popen] = []

    def start(node_id: str) -> subprocess.Popen:
        with open(tmp_path / f"{node_id}.out", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cnet", "agent", "--topology", str(path),
                                     "--node", node_id], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{topo['nodes'][node_id]['port']}/api/health"
        wait_for(lambda: proc.poll() is None and requests.get(url, timeout=1).ok, timeout=30,
                 message=f"{node_id} started by hand")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_launcher_finds_and_stops_an_agent_started_by_hand(by_hand, tmp_path, jiangsu_file):
    path, _ = jiangsu_file
    proc = by_hand("suqian")
    pid_file = tmp_path / "run" / "suqian" / "agent.pid"
    assert pid_file.read_text().split() == [str(proc.pid)]   # the agent's own pid, not a launcher's

    status = cnet("cluster", "status", str(path), check=False)
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert status.returncode == 1   # the other three are down
    assert lines["suqian"].split()[2:4] == [str(proc.pid), "up"], status.stdout
    assert " down " in lines["nanjing"]

    down = cnet("cluster", "down", str(path))
    assert "suqian: stopped" in down.stdout and "nanjing: not running" in down.stdout, down.stdout
    assert proc.wait(timeout=30) == 0   # a clean exit, which took its pid file with it
    assert not pid_file.exists()


def test_a_stale_pid_file_is_reported_as_stopped_and_removed(by_hand, tmp_path, jiangsu_file):
    path, _ = jiangsu_file
    proc = by_hand("suqian")
    proc.kill()   # kill -9: no chance to remove its pid file
    proc.wait(timeout=10)
    pid_file = tmp_path / "run" / "suqian" / "agent.pid"
    assert pid_file.read_text().split() == [str(proc.pid)]

    status = cnet("cluster", "status", str(path), check=False)
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert status.returncode == 1 and " down " in lines["suqian"], status.stdout
    assert f"suqian: not running (removed a stale pid file of pid {proc.pid})" in status.stdout
    assert not pid_file.exists()

    # A pid that is alive but does not hold the node's lock (a reused pid) is stale just the same.
    pid_file.write_text(f"{os.getpid()}\n")
    down = cnet("cluster", "down", str(path))
    assert f"suqian: not running (removed a stale pid file of pid {os.getpid()})" in down.stdout
    assert not pid_file.exists() and not gone(os.getpid())
