"""What keeps an idle agent small and quiet: the bus tick's deadlines, the reused heartbeat,
usage sampled on demand, the scheduler's cached neighbour views, metrics without
prometheus-client, and the modules a running agent has not loaded (those it loads on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bus import BusNode
from cnet.metrics import AgentMetrics
from cnet.neighbours import LocalView, scheduler_snapshot, self_snapshot
from cnet.register import Register
from cnet.resources import Resources

from .harness import REPO, AgentProcess
from .inprocess import ManualClock


def _node(clock: ManualClock, **kwargs) -> BusNode:
    return BusNode("jiangsu", heartbeat_interval=1.0, heartbeat_misses=3, clock=clock, **kwargs)


def test_the_tick_sleeps_until_the_next_beat_or_the_first_silence_that_runs_out():
    clock = ManualClock(100.0)
    node = _node(clock)
    node.tick()                                   # beats on whole seconds: the next at 101
    assert abs(node._until_due() - 1.001) < 1e-9
    node._neighbours.joined("nanjing", "child", 97.5, epoch=1, http="", router="", pub="",
                            interval=1.0)          # silent since 97.5: lost after 100.5
    assert abs(node._until_due() - 0.501) < 1e-9
    clock.advance(0.501)
    node.tick()
    assert node.neighbour("nanjing").status == "lost"
    assert abs(node._until_due() - 0.5) < 1e-9     # the beat at 101 is next (just past it)


def test_the_tick_never_sleeps_longer_than_an_interval_and_beats_on_its_multiples():
    clock = ManualClock(100.25)
    node = _node(clock)
    node.tick()
    assert node._beats.next_beat == 101.0
    clock.advance(0.75)
    node.tick()
    assert node._beats.next_beat == 102.0
    assert node._until_due() <= node.interval + 0.001


def test_answers_reuse_the_heartbeat_until_it_is_stale_or_something_was_published():
    clock = ManualClock(100.0)
    built = []
    node = _node(clock, snapshot=lambda: built.append(1) or {"n": len(built)})
    first = node._beats.build(fresh=True)
    assert node._beats.build() is first and len(built) == 1
    node._beats.next_seq()                         # what publish() does: a newer seq is out
    second = node._beats.build()
    assert second.seq > first.seq and len(built) == 2
    clock.advance(1.0)                             # an interval old
    assert node._beats.build().seq > second.seq
    assert node._beats.build(fresh=True).seq > second.seq + 1


def test_usage_is_sampled_when_read_at_most_once_per_max_age(monkeypatch):
    import cnet.register as register_mod

    calls = []
    real = register_mod.psutil.cpu_percent
    monkeypatch.setattr(register_mod.psutil, "cpu_percent",
                        lambda interval=None: calls.append(1) or real(interval=None))
    reg = Register("n1", Resources(cpu=4.0))
    assert calls == []                             # no sample until something reads it
    first = reg.usage
    assert reg.usage == first and len(calls) == 1
    reg._sampled -= reg.usage_max_age              # as if the sample were that old
    reg.resources()
    assert len(calls) == 2


def test_heartbeats_show_usage_up_to_the_beat_age_and_rest_answers_up_to_two_s(monkeypatch):
    import cnet.register as register_mod

    calls = []
    real = register_mod.psutil.cpu_percent
    monkeypatch.setattr(register_mod.psutil, "cpu_percent",
                        lambda interval=None: calls.append(1) or real(interval=None))
    local = _local()
    reg = local.register
    self_snapshot(local)
    assert len(calls) == 1
    reg._sampled -= register_mod.USAGE_MAX_AGE     # old for a REST answer, not for a beat
    self_snapshot(local)
    assert len(calls) == 1
    reg.resources()
    assert len(calls) == 2
    reg._sampled -= register_mod.BEAT_USAGE_MAX_AGE
    self_snapshot(local)
    assert len(calls) == 3


def test_an_idle_nodes_snapshot_is_the_same_from_beat_to_beat():
    """Its start time, not an uptime: neighbours see no change, so nothing fires there."""
    local = _local()
    first = self_snapshot(local)
    local.register._sampled -= 1.0                 # a second later
    assert self_snapshot(local) == first
    assert first["started_at"] == local.started_at and "uptime" not in first
    local.register.allocate("w1", Resources(cpu=1.0))
    assert self_snapshot(local) != first


def _local() -> LocalView:
    return LocalView("n1", "http://x", {}, Register("n1", Resources(cpu=4.0)), {}, 0.0)


def _child(snapshot: dict, status: str = "alive"):
    from bus import NeighbourState

    return NeighbourState(node_id="c1", role="child", status=status, snapshot=snapshot,
                          summary={"nodes": 1, "node_ids": ["c1"]})


def test_the_scheduler_makes_a_neighbours_view_once_per_report():
    local = _local()
    report = _child({"available": {"cpu": 2.0}})
    first = scheduler_snapshot(local, [report]).nodes[1]
    assert scheduler_snapshot(local, [report]).nodes[1] is first
    newer = _child({"available": {"cpu": 1.0}})
    assert scheduler_snapshot(local, [newer]).nodes[1].available.cpu == 1.0
    lost = _child(newer.snapshot, status="lost")
    lost.summary = newer.summary
    assert scheduler_snapshot(local, [lost]).nodes[1].status == "lost"


class _Port:
    """What a Placer reads of the bus: the neighbours, and a version that changes with them."""

    def __init__(self, neighbours: list):
        self.states, self.view_version = neighbours, 0

    def neighbours(self) -> list:
        return self.states


async def test_a_placing_node_makes_a_neighbours_view_as_its_report_arrives():
    import asyncio

    from cnet.placement import Placer

    local = _local()
    port = _Port([_child({"available": {"cpu": 2.0}})])
    placer = Placer(local, None, None, port, default_strategy="local-first", spawn=None)
    newer = _child({"available": {"cpu": 1.0}})
    placer.prepare()                 # has not placed anything: makes nothing
    await asyncio.sleep(0)
    assert "c1" not in local.views

    placer._snapshot(frozenset({"n1"}))   # a placement read its neighbours ...
    port.states, port.view_version = [newer], 1
    placer.prepare()                 # ... so the next report's view is made as it comes
    assert local.views["c1"][1] is not newer.snapshot     # after the step, not in it
    await asyncio.sleep(0)
    made = local.views["c1"][3][0]
    assert made.available.cpu == 1.0
    assert placer._snapshot(frozenset({"n1"})).nodes[1] is made   # what the next placement reads


async def test_a_placing_node_makes_its_next_snapshots_after_each_change():
    import asyncio

    from cnet.placement import Placer

    local = _local()
    port = _Port([_child({"available": {"cpu": 2.0}})])
    placer = Placer(local, None, None, port, default_strategy="local-first", spawn=None)
    placer.prepare()                       # has not placed anything: makes nothing
    await asyncio.sleep(0)
    assert placer._snaps == {}

    for_clients, for_neighbours = frozenset({"n1"}), frozenset({"n1", "parent"})
    placer._snapshot(for_clients)          # placements read the neighbours, with each exclusion
    first = placer._snapshot(for_neighbours)

    # A neighbour's report: both snapshots are made after the step, not in it.
    newer = _child({"available": {"cpu": 1.0}})
    port.states, port.view_version = [newer], 1
    placer.prepare()
    assert placer._snaps[for_neighbours][1] is first
    await asyncio.sleep(0)
    made = {ex: snap for ex, (_, snap) in placer._snaps.items()}
    assert made[for_neighbours] is not first
    assert made[for_neighbours].nodes[1].available.cpu == 1.0
    assert placer._snapshot(for_clients) is made[for_clients]        # what the next reads
    assert placer._snapshot(for_neighbours) is made[for_neighbours]

    # This node's own allocation (the agent calls prepare() on every change of it).
    local.register.allocate("w1", Resources(cpu=1.0))
    placer.prepare()
    placer.prepare()                       # one remaking per step, however many changes
    await asyncio.sleep(0)
    again = placer._snaps[for_clients][1]
    assert again is not made[for_clients] and again.nodes[0].available.cpu == 3.0
    assert placer._snapshot(for_clients) is again

    # A change nobody reads: what a placement reads stays right, made on its path.
    local.register.allocate("w2", Resources(cpu=1.0))
    assert placer._snapshot(for_clients).nodes[0].available.cpu == 2.0


def test_a_placing_node_keeps_a_few_snapshots():
    from cnet.placement import KEPT_SNAPSHOTS, Placer

    placer = Placer(_local(), None, None, _Port([]), default_strategy="local-first", spawn=None)
    excludes = [frozenset({"n1", f"up{i}"}) for i in range(KEPT_SNAPSHOTS + 2)]
    for exclude in excludes:
        placer._snapshot(exclude)
    assert list(placer._snaps) == excludes[-KEPT_SNAPSHOTS:]     # the oldest made go first


def test_the_scheduler_sees_this_nodes_live_workloads_at_once():
    from cnet.workload import Workload

    local = _local()
    assert scheduler_snapshot(local, []).nodes[0].workload_count == 0
    local.live["w1"] = Workload(id="w1", name="web", type="process", config={},
                                requirements=Resources(), labels={"app": "web"}, node_id="n1",
                                origin="n1")
    me = scheduler_snapshot(local, []).nodes[0]
    assert me.workload_names == {"web"} and ("app", "web") in me.workload_labels


def test_metrics_are_valid_prometheus_text():
    from prometheus_client.parser import text_string_to_metric_families

    reg = Register("n1", Resources(cpu=4.0, memory=1 << 30))
    reg.allocate("w1", Resources(cpu=1.0))
    metrics = AgentMetrics([], reg)
    metrics.requests.labels("GET", '/api/x"\\', "200").observe(0.003)
    metrics.requests.labels("GET", '/api/x"\\', "200").observe(9.0)
    metrics.count_submission("process", "created")
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    buckets = {s.labels["le"]: s.value for s in families["cnet_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["+Inf"] == 2
    route = families["cnet_http_request_duration_seconds"].samples[0].labels["route"]
    assert route == '/api/x"\\'
    counted = families["cnet_workload_submissions"].samples[0]
    assert counted.labels == {"type": "process", "result": "created"} and counted.value == 1
    allocated = {s.labels["resource"]: s.value for s in families["cnet_resources_allocated"].samples}
    assert allocated["cpu"] == 1.0


def test_the_agent_imports_no_heavy_library():
    code = ("import sys, cnet.agent, cnet.cli; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'cv2', 'onnxruntime', 'docker', 'prometheus_client')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_service_and_container_executors_are_built_by_their_first_use(tmp_path):
    import asyncio

    from cnet.agent import Agent
    from cnet.config import from_dict
    from cnet.executors import Deferred
    from cnet.manager import Manager
    from cnet.store import Store

    engine = f"unix://{tmp_path}/no-engine.sock"
    cfg = from_dict({"agent": {"node_id": "n1", "state_dir": str(tmp_path / "state")},
                     "container": {"engine_url": engine}})
    agent = Agent(cfg)
    agent.store = Store(cfg.db_path)
    agent.manager = Manager(cfg, agent.store, agent.register, agent.hub)
    agent.models = None
    deferred = {e.type: e for e in agent._executors() if isinstance(e, Deferred)}
    assert set(deferred) == {"mlmodel", "opencv", "datagateway", "container"}
    assert not any(e.built for e in deferred.values())
    # The engine's state before the container executor is built, and the same after.
    before = asyncio.run(deferred["container"].health())
    assert not deferred["container"].built
    assert before["engine"] == engine and before["status"] == "down" and before["watched"] == 0
    assert "no socket at" in before["error"]
    assert [asyncio.run(e.health()) for t, e in deferred.items() if t != "container"] == [None] * 3
    for executor in deferred.values():
        assert executor.executor.type == executor.type and executor.built
    after = asyncio.run(deferred["container"].health())
    assert {k: v for k, v in after.items() if k != "checked_ago"} == \
        {k: v for k, v in before.items() if k != "checked_ago"}
    asyncio.run(deferred["container"].close())
    agent.store.close()


# Loaded by what first needs them, never by an agent that nobody sends such a request: the
# events socket, uploads, Curve, the client side (commands, bus client, HTTP client), argparse,
# the container config checks, the /svc/ router and its connections, the replica sets, the
# model cache and the locating of models, the container executor.
LAZY = ("tornado.websocket", "tornado.httpclient", "tornado.simple_httpclient", "python_multipart",
        "zmq.auth", "bus.zap", "bus.client", "argparse", "cnet.events_socket", "cnet.upload",
        "cnet.upload_form", "cnet.upload_staging", "cnet.client", "cnet.cli_client",
        "cnet.cli_keys", "cnet.cli_configs", "cnet.executors.container_config",
        "cnet.svc_proxy", "cnet.svc_upstream", "cnet.svc_router", "cnet.replica_sets",
        "cnet.model_cache", "cnet.model_sink", "cnet.model_holders", "cnet.data_locator",
        "cnet.ops.data", "cnet.ops.sets", "cnet.replica_set", "cnet.executors.container")
HEAVY = ("numpy", "cv2", "onnxruntime", "docker", "prometheus_client")

# Runs ``python -m cnet ARGS...`` as the agent command runs it, and once the agent's parent is
# alive in its /api/nodes and its /api/health shows the container engine (down: no socket), and
# a process workload submitted to it has run, writes the names of its loaded modules to OUT and
# stops it.
_AGENT_LISTING_ITS_MODULES = """
import json, os, runpy, signal, socket, sys, threading, time
url_port, out, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

