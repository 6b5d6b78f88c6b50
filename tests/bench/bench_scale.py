"""Scale benchmark (run by hand): ``python tests/bench/bench_scale.py [--size 300]``.

``--size`` real agents on this box in a 3-level tree started with ``cnet cluster up``: a root,
``--children`` mid-level nodes (default: the square root of the size, kept within 10..20 when
the size allows) and the rest leaves spread evenly over them, each leaf a peer of the next
``--peers`` of its siblings (a ring: with 1, every leaf has two peers). Measured, each beside a
baseline taken in the same run:

a. ``cnet cluster up`` wall time, and how long after the last agent process started the root's
   view covers every node (1 + the subtree sizes its alive children report). Target <= 3 s.
b. Idle CPU of all agents together over ``--idle`` s at the default 1 s heartbeat, in % of one
   core (target <= 60 %), and their RSS, beside one lone agent (no neighbours) started the same
   way. Per role: root, mid-level, leaf.
c. A workload pinned to a leaf, submitted at the root (two hops down): p50 (target <= 15 ms),
   beside the same workload submitted at the leaf itself.
d. ``kill -9`` of a mid-level node -> ``lost`` in the root's view (its WebSocket event), at the
   defaults (heartbeat 1 s x 3 misses); target <= 3.5 s. Each killed node is started again
   with ``cnet cluster up``, and the time until the root covers every node again is shown.
e. ``cnet cluster down``: what is left running (target: nothing).

The topology is generated into a temp dir on free ports (tests/ports.py); the machine's memory
is stated first, and a size that would not fit is refused. Whatever happens, every agent is
stopped and the temp dir removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import requests  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

from tests.bench.bench_footprint import (  # noqa: E402
    agent_pids,
    cluster_down,
    cluster_up,
    compile_tree,
    cpu_seconds,
    kill_all,
    leftovers,
    ports_of,
    write_topology,
)

AGENT_MB = 48          # what one agent may take at start, with margin (idle ~42 MB)


def tree(size: int, children: int, peers: int) -> dict[str, dict]:
    """root, ``children`` mid-level nodes, the rest leaves spread evenly, peers in a ring."""
    nodes: dict[str, dict] = {"root": {"labels": {"level": "root"}}}
    mids = [f"mid-{i:02d}" for i in range(children)]
    for mid in mids:
        nodes[mid] = {"parent": "root", "labels": {"level": "mid"}}
    leaves = [f"leaf-{i:03d}" for i in range(size - 1 - children)]
    siblings: dict[str, list[str]] = {mid: [] for mid in mids}
    for i, leaf in enumerate(leaves):
        siblings[mids[i % children]].append(leaf)
    for mid, group in siblings.items():
        for i, leaf in enumerate(group):
            ring = [group[(i + d) % len(group)] for d in range(1, min(peers, len(group) - 1) + 1)]
            nodes[leaf] = {"parent": mid, "peers": ring, "labels": {"level": "leaf"}}
    return nodes


def default_children(size: int) -> int:
    guess = round(math.sqrt(max(size - 1, 1)))
    return max(1, min(size - 1, max(min(guess, 20), min(10, (size - 1) // 2))))


class RootWatch:
    """Polls the root's ``/api/nodes`` (every 0.1 s) and notes when its view covers all nodes;
    it runs only while that is awaited (``with RootWatch(...) as watch``), so it adds no load to
    what is measured later."""

    def __init__(self, url: str, size: int):
        self.url, self.size = url, size
        self.covered_at: float | None = None    # wall clock of the first full cover
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RootWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait(self, timeout: float) -> float:
        """The wall-clock time the root first covered every node."""
        wait(lambda: self.covered_at is not None, timeout,
             f"the root to cover all {self.size} nodes (it sees {self.seen})")
        return self.covered_at

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                view = session.get(self.url + "/api/nodes", timeout=2).json()
                self.seen = 1 + sum((c.get("subtree") or {}).get("nodes", 1)
                                    for c in view.get("children", []) if c.get("status") == "alive")
                if self.seen >= self.size and self.covered_at is None:
                    self.covered_at = time.time()
            except (requests.RequestException, ValueError):
                pass
            self._stop.wait(0.1)


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:.2f} ms  p90 {pct(values, 90) * 1000:.2f} ms"
            f"  max {max(values) * 1000:.2f} ms (n={len(values)})")


def spec(name: str, node: str) -> dict:
    return {"name": name, "type": "process", "requirements": {"cpu": 0.1, "memory": 1 << 26},
            "config": {"command": "sleep", "args": ["60"]}, "placement": {"node": node}}


def placements(urls: dict[str, str], leaves: list[str], rounds: int) -> tuple[list[float], list[float]]:
    """Submit -> running: pinned to a leaf at the root, and the same at that leaf, interleaved."""
    session = requests.Session()
    rng = random.Random(7)
    at_root, at_leaf = [], []
    for i in range(rounds + 5):
        leaf = rng.choice(leaves)
        for origin, out in ((urls["root"], at_root), (urls[leaf], at_leaf)):
            started = time.perf_counter()
            resp = session.post(origin + "/api/workloads", json=spec(f"scale-{i}", leaf), timeout=30)
            elapsed = time.perf_counter() - started
            wl = resp.json()
            if resp.status_code != 201 or wl.get("status") != "running" or wl.get("node_id") != leaf:
                raise RuntimeError(f"placing on {leaf} from {origin}: {resp.status_code} {resp.text[:300]}")
            if i >= 5:
                out.append(elapsed)
            session.post(f"{origin}/api/workloads/{wl['id']}/stop", timeout=30)
            session.delete(f"{origin}/api/workloads/{wl['id']}", timeout=30)
    return at_root, at_leaf


async def kill_to_lost(root_url: str, pid: int, node_id: str) -> float:
    ws = await websocket_connect(root_url.replace("http", "ws") + "/api/events")
    try:
        await asyncio.sleep(1.0 + random.random())     # a random heartbeat phase
        killed = time.monotonic()
        psutil.Process(pid).kill()
        deadline = killed + 15
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.read_message(), timeout=deadline - time.monotonic())
            if raw is None:
                raise RuntimeError("the root closed its event stream")
            event = json.loads(raw)
            if (event.get("type") == "node" and event["node"]["node_id"] == node_id
                    and event["node"]["status"] == "lost"):
                return time.monotonic() - killed
        raise TimeoutError(f"{node_id} not lost at the root within 15 s")
    finally:
        ws.close()


def silence_logged(topology: Path, node_id: str) -> str:
    """What the root's log says of ``node_id``'s loss: how long it had been silent when the
    root marked it lost (3 s at the defaults, plus however late the root's tick ran)."""
    log = topology.parent / "state" / "root" / "agent.out"
    found = re.findall(rf"{re.escape(node_id)} lost: silent for ([0-9.]+) s", log.read_text())
    return f"silent for {found[-1]} s at the root" if found else "no loss logged by the root"


def usage(pids: dict[str, int], seconds: float) -> dict[str, tuple[float, float]]:
    """node id -> (cpu % of one core, rss MB) over the same ``seconds``."""
    procs = {n: psutil.Process(pid) for n, pid in pids.items()}
    before = {n: cpu_seconds(p.pid) for n, p in procs.items()}
    time.sleep(seconds)
    return {n: ((cpu_seconds(p.pid) - before[n]) / seconds * 100, p.memory_info().rss / 2**20)
            for n, p in procs.items()}


def role_of(node_id: str) -> str:
    return node_id.split("-")[0]


def main(args: argparse.Namespace) -> int:
    vm = psutil.virtual_memory()
    need = args.size * AGENT_MB / 1024 + 1.0
    print(f"machine: {psutil.cpu_count()} cpus, {vm.total / 2**30:.1f} GiB memory, "
          f"{vm.available / 2**30:.1f} GiB available; {args.size} agents need about {need:.1f} GiB")
    if need > vm.available / 2**30:
        print(f"refused: {args.size} agents at ~{AGENT_MB} MB each do not fit in "
              f"{vm.available / 2**30:.1f} GiB available", file=sys.stderr)
        return 2
    children = args.children or default_children(args.size)
    nodes = tree(args.size, children, args.peers)
    leaves = [n for n in nodes if n.startswith("leaf-")]
    print(f"topology: root, {children} mid-level nodes, {len(leaves)} leaves "
          f"(each a peer of its next {args.peers} sibling(s))")
    compile_tree()
    with tempfile.TemporaryDirectory(prefix="cnet-scale-") as tmp_text:
        tmp = Path(tmp_text)
        topology = write_topology(tmp / "scale.yaml", nodes, tmp / "state")
        lone = write_topology(tmp / "lone.yaml", {"lone": {}}, tmp / "lone-state")
        urls = {n: f"http://127.0.0.1:{p}" for n, p in ports_of(topology).items()}
        try:
            run(args, topology, lone, urls, leaves)
        finally:
            for path, state in ((topology, tmp / "state"), (lone, tmp / "lone-state")):
                started = time.perf_counter()
                cluster_down(path)
                took = time.perf_counter() - started
                left = leftovers(state)
                kill_all(left)
                if path == topology:
                    print(f"e. cnet cluster down: {took:.1f} s; processes left running: {len(left)}")
    return 0


def run(args, topology: Path, lone: Path, urls: dict[str, str], leaves: list[str]) -> None:
    with RootWatch(urls["root"], args.size) as watch:
        took = cluster_up(topology, timeout=args.timeout)
        pids = agent_pids(topology.parent / "state")
        if len(pids) != args.size:
            raise RuntimeError(f"{len(pids)} agents running, not {args.size}")
        last_start = max(psutil.Process(pid).create_time() for pid in pids.values())
        covered = watch.wait(30)
    print(f"a. cnet cluster up: {took:.1f} s; the root covered all {args.size} nodes "
          f"{covered - last_start:.2f} s after the last agent process started (target <= 3 s)")

    cluster_up(lone)
    lone_pid = agent_pids(lone.parent / "lone-state")["lone"]
    time.sleep(args.settle)
    idle = usage({**pids, "lone": lone_pid}, args.idle)
    base_cpu, base_rss = idle.pop("lone")
    total = sum(cpu for cpu, _ in idle.values())
    print(f"b. idle over {args.idle:g} s: all {args.size} agents {total:.1f} % of one core "
          f"(target <= 60 %), rss {sum(r for _, r in idle.values()) / 1024:.2f} GiB")
    print(f"   lone agent (no neighbours): cpu {base_cpu:.3f} %  rss {base_rss:.1f} MB")
    for role in ("root", "mid", "leaf"):
        mine = [v for n, v in idle.items() if role_of(n) == role]
        print(f"   {role:<5} x{len(mine):<4} cpu mean {statistics.mean(c for c, _ in mine):.3f} %  "
              f"max {max(c for c, _ in mine):.3f} %   rss mean {statistics.mean(r for _, r in mine):.1f} MB  "
              f"max {max(r for _, r in mine):.1f} MB")

    at_root, at_leaf = placements(urls, leaves, args.rounds)
    print("c. submit -> running, pinned to a leaf:")
    print(f"   at the leaf itself:      {ms(at_leaf)}")
    print(f"   at the root (two hops):  {ms(at_root)}   (target p50 <= 15 ms)")

    print("d. kill -9 of a mid-level node -> lost at the root (target <= 3.5 s):")
    mids = sorted(n for n in urls if role_of(n) == "mid")
    kills = []
    for i in range(args.kills):
        mid = mids[i % len(mids)]
        kills.append(asyncio.run(kill_to_lost(urls["root"], pids[mid], mid)))
        with RootWatch(urls["root"], args.size) as watch:
            started = time.time()
            cluster_up(topology, timeout=args.timeout)
            covered = watch.wait(60)
        pids = agent_pids(topology.parent / "state")
        print(f"   {mid}: lost after {kills[-1]:.2f} s ({silence_logged(topology, mid)}); started "
              f"again with cnet cluster up, the root covered every node {covered - started:.2f} s "
              f"after it began")
    if kills:
        print(f"   max {max(kills):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="agents in all")
    parser.add_argument("--children", type=int, default=0, help="mid-level nodes (0: sqrt(size))")
    parser.add_argument("--peers", type=int, default=1, help="following siblings each leaf lists")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring idle")
    parser.add_argument("--rounds", type=int, default=100, help="placements from the root")
    parser.add_argument("--kills", type=int, default=3, help="mid-level nodes to kill -9")
    parser.add_argument("--timeout", type=float, default=300.0, help="for each cnet cluster up")
    sys.exit(main(parser.parse_args()))
