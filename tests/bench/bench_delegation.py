"""Delegation benchmark (run by hand): ``python tests/bench/bench_delegation.py [--rounds 200]``.

Submit -> running (the POST returns once the process runs, wherever that is) on the four-node
Jiangsu cluster, interleaved in one run:

- local:    POST to nanjing, pinned to nanjing;
- one hop:  POST to jiangsu, pinned to nanjing (jiangsu -> nanjing);
- two hops: POST to jiangsu, pinned to suqian (jiangsu -> nanjing -> suqian).

Every sample includes the HTTP round trip and the process spawn, so the hops' cost is the
difference to ``local``. Target: one hop p50 <= 10 ms. Each workload is stopped and deleted
(untimed) before the next round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from tests.bench.bench_bus import percentiles  # noqa: E402
from tests.bench.bench_cluster import start_cluster  # noqa: E402
from tests.harness import load_topology, process_spec  # noqa: E402

ROUTES = {"local": ("nanjing", "nanjing"), "one hop": ("jiangsu", "nanjing"),
          "two hops": ("jiangsu", "suqian")}


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), load_topology(REPO / "topologies" / "jiangsu.yaml"))
        session = requests.Session()
        samples: dict[str, list[float]] = {route: [] for route in ROUTES}
        try:
            for i in range(args.rounds + args.warmup):
                for route, (origin, target) in ROUTES.items():
                    url = cluster[origin].url + "/api/workloads"
                    spec = process_spec(f"bench-{i}", cpu=0.5, placement={"node": target})
                    started = time.perf_counter()
                    resp = session.post(url, json=spec, timeout=30)
                    elapsed = time.perf_counter() - started
                    wl = resp.json()
                    assert resp.status_code == 201 and wl["status"] == "running", resp.text
                    assert wl["node_id"] == target, wl
                    if i >= args.warmup:
                        samples[route].append(elapsed)
                    session.post(f"{url}/{wl['id']}/stop", timeout=30)
                    session.delete(f"{url}/{wl['id']}", timeout=30)
        finally:
            for agent in cluster.values():
                agent.cleanup()
    for route, values in samples.items():
        print(f"submit -> running, {route:<9}: {percentiles(values)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    main(parser.parse_args())
