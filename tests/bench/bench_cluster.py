"""Cluster benchmark through real agents (run by hand): ``python tests/bench/bench_cluster.py``.

a. An allocation change on a child (nanjing) -> visible in its parent's (jiangsu) view, over
   ``--changes`` changes (submit / stop of a process, one at a time), beside raw pyzmq PUB->SUB
   latency between two processes measured in the same run. Target: p99 <= 20 ms.

   Method: the benchmark subscribes to the child's PUB (endpoint from ``GET /api/bus``), which
   gives each broadcast's ``seq`` and ``sent_at`` (the child's wall clock when it sent it), and
   to the parent's WebSocket ``/api/events``, whose ``resources`` event for the child fires when
   the parent's view takes that snapshot and carries the same ``seq``. Latency = arrival of the
   parent's event here - ``sent_at`` (one host, one clock). It includes the parent's WebSocket
   hop to this process, so it is an upper bound on the bus path alone.
b. ``kill -9`` of the child -> ``lost`` in the parent's view (its ``node`` event) at the defaults
   (heartbeat 1 s x 3 misses). Target: <= 3.5 s.
c. Idle CPU and RSS of each agent of the four-node Jiangsu cluster over ``--idle`` s at the
   defaults. Target: <= 1 % CPU, <= 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402
from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

from bus.protocol import Update, decode_published  # noqa: E402
from tests.bench.bench_bus import percentiles, raw_pub_sub  # noqa: E402
from tests.harness import AgentProcess, link_cluster, load_topology, process_spec, wait_linked  # noqa: E402

PAIR = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}


def start_cluster(root: Path, topology: dict) -> dict[str, AgentProcess]:
    agents = {n: AgentProcess(root, n) for n in topology}
    link_cluster(agents, topology)
    for agent in agents.values():
        agent.start()
    wait_linked(agents, topology)
    return agents


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def propagation(parent: AgentProcess, child: AgentProcess, changes: int) -> tuple[list[float], int]:
    """Latency of each allocation change on ``child`` until ``parent``'s view shows it."""
    sent_at: dict[int, float] = {}       # seq of a broadcast that changed the allocation -> sent_at
    arrived: dict[int, float] = {}       # seq of a snapshot the parent's view took -> when we heard
    seen = {"alloc": None, "parent_alloc": 0.0}

    pub = json.loads((await AsyncHTTPClient().fetch(child.url + "/api/bus")).body)["pub"]
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"update")
    sub.connect(pub)
    ws = await websocket_connect(parent.url.replace("http", "ws") + "/api/events")

    async def read_child() -> None:
        while True:
            _topic, msg = decode_published(await sub.recv_multipart())
            if isinstance(msg, Update):
                alloc = msg.snapshot["allocated"]["cpu"]
                if alloc != seen["alloc"]:
                    seen["alloc"] = alloc
                    sent_at[msg.seq] = msg.sent_at

    async def read_parent() -> None:
        while (raw := await ws.read_message()) is not None:
            now = time.time()
            event = json.loads(raw)
            if event.get("type") == "resources" and event.get("node_id") == child.node_id:
                seen["parent_alloc"] = event["resources"]["allocated"]["cpu"]
                arrived.setdefault(event["seq"], now)

    readers = [asyncio.ensure_future(read_child()), asyncio.ensure_future(read_parent())]
    http = AsyncHTTPClient()
    await asyncio.sleep(1.0)             # the SUB has joined (slow joiner)
    try:
        for i in range(changes // 2):
            body = json.dumps(process_spec(f"bench-{i}", cpu=1.0))
            wl = json.loads((await http.fetch(child.url + "/api/workloads", method="POST", body=body)).body)
            await until(lambda: seen["parent_alloc"] == 1.0, 5.0, "the parent to see the allocation")
            await http.fetch(f"{child.url}/api/workloads/{wl['id']}/stop", method="POST", body=b"")
            await until(lambda: seen["parent_alloc"] == 0.0, 5.0, "the parent to see the release")
            await http.fetch(f"{child.url}/api/workloads/{wl['id']}", method="DELETE")
    finally:
        for task in readers:
            task.cancel()
        ws.close()
        sub.close(linger=0)
        context.term()
    # Either reader may run first, so the two sides are matched by seq only at the end.
    latencies = [arrived[seq] - t for seq, t in sent_at.items() if seq in arrived]
    return latencies, changes - len(latencies)


async def kill_to_lost(parent: AgentProcess, child: AgentProcess, rounds: int) -> list[float]:
    ws = await websocket_connect(parent.url.replace("http", "ws") + "/api/events")
    status: dict[str, tuple[str, float]] = {}

    async def read_parent() -> None:
        while (raw := await ws.read_message()) is not None:
            event = json.loads(raw)
            if event.get("type") == "node" and event["node"]["node_id"] == child.node_id:
                status["now"] = (event["node"]["status"], time.monotonic())

    reader = asyncio.ensure_future(read_parent())
    results = []
    try:
        for i in range(rounds):
            await asyncio.sleep(1.0 + 0.37 * i % 1.0)   # kill at different heartbeat phases
            killed = time.monotonic()
            child.kill()
            await until(lambda: status.get("now", ("",))[0] == "lost", 10.0, "lost")
            results.append(status["now"][1] - killed)
            child.start()
            await until(lambda: status.get("now", ("",))[0] == "alive", 20.0, "alive again")
    finally:
        reader.cancel()
        ws.close()
    return results


def idle_usage(agents: dict[str, AgentProcess], seconds: float) -> dict[str, tuple[float, float]]:
    procs = {n: psutil.Process(a.proc.pid) for n, a in agents.items()}
    before = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
    time.sleep(seconds)
    return {n: ((sum(p.cpu_times()[:2]) - before[n]) / seconds * 100, p.memory_info().rss / 2**20)
            for n, p in procs.items()}


def main(args: argparse.Namespace) -> None:
    raw = asyncio.run(raw_pub_sub(args.changes, 0.005))
    with tempfile.TemporaryDirectory() as tmp:
        pair = start_cluster(Path(tmp), PAIR)
        try:
            latencies, missed = asyncio.run(propagation(pair["jiangsu"], pair["nanjing"], args.changes))
            print(f"raw pyzmq PUB->SUB (2 processes):          {percentiles(raw)}")
            print(f"child allocation -> parent's view (agents): {percentiles(latencies)}"
                  + (f" ({missed} changes reached the parent by heartbeat first)" if missed else ""))
            kills = asyncio.run(kill_to_lost(pair["jiangsu"], pair["nanjing"], args.kills))
            print("kill -9 -> lost at the parent (1 s x 3):   "
                  + ", ".join(f"{k:.2f} s" for k in kills) + f"; max {max(kills):.2f} s")
        finally:
            for agent in pair.values():
                agent.cleanup()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), load_topology(REPO / "topologies" / "jiangsu.yaml"))
        try:
            time.sleep(2.0)              # past start-up work
            usage = idle_usage(cluster, args.idle)
            for node_id, (cpu, rss) in usage.items():
                print(f"idle {node_id:<10} over {args.idle:g} s: cpu {cpu:.2f} %  rss {rss:.1f} MB")
        finally:
            for agent in cluster.values():
                agent.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0)
    main(parser.parse_args())
