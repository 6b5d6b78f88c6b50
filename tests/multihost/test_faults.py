"""Link faults between machines: a cut city is lost and comes back with its workloads; a slow,
lossy link keeps its node alive and answers every delegation."""

from __future__ import annotations

import re
import time

import pytest

from ..harness import process_spec, wait_for
from .conftest import CUT, DELAYED, TOPOLOGY

INTERVAL, MISSES = 1.0, 3           # the bus defaults: a neighbour is lost after 3 silent seconds
SLOW_LINK_SECONDS = 60              # how long the slow, lossy link lasts (the 60 s)


def _alive(machine, node_id: str) -> bool:
    return machine.nodes()[node_id]["status"] == "alive"


@pytest.mark.parametrize("how", ["link", "drop"])
def test_a_cut_city_is_lost_within_a_few_heartbeats_and_back_with_its_workload(cluster, how):
    root, city = cluster["jiangsu"], cluster[CUT]
    wl = root.submit(process_spec("before-the-cut", cpu=0.5, placement={"node": CUT}))
    assert (wl["status"], wl["node_id"]) == ("running", CUT), wl
    losses = _losses(root, CUT)

    cluster.net.cut(CUT, how)
    cut_at = time.monotonic()
    wait_for(lambda: root.nodes()[CUT]["status"] == "lost", timeout=INTERVAL * (MISSES + 3),
             interval=0.1, message=f"jiangsu to mark {CUT} lost")
    print(f"{CUT} lost at jiangsu {time.monotonic() - cut_at:.1f} s after the cut ({how})")
    for peer in TOPOLOGY[CUT]["peers"]:
        wait_for(lambda p=cluster[peer]: not _alive(p, CUT), timeout=INTERVAL * (MISSES + 3),
                 interval=0.1, message=f"{peer} to mark {CUT} lost")
    assert root.wait_status(wl["id"], "lost", timeout=5)["node_id"] == CUT
    assert _losses(root, CUT) == losses + 1     # what the slow-link test counts

    cluster.net.heal(CUT)
    healed_at = time.monotonic()
    wait_for(lambda: _alive(root, CUT), timeout=20, interval=0.1,
             message=f"jiangsu to see {CUT} alive again")
    print(f"{CUT} alive at jiangsu {time.monotonic() - healed_at:.1f} s after the heal")
    back = root.wait_status(wl["id"], "running", timeout=10)
    assert back["node_id"] == CUT and back["process_pid"] == wl["process_pid"], back
    assert city.workload(wl["id"])["status"] == "running"


def _losses(machine, node_id: str) -> int:
    text = machine.log_path.read_text(errors="replace")
    return len(re.findall(rf"neighbour {re.escape(node_id)} \(\w+\) is lost", text))


def test_a_slow_lossy_link_keeps_its_city_alive_and_answers_every_delegation(cluster):
    if cluster.no_delay:
        pytest.skip(f"no way to delay a link on this kernel: {cluster.no_delay}")
    root = cluster["jiangsu"]
    watchers = {n: cluster[n] for n in ("jiangsu", *TOPOLOGY[DELAYED]["peers"])}
    before = {n: _losses(m, DELAYED) for n, m in watchers.items()}
    cluster.net.delay(DELAYED, 0.1)
    cluster.net.loss(DELAYED, 0.05)

    answered: list[float] = []
    until = time.monotonic() + SLOW_LINK_SECONDS
    while time.monotonic() < until:
        started = time.monotonic()
        wl = root.submit(process_spec(f"slow-{len(answered)}", cpu=0.5,
                                      placement={"node": DELAYED}))
        answered.append(time.monotonic() - started)
        assert (wl["status"], wl["node_id"]) == ("running", DELAYED), wl
        assert root.api("DELETE", f"/api/workloads/{wl['id']}").status_code == 200
        for name, machine in watchers.items():
            assert _alive(machine, DELAYED), f"{name} lost {DELAYED}"
        assert all(_alive(cluster[DELAYED], n) for n in watchers), cluster[DELAYED].nodes()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))    # about one a second
    print(f"{len(answered)} delegations, {min(answered):.2f}..{max(answered):.2f} s each")
    assert len(answered) >= SLOW_LINK_SECONDS // 2
    assert min(answered) >= 0.2, "the delay was not in the path"   # 100 ms each way
    assert {n: _losses(m, DELAYED) for n, m in watchers.items()} == before
    assert cluster.net.dropped(DELAYED) > 0, "the loss was not in the path"
