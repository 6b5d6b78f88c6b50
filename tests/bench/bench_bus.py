"""Bus benchmark (run by hand): ``python tests/bench/bench_bus.py [--changes 1000] [--kills 5]``.

1. A child node (own process) publishes N resource changes; latency until each is in the
   parent's view (its ``on_neighbour`` callback), beside raw pyzmq PUB->SUB latency between
   two processes measured in the same run. Target: p99 <= 20 ms.
2. ``kill -9`` of a child process -> ``lost`` at the parent with the defaults (1 s x 3).
   Target: <= 3.5 s.
3. A request with ~1 KB of args from a parent to its child (own process, an echo handler) and
   its reply, beside a raw pyzmq DEALER -> ROUTER round trip between two processes in the same
   run (the transport's floor; what the bus adds on top is its own cost per hop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from bus import BusNode, NeighbourState  # noqa: E402
from tests.bus.harness import NodeProcess, endpoints, running, until  # noqa: E402

RAW_PUBLISHER = """
import sys, time, zmq, msgpack
ctx = zmq.Context(); pub = ctx.socket(zmq.PUB); pub.linger = 0
pub.bind("tcp://127.0.0.1:0"); print(pub.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
n, gap = int(sys.argv[1]), float(sys.argv[2])
time.sleep(1.0)
for i in range(1, n + 1):
    pub.send_multipart([b"update", msgpack.packb({"mark": i, "t": time.monotonic()})])
    time.sleep(gap)
time.sleep(0.5)
pub.close(0); ctx.term()
"""


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return "no samples"
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"n={len(ms)} p50={statistics.median(ms):.2f} ms p99={p99:.2f} ms "
            f"max={ms[-1]:.2f} ms")


async def raw_pub_sub(changes: int, gap: float) -> list[float]:
    proc = subprocess.Popen([sys.executable, "-c", RAW_PUBLISHER, str(changes), str(gap)],
                            stdout=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip()
        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        latencies: list[float] = []
        try:
            while len(latencies) < changes and await sub.poll(3000):
                _topic, body = await sub.recv_multipart()
                latencies.append(time.monotonic() - msgpack.unpackb(body)["t"])
        finally:
            sub.close(linger=0)
            context.term()
        return latencies
    finally:
        proc.wait(10)


async def bus_propagation(changes: int, gap: float) -> list[float]:
    latencies: list[float] = []
    marks: set[int] = set()

    def on_neighbour(state: NeighbourState) -> None:
        mark = state.snapshot.get("mark")
        if state.node_id == "child" and mark and mark not in marks:
            marks.add(mark)
            latencies.append(time.monotonic() - state.snapshot["t"])

    parent = BusNode("parent", on_neighbour=on_neighbour)
    async with running(parent):
        fixed = endpoints(parent)
        child = NodeProcess("child", "--parent", f"{fixed.router},{fixed.pub}", "--bench", str(changes),
                            "--bench-wait", "1.5", "--bench-gap", str(gap), interval=1.0)
        try:
            await child.start()
            await until(lambda: len(marks) >= changes or max(marks, default=0) >= changes,
                        timeout=30 + changes * gap, what="all changes at the parent")
        finally:
            await child.stop()
    return latencies


async def kill_to_lost(rounds: int) -> list[float]:
    results: list[float] = []
    lost_at: dict[str, float] = {}

    def on_neighbour(state: NeighbourState) -> None:
        if state.status == "lost":
            lost_at[state.node_id] = time.monotonic()

    parent = BusNode("parent", on_neighbour=on_neighbour)   # defaults: 1 s x 3
    async with running(parent):
        fixed = endpoints(parent)
        for i in range(rounds):
            node_id = f"child{i}"
            child = NodeProcess(node_id, "--parent", f"{fixed.router},{fixed.pub}", interval=1.0)
            try:
                await child.start()
                await until(lambda n=node_id: (s := parent.neighbour(n)) and s.status == "alive"
                            and s.seq > 2, 15.0)
                await asyncio.sleep(0.37 * i % 1.0)      # kill at different heartbeat phases
                child.kill()
                killed = time.monotonic()
                await until(lambda n=node_id: n in lost_at, 10.0)
                results.append(lost_at[node_id] - killed)
            finally:
                await child.stop()
    return results


async def request_round_trip(rounds: int) -> list[float]:
    parent = BusNode("jiangsu", request_timeout=5.0)
    async with running(parent):
        child = NodeProcess("nanjing", "--echo", "--parent",
                            f"{parent.router_endpoint},{parent.pub_endpoint}", interval=1.0)
        await child.start()
        try:
            await until(lambda: (s := parent.neighbour("nanjing")) and s.status == "alive", 10,
                        "the child to join")
            args, times = {"workload": {"name": "x" * 1000}}, []
            for i in range(rounds + 10):
                started = time.perf_counter()
                await parent.call("nanjing", "echo", args)
                if i >= 10:
                    times.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
            return times
        finally:
            await child.stop()


async def main(args: argparse.Namespace) -> None:
    raw = await raw_pub_sub(args.changes, args.gap)
    bus = await bus_propagation(args.changes, args.gap)
    print(f"raw pyzmq PUB->SUB (2 processes):      {percentiles(raw)}")
    print(f"bus change -> parent view (2 processes): {percentiles(bus)}")
    kills = await kill_to_lost(args.kills)
    print("kill -9 -> lost at parent (1 s x 3):   " + ", ".join(f"{k:.2f} s" for k in kills)
          + f"; max {max(kills):.2f} s")
    from tests.bench.bench_delegation import raw_round_trip
    raw_rtt = await raw_round_trip(args.requests)
    bus_rtt = await request_round_trip(args.requests)
    print(f"raw pyzmq round trip (2 processes):     {percentiles(raw_rtt)}")
    print(f"bus request -> reply (2 processes):     {percentiles(bus_rtt)}  "
          f"(+{(statistics.median(bus_rtt) - statistics.median(raw_rtt)) * 1000:.2f} ms at p50)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--gap", type=float, default=0.002, help="seconds between changes")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="request round trips")
    asyncio.run(main(parser.parse_args()))
