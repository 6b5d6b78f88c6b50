"""Replica set benchmark, the set half (run by hand):
``python tests/bench/bench_replica_sets.py [--rounds 5] [--requests 400]``.

On a real three-node tree (jiangsu with the children nanjing and suzhou, all on this machine)
and the opencv face service (bundled cascade, one worker):

- placing: submit -> answered with every member running, for a set of 3 (one member per node,
  two of them delegated) beside a single opencv workload on the origin, interleaved in one run;
  the set's figure is about 3 service starts, as it places its members one after the other;
- scaling on real agents: requests/s at concurrency 8 through the set's endpoint with 1
  member, then after ``scale`` to 3 (the same endpoint, the same run). Three members only beat
  one where the machine has cores to spare: the figure names the cores it ran on. The router's
  own cost is ``bench_replicas.py``'s.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import requests  # noqa: E402

from tests.harness import (  # noqa: E402
    AgentProcess,
    free_port_range,
    link_cluster,
    wait_for,
    wait_linked,
)

TREE = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suzhou": {"parent": "jiangsu"}}
CORES = len(os.sched_getaffinity(0))
SPEC = {"name": "faces", "type": "opencv", "config": {"cascade_type": "face", "workers": 1},
        "requirements": {"cpu": 1.0, "memory": 1 << 29}}


def photo_b64() -> str:
    from skimage import data
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(jpeg.tobytes()).decode()


def timed_submit(origin: AgentProcess, spec: dict) -> float:
    start = time.perf_counter()
    record = origin.submit(spec)
    # A delegated start that outlasts the delegation's wait is answered pending: wait for it.
    def running() -> bool:
        now = origin.workload(record["id"])
        return all(m["status"] == "running" for m in now.get("members") or [now])

    wait_for(running, timeout=60, interval=0.005, message=f"{record['id']} running")
    elapsed = time.perf_counter() - start
    assert origin.api("DELETE", f"/api/workloads/{record['id']}").status_code == 200
    return elapsed * 1000


def throughput(url: str, body: dict, count: int, concurrency: int = 8) -> float:
    left = [count]
    lock = threading.Lock()
    failed: list[str] = []

    def run() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                resp = session.post(url, json=body, timeout=60)
                if resp.status_code != 200:
                    failed.append(resp.text[:200])

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    assert not failed, failed[:3]
    return count / elapsed


def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-sets-"))
    agents = {n: AgentProcess(root, n, {"services": {"port_range": list(free_port_range(10))}})
              for n in TREE}
    link_cluster(agents, TREE)
    try:
        for agent in agents.values():
            agent.start()
        wait_linked(agents, TREE)
        origin = agents["jiangsu"]
        single, sets = [], []
        for i in range(args.rounds):                   # interleaved: both see the same load
            single.append(timed_submit(origin, {**SPEC, "id": f"one-{i}"}))
            sets.append(timed_submit(origin, {**SPEC, "id": f"set-{i}", "replicas": 3}))
        print(f"submit -> running, ms (median of {args.rounds}, min..max):")
        print(f"  one opencv workload      {statistics.median(single):8.1f}  "
              f"({min(single):.1f}..{max(single):.1f})")
        print(f"  a set of 3 over 3 nodes  {statistics.median(sets):8.1f}  "
              f"({min(sets):.1f}..{max(sets):.1f}; "
              f"{statistics.median(sets) / statistics.median(single):.2f}x the single one)")

        body = {"image": photo_b64()}
        record = origin.submit({**SPEC, "id": "faces", "replicas": 1})
        url = record["endpoint"] + "predict"
        throughput(url, body, 40)                      # warm
        one = throughput(url, body, args.requests)
        start = time.perf_counter()
        scaled = origin.api("POST", "/api/workloads/faces/scale", json={"replicas": 3}).json()
        scale_ms = (time.perf_counter() - start) * 1000
        assert len(scaled["members"]) == 3, scaled
        throughput(url, body, 40)                      # warm the new members
        three = throughput(url, body, args.requests)
        print(f"scale 1 -> 3: {scale_ms:.0f} ms, members on "
              f"{sorted(m['node_id'] for m in scaled['members'])}")
        print(f"requests/s at concurrency 8 through {record['endpoint']} ({args.requests} "
              f"requests, {CORES} cores):")
        print(f"  1 member   {one:7.1f}")
        print(f"  3 members  {three:7.1f}  ({three / one:.2f}x)")
    finally:
        for agent in agents.values():
            agent.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    main(parser.parse_args())
