"""Benchmark: scheduler decisions/s with 1,000 nodes in the snapshot (target >= 5,000/s).

Baseline in the same run: one plain Python pass over the same 1,000 nodes checking the fit
(the least any per-node loop must do).  Run: .venv/bin/python tests/bench/bench_scheduler.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cnet.candidates import NodeView, Snapshot  # noqa: E402
from cnet.resources import Resources  # noqa: E402
from cnet.scheduler import Placement, schedule  # noqa: E402

GiB = 1 << 30


def make_nodes(n: int) -> list[NodeView]:
    rng = random.Random(7)
    nodes = [NodeView("self", "self", available=Resources(cpu=1.0, memory=GiB),
                      capacity=Resources(cpu=8.0, memory=16 * GiB))]
    for i in range(n - 1):
        nodes.append(NodeView(
            f"node-{i:04d}", "child" if i % 3 else "peer",
            status="lost" if i % 50 == 0 else "alive",
            available=Resources(cpu=rng.uniform(0, 8), memory=int(rng.uniform(0, 16) * GiB)),
            capacity=Resources(cpu=8.0, memory=16 * GiB),
            labels={"zone": rng.choice(["north", "south", "east"])},
            workload_names=frozenset({f"w{rng.randrange(20)}"})))
    return nodes


def rate(fn, seconds: float = 1.0) -> float:
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - t0)


def main() -> None:
    nodes = make_nodes(1000)
    snap = Snapshot("self", nodes)
    request = Resources(cpu=2.0, memory=2 * GiB)
    need = request

    def baseline():
        return [n for n in nodes if n.status == "alive" and need.fits_in(n.available)]

    print("scheduler decisions/s with 1,000 nodes in the snapshot (target >= 5,000/s)")
    print(f"  baseline (plain Python fit check over the nodes): {rate(baseline):,.0f}/s")
    for placement in (Placement(), Placement(strategy="binpack"), Placement(strategy="spread"),
                      Placement.parse({"node_selector": {"zone": "north"},
                                       "anti_affinity": [{"name": "w3"}]})):
        r = rate(lambda p=placement: schedule(request, p, snap))
        print(f"  {placement.strategy:<12} {placement.to_dict()}: {r:,.0f}/s")
    t0 = time.perf_counter()
    for _ in range(20):
        Snapshot("self", nodes)
    print(f"  building the snapshot (for each decision that cannot stay local): "
          f"{(time.perf_counter() - t0) / 20 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
