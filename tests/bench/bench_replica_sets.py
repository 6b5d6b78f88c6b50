"""Replica set benchmark (run by hand): ``python tests/bench/bench_replicas.py [--requests 400]``.

On a real three-node tree (jiangsu with the children nanjing and suzhou, all on this machine),
one opencv face-detection set (bundled cascade, one worker per replica) and the astronaut photo:

- routing: POST /predict at concurrency 1 through the set's endpoint (``/svc/<id>/`` on the
  origin) vs straight to the replica it forwards to, with one replica (target: <= 1 ms added at
  p50);
- throughput: requests/s at concurrency 8 through the endpoint with 1 replica, then with the set
  scaled to 3 (the same endpoint, the same run). Three replicas can only beat one where the
  machine has cores to spare: the figure names the cores it ran on.
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

from tests.harness import AgentProcess, free_port_range, link_cluster, wait_linked  # noqa: E402

TREE = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suzhou": {"parent": "jiangsu"}}
CORES = len(os.sched_getaffinity(0))


def photo_b64() -> str:
    from skimage import data
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(jpeg.tobytes()).decode()


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (ms)."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def latencies(url: str, body: dict, count: int) -> list[float]:
    out = []
    with requests.Session() as session:
        for _ in range(count):
            start = time.perf_counter()
            resp = session.post(url, json=body, timeout=30)
            out.append((time.perf_counter() - start) * 1000)
            assert resp.status_code == 200, resp.text
    return out


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
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-replicas-"))
    agents = {n: AgentProcess(root, n, {"services": {"port_range": list(free_port_range(10))}})
              for n in TREE}
    link_cluster(agents, TREE)
    try:
        for agent in agents.values():
            agent.start()
        wait_linked(agents, TREE)
        origin = agents["jiangsu"]
        body = {"image": photo_b64()}
        record = origin.submit({"id": "faces", "name": "faces", "type": "opencv", "replicas": 1,
                                "config": {"cascade_type": "face", "workers": 1},
                                "requirements": {"cpu": 1.0, "memory": 1 << 29}})
        routed, direct = record["endpoint"] + "predict", record["members"][0]["endpoint"] + "/predict"
        latencies(routed, body, 20)                    # warm both paths
        latencies(direct, body, 20)
        through, straight = [], []
        for _ in range(args.requests // 20):           # interleaved: both see the same load
            through += latencies(routed, body, 10)
            straight += latencies(direct, body, 10)
        p_through, p_straight = percentiles(through), percentiles(straight)
        print(f"POST /predict at concurrency 1 ({len(through)} each), ms:")
        print(f"  direct to the replica   p50 {p_straight[0]:7.2f}  p99 {p_straight[1]:7.2f}")
        print(f"  through /svc/faces/     p50 {p_through[0]:7.2f}  p99 {p_through[1]:7.2f}  "
              f"(+{p_through[0] - p_straight[0]:.2f} ms at p50; target <= 1 ms)")
        one = throughput(routed, body, args.requests)
        scaled = origin.api("POST", "/api/workloads/faces/scale", json={"replicas": 3}).json()
        assert len(scaled["members"]) == 3, scaled
        print(f"  (3 replicas on {sorted(m['node_id'] for m in scaled['members'])})")
        throughput(routed, body, 40)                   # warm the new replicas
        three = throughput(routed, body, args.requests)
        print(f"requests/s at concurrency 8 through /svc/faces/ ({args.requests} requests, "
              f"{CORES} cores):")
        print(f"  1 replica  {one:7.1f}")
        print(f"  3 replicas {three:7.1f}  ({three / one:.2f}x)")
        median = statistics.median(straight)
        print(f"(one detection takes about {median:.1f} ms end to end)")
    finally:
        for agent in agents.values():
            agent.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    main(parser.parse_args())