def get(path, method=b"GET", body=b""):
    with socket.create_connection(("127.0.0.1", url_port), timeout=2) as s:
        s.sendall(method + b" " + path + b" HTTP/1.0\\r\\nContent-Length: "
                  + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return json.loads(answer.partition(b"\\r\\n\\r\\n")[2])

def parent_alive():
    parent = get(b"/api/nodes")["parent"]
    # What cnet cluster up and load balancers ask too: the engine's state, shown all the same.
    return (parent is not None and parent["status"] == "alive"
            and get(b"/api/health")["executors"]["container"]["status"] == "down")

def report():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if parent_alive():
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    spec = {"name": "p", "type": "process", "requirements": {"cpu": 0.1},
            "config": {"command": "sleep", "args": ["30"]}}
    ran = get(b"/api/workloads", b"POST", json.dumps(spec).encode())
    get(b"/api/workloads/" + ran["id"].encode() + b"/stop", b"POST")
    with open(out, "w") as f:
        json.dump(sorted(m for m, mod in sys.modules.items() if mod is not None), f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.argv = ["cnet", *args]
runpy.run_module("cnet", run_name="__main__", alter_sys=True)
"""


def test_a_running_agent_has_not_loaded_what_it_loads_on_first_use(make_agent, tmp_path):
    """A real ``cnet agent`` with a parent (so it has discovered and linked to it), its modules
    read inside it once the parent is alive in its view, its health has shown the engine and it
    has run a process workload (which names no model: nothing of models is loaded)."""
    parent = make_agent("jiangsu")
    child = AgentProcess(tmp_path, "nanjing", {"parent": {"address": f"127.0.0.1:{parent.port}"},
                                               "container": {"engine_url":
                                                             f"unix://{tmp_path}/no-engine.sock"}})
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _AGENT_LISTING_ITS_MODULES, str(child.port),
                           str(out), "agent", "--config", str(child.config_path)],
                          cwd=str(REPO), capture_output=True, text=True, timeout=90)
    assert out.exists(), done.stdout + done.stderr
    modules = set(json.loads(out.read_text()))
    assert {"cnet.agent", "cnet.api", "bus.node"} <= modules       # it is the agent that ran
    assert sorted(m for m in modules if m in LAZY or m.split(".")[0] in LAZY) == []
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
    assert "curses" not in modules and "_curses" not in modules   # tornado.log's colours


@pytest.mark.parametrize("argv", [
    ["--config", "a.yaml"], ["-config", "a.yaml"], ["-config=a.yaml"], ["--config="],
    ["--topology", "t.yaml", "--node", "n", "--state-dir", "s"], ["--node=n", "--topology=t.yaml"],
    [],
])
def test_the_agents_flags_read_without_argparse_read_as_argparse_reads_them(argv):
    import argparse

    from cnet import cli

    parser = argparse.ArgumentParser()
    cli._agent_arguments(parser)
    assert vars(cli.agent_flags(argv)) == vars(parser.parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["-h"], ["--help"], ["--conf", "a.yaml"], ["--config"], ["--config", "-x"],
    ["--config", "a.yaml", "--config", "b.yaml"], ["a.yaml"], ["--", "--config", "a.yaml"],
])
def test_anything_else_is_left_to_argparse(argv):
    from cnet import cli

    assert cli.agent_flags(argv) is None


def test_cnet_agent_help_and_mistakes_are_argparse_answers():
    for argv, status, text in ((["agent", "--help"], 0, "usage: cnet agent"),
                               (["agent", "--bogus"], 2, "unrecognized arguments: --bogus"),
                               (["agent", "--config"], 2, "expected one argument")):
        done = subprocess.run([sys.executable, "-m", "cnet", *argv], capture_output=True,
                              text=True, timeout=60, cwd=str(REPO))
        assert done.returncode == status and text in done.stdout + done.stderr, done
