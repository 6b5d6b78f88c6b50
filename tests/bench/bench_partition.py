"""Partition benchmark on the multi-host bed (run by hand, as root): ``python
tests/bench/bench_partition.py [--rounds 5]``.

On the namespaces of ``tests/multihost`` (one per machine, the Jiangsu tree), at the bus
defaults (heartbeat 1 s x 3 misses, request timeout 5 s), per round:

a. cut nanjing's link -> nanjing ``lost`` at jiangsu. Target: <= 3.5 s (the loss window is 3 s).
b. heal -> nanjing ``alive`` at jiangsu (a new handshake both ways).
c. ``alive`` -> every mirror at jiangsu equal to nanjing's own record (one workload kept running,
   one that ended during the cut). Target: <= 1 s.
d. a submit pinned to nanjing made 0.5 s into the cut -> its answer (503 node_lost, or 400 when
   the scheduler already knows it is lost). Target: <= 3.5 s.

Each figure is printed beside the configured heartbeat interval and loss window it depends on.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import process_spec, wait_for  # noqa: E402
from tests.multihost import netns  # noqa: E402
from tests.multihost.machines import Cluster  # noqa: E402

TOPOLOGY = {"jiangsu": {}, "nanjing": {"parent": "jiangsu", "peers": ["suqian"]},
            "suqian": {"parent": "jiangsu", "peers": ["nanjing"]}}
INTERVAL, MISSES = 1.0, 3
CUT = "nanjing"


def _status(root, node_id: str) -> str:
    return root.nodes()[node_id]["status"]


def one_round(cluster: Cluster) -> dict[str, float]:
    """One cut and heal; then a second cut with a submit into it (the bed's client answers one
    call at a time, so the two are measured in turn)."""
    root, city = cluster["jiangsu"], cluster[CUT]
    keeps = root.submit(process_spec("keeps", cpu=0.25, placement={"node": CUT}))
    stops = root.submit(process_spec("ends", cpu=0.25, placement={"node": CUT}))
    figures: dict[str, float] = {}
    cluster.net.cut(CUT, "drop")
    cut_at = time.monotonic()
    wait_for(lambda: _status(root, CUT) == "lost", timeout=15, interval=0.02,
             message="nanjing lost at jiangsu")
    figures["cut -> lost"] = time.monotonic() - cut_at
    os.kill(stops["process_pid"], signal.SIGTERM)   # it ends during the cut, on nanjing itself
    cluster.net.heal(CUT)
    healed = time.monotonic()
    wait_for(lambda: _status(root, CUT) == "alive", timeout=30, interval=0.02,
             message="nanjing alive at jiangsu")
    alive = time.monotonic()
    figures["heal -> alive"] = alive - healed

    def reconciled() -> bool:
        return all(root.workload(w["id"])["status"] == city.workload(w["id"])["status"]
                   for w in (keeps, stops))
    wait_for(reconciled, timeout=30, interval=0.02, message="mirrors reconciled")
    figures["alive -> reconciled"] = time.monotonic() - alive

    cluster.net.cut(CUT, "drop")
    time.sleep(0.5)                  # into the cut, before the loss window ends
    asked = time.monotonic()
    reply = root.api("POST", "/api/workloads", timeout=60,
                     json=process_spec("into-the-cut", cpu=0.25, placement={"node": CUT}))
    figures["submit into the cut -> answer"] = time.monotonic() - asked
    assert reply.status_code >= 400, reply.text       # never a hang, never a silent start
    cluster.reset()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    reason = netns.unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    parent = Path(os.environ.get("CNET_MULTIHOST_DIR", "/var/tmp"))
    netns.sweep_stale(parent)
    cluster = Cluster(parent / f"{netns.PREFIX}{os.getpid()}", TOPOLOGY,
                      node_config={"jiangsu": {"resources": {"cpu": 0.5}}})
    try:
        cluster.start()
        rounds = [one_round(cluster) for _ in range(args.rounds)]
    finally:
        cluster.teardown()
    window = INTERVAL * MISSES
    targets = {"cut -> lost": 3.5, "heal -> alive": None, "alive -> reconciled": 1.0,
               "submit into the cut -> answer": 3.5}
    print(f"bus defaults: heartbeat {INTERVAL:g} s, loss window {window:g} s; {args.rounds} rounds")
    for name, target in targets.items():
        values = [r[name] for r in rounds]
        line = (f"  {name:<32} p50 {statistics.median(values):6.2f} s   max {max(values):6.2f} s"
                f"   (window {window:g} s)")
        if target is not None:
            line += f"   target <= {target:g} s: {'met' if max(values) <= target else 'MISSED'}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
