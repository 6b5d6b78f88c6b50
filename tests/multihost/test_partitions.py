"""Partitions, loss and a root crash on real agents in namespaces: a submit before, into and after
a cut; mirrors after short and long cuts; a lossy link; the root killed -9 and restarted. And a
model file that only one machine has, pinned there and elsewhere.

Timings are the bus defaults (heartbeat 1 s x 3 misses, request timeout 5 s)."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid

import pytest

from ..harness import MODELS_DIR, gone, process_spec, wait_for
from .client import CallError
from .conftest import CUT, TOPOLOGY
from .machines import private_tmp

INTERVAL, MISSES = 1.0, 3
LIVE = ("pending", "running", "stopping")
YOLO_MODEL = MODELS_DIR / "yolo11n-320-int8.onnx"


def _id(tag: str) -> str:
    return f"mh-{tag}-{uuid.uuid4().hex[:8]}"


def _listed(machine) -> dict[str, dict]:
    """``{id: record}`` of ``GET /api/workloads`` there; fails on a duplicate id."""
    items = machine.api("GET", "/api/workloads", timeout=10).json()["workloads"]
    ids = [w["id"] for w in items]
    assert len(ids) == len(set(ids)), f"{machine.node_id} lists an id twice: {sorted(ids)}"
    return {w["id"]: w for w in items}


def _status(machine, node_id: str) -> str:
    return machine.nodes()[node_id]["status"]


def _same(mirror: dict | None, record: dict | None) -> bool:
    return (mirror is not None and record is not None and mirror["node_id"] == record["node_id"]
            and (mirror["status"], mirror["version"]) == (record["status"], record["version"]))


def _starts(machine) -> int:
    text = machine.log_path.read_text(errors="replace")
    return text.count(f"agent {machine.node_id} listening on")


def _no_ghosts(origin, node) -> None:
    """Every live workload ``node`` runs for ``origin`` is listed there, and nothing twice."""
    mine = _listed(origin)
    ghosts = [wid for wid, w in _listed(node).items()
              if w.get("origin") == origin.node_id and w["status"] in LIVE and wid not in mine]
    assert not ghosts, f"{node.node_id} runs {ghosts} that {origin.node_id} does not list"


# -- 1. a model file on one machine only ---------------------------------------------------


def test_a_model_only_one_machine_has_runs_pinned_there_and_is_model_not_found_elsewhere(cluster):
    if not YOLO_MODEL.is_file():
        pytest.skip(f"shared models not found ({YOLO_MODEL}; set CNET_MODELS_DIR)")
    nanjing = cluster["nanjing"]
    name = f"cnetmh-model-{os.getpid()}.onnx"
    copy = private_tmp(nanjing) / name                           # nanjing's private /tmp only
    shutil.copyfile(YOLO_MODEL, copy)
    try:
        _pinned_model(cluster, f"/tmp/{name}")
    finally:
        copy.unlink(missing_ok=True)


def _pinned_model(cluster, model_path: str) -> None:
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    name = os.path.basename(model_path)
    assert not os.path.exists(model_path)                        # not the host's /tmp
    assert not (private_tmp(cluster["suqian"]) / name).exists()
    spec = {"name": "yolo-on-nanjing", "type": "mlmodel",
            "config": {"model_type": "yolo", "model_path": model_path, "threads": 1},
            "requirements": {"cpu": 1.0, "memory": 536870912}, "placement": {"node": "nanjing"}}

    wl = root.submit(spec)
    assert wl["node_id"] == "nanjing", wl
    wl = root.wait_status(wl["id"], "running", timeout=30)
    assert wl["endpoint"].startswith(f"http://{nanjing.host.address}:"), wl
    health = cluster.client.http("GET", wl["endpoint"] + "/health")
    assert health.status_code == 200, health.text

    for elsewhere in ("suqian", "jiangsu"):
        refused = root.api("POST", "/api/workloads",
                           json={**spec, "placement": {"node": elsewhere}})
        assert refused.status_code == 400, (elsewhere, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "model_not_found", error
        assert error["details"]["node_id"] == elsewhere and model_path in error["message"], error
    assert set(_listed(root)) == {wl["id"]}


# -- 2. a submit before, into and after a cut ----------------------------------------------


def test_submits_before_into_and_after_a_cut_are_placed_or_refused_in_time(cluster):
    root, city = cluster["jiangsu"], cluster[CUT]
    others = [cluster[n] for n in TOPOLOGY[CUT]["peers"]]
    before = root.submit(process_spec("before", cpu=0.25, placement={"node": CUT}, id=_id("before")))
    assert (before["status"], before["node_id"]) == ("running", CUT), before

    cluster.net.cut(CUT, "drop")
    cut_at = time.monotonic()
    time.sleep(0.5)                   # into the cut, before jiangsu can know (3 s window)
    during = process_spec("during", cpu=0.25, placement={"node": CUT}, id=_id("during"))
    asked = asked_during = time.monotonic()
    reply = root.api("POST", "/api/workloads", json=during, timeout=30)
    took = time.monotonic() - asked
    print(f"submit 0.5 s into the cut: {reply.status_code} after {took:.2f} s: {reply.text}")
    assert 400 <= reply.status_code < 600, reply.text       # never a silent start
    assert took <= 3.5, f"the answer took {took:.2f} s"        # never a hang

    wait_for(lambda: _status(root, CUT) == "lost", timeout=INTERVAL * (MISSES + 3), interval=0.05,
             message=f"jiangsu to mark {CUT} lost")
    print(f"{CUT} lost at jiangsu {time.monotonic() - cut_at:.2f} s after the cut")
    asked = time.monotonic()
    pinned = root.api("POST", "/api/workloads", timeout=30,
                      json=process_spec("pinned-lost", cpu=0.25, placement={"node": CUT}))
    took = time.monotonic() - asked
    assert 400 <= pinned.status_code < 600 and took < 1.0, (pinned.status_code, took, pinned.text)
    print(f"pinned to the lost {CUT}: {pinned.status_code} after {took:.2f} s: {pinned.text[:200]}")
    asked = time.monotonic()
    # Too big for jiangsu (1 core): a city, and not the lost one.
    free = root.api("POST", "/api/workloads", json=process_spec("elsewhere", cpu=3.0), timeout=30)
    took = time.monotonic() - asked
    assert free.status_code == 201 and took < 1.0, (free.status_code, took, free.text)
    assert free.json()["node_id"] in {o.node_id for o in others}, free.json()
    assert free.json()["status"] == "running", free.json()

    cluster.net.heal(CUT)
    wait_for(lambda: _status(root, CUT) == "alive", timeout=20, interval=0.05,
             message=f"jiangsu to see {CUT} alive again")
    back = root.wait_status(before["id"], "running", timeout=5)
    assert back["node_id"] == CUT and back["process_pid"] == before["process_pid"], back
    # Past the deadline its delegation carried, no node may start it any more.
    time.sleep(max(0.0, asked_during + 5.0 + 0.5 - time.monotonic()))
    after = root.submit(process_spec("after", cpu=0.25, placement={"node": CUT}))
    assert (after["status"], after["node_id"]) == ("running", CUT), after
    assert city.workload(after["id"])["status"] == "running"

    # The submit into the cut: listed at the origin if it started on the cut node, else nowhere.
    for other in others:
        runs = _listed(other).get(during["id"])
        assert runs is None or runs["node_id"] != other.node_id, runs
    seen: dict = {}
    def settled() -> bool:
        seen["there"] = there = _listed(city).get(during["id"])
        seen["here"] = here = _listed(root).get(during["id"])
        if there is not None and there["status"] in LIVE:
            return _same(here, there)
        return here is None or here["status"] not in LIVE
    wait_for(settled, timeout=3, interval=0.05,
             message=f"the submit into the cut to be listed at {root.node_id} if it runs ({seen})")
    print(f"into the cut, after the heal: on {CUT}: {seen['there']}")
    _no_ghosts(root, city)


# -- 3. mirrors after a short and a long cut -----------------------------------------------


@pytest.mark.parametrize("cut_s", [2.0, 8.0])
def test_mirrors_equal_the_nodes_records_within_a_second_of_it_being_alive_again(cluster, cut_s):
    root, city = cluster["jiangsu"], cluster[CUT]
    keeps = root.submit(process_spec("keeps", cpu=0.25, placement={"node": CUT}, id=_id("keeps")))
    ends = root.submit(process_spec("ends", cpu=0.25, placement={"node": CUT}, id=_id("ends")))
    assert keeps["status"] == ends["status"] == "running", (keeps, ends)

    cluster.net.cut(CUT, "drop")
    cut_at = time.monotonic()
    time.sleep(0.3)
    os.kill(ends["process_pid"], signal.SIGKILL)     # it ends during the cut, on nanjing itself
    seen_lost = False
    while time.monotonic() - cut_at < cut_s:
        seen_lost = seen_lost or _status(root, CUT) == "lost"
        time.sleep(0.1)
    cluster.net.heal(CUT)
    healed = time.monotonic()
    if seen_lost:
        wait_for(lambda: _status(root, CUT) == "alive", timeout=20, interval=0.02,
                 message=f"jiangsu to see {CUT} alive again")
    alive = time.monotonic()
    records = {}
    def reconciled() -> bool:
        records.update(_listed(city))
        mirrors = _listed(root)
        return all(_same(mirrors.get(w["id"]), records.get(w["id"])) for w in (keeps, ends))
    wait_for(reconciled, timeout=10, interval=0.02, message="every mirror equal to nanjing's record")
    took = time.monotonic() - alive
    print(f"{cut_s:g} s cut (lost at jiangsu: {seen_lost}): alive {alive - healed:.2f} s after the "
          f"heal, mirrors equal {took:.2f} s after that")
    assert records[keeps["id"]]["status"] == "running"
    assert records[ends["id"]]["status"] not in LIVE, records[ends["id"]]
    mirrors = _listed(root)
    assert set(mirrors) == {keeps["id"], ends["id"]}, sorted(mirrors)    # no ghosts
    _no_ghosts(root, city)
    if cut_s > INTERVAL * MISSES:
        assert seen_lost, f"a {cut_s:g} s cut was never noticed"
    if took > 1.0 and not seen_lost:
        # Shorter than the loss window: no re-join, so no reconcile; the end's broadcast comes
        # through only when TCP retransmits it (backoff 0.2, 0.4, 0.8, 1.6 s ...).
        pytest.xfail(f"known limitation: after a {cut_s:g} s cut (never lost, no reconcile) the "
                     f"mirror of {ends['id']} equals {CUT}'s record only {took:.2f} s after the "
                     f"heal (target 1 s)")
    assert took <= 1.0, f"mirrors equal only {took:.2f} s after {CUT} was alive again"


# -- 4. a lossy link -----------------------------------------------------------------------


def test_delegations_over_a_lossy_link_leave_no_stuck_record_and_no_ghost(cluster):
    root, city = cluster["jiangsu"], cluster[CUT]
    cluster.net.loss(CUT, 0.25)
    answers: list[tuple[str, int, float, str]] = []
    stopped = None
    until = time.monotonic() + 15
    try:
        while time.monotonic() < until:
            spec = process_spec(f"lossy-{len(answers)}", cpu=0.1, placement={"node": CUT},
                                id=_id("lossy"))
            asked = time.monotonic()
            try:
                reply = root.api("POST", "/api/workloads", json=spec, timeout=30)
            except CallError as exc:
                pytest.fail(f"submit {spec['id']} was not answered: {exc}")
            status = reply.json().get("status", "") if reply.status_code == 201 else ""
            answers.append((spec["id"], reply.status_code, time.monotonic() - asked, status))
            if stopped is None and status == "running":
                stopped = spec["id"]
                root.api("POST", f"/api/workloads/{stopped}/stop", timeout=30)
            time.sleep(max(0.0, 1.5 - (time.monotonic() - asked)))
    finally:
        dropped = cluster.net.dropped(CUT)
        cluster.net.loss(CUT, 0)
    ended = time.monotonic()
    print(f"{len(answers)} submits over the lossy link, {dropped} packets dropped: "
          + ", ".join(f"{code}/{status or '-'} in {took:.1f} s" for _, code, took, status in answers))
    assert dropped > 0, "the loss was not in the path"
    assert len(answers) >= 4
    for wid, code, took, _ in answers:
        assert code in (201, 503), (wid, code)
        assert took <= 2 * 5.0 + 2, (wid, took)    # two tries of request_timeout at most
    if _status(root, CUT) != "alive":
        wait_for(lambda: _status(root, CUT) == "alive", timeout=20, interval=0.1,
                 message=f"jiangsu to see {CUT} alive after the loss")

    def settled() -> bool:
        mirrors, records = _listed(root), _listed(city)
        for wid, mirror in mirrors.items():
            if mirror["node_id"] != CUT:
                continue
            if wid in records:
                if not _same(mirror, records[wid]):
                    return False
            elif mirror["status"] in LIVE:     # pending until the node says it never started
                return False
        return all(wid in mirrors for wid, w in records.items()
                   if w.get("origin") == root.node_id and w["status"] in LIVE)
    wait_for(settled, timeout=30, interval=0.2, message="every mirror equal to nanjing's record")
    print(f"settled {time.monotonic() - ended:.1f} s after the loss ended")
    mirrors, records = _listed(root), _listed(city)
    for wid, code, _, status in answers:
        if code == 201 and status == "running":
            assert wid in mirrors and wid in records, wid
    if stopped is not None:
        assert mirrors[stopped]["status"] == records[stopped]["status"] == "stopped"
    _no_ghosts(root, city)


# -- 5. the root killed -9 and restarted ---------------------------------------------------


def test_a_root_killed_and_restarted_relinks_and_keeps_its_records(cluster):
    root = cluster["jiangsu"]
    placed = {node: root.submit(process_spec(f"on-{node}", cpu=0.25, placement={"node": node},
                                             id=_id(node)))
              for node in ("nanjing", "suqian", "jiangsu")}
    assert all(w["status"] == "running" and w["node_id"] == n for n, w in placed.items()), placed

    old, starts = root.proc.pid, _starts(root)
    root.kill()
    assert gone(old), f"agent {old} still runs after kill -9"
    os.kill(placed["suqian"]["process_pid"], signal.SIGKILL)   # ends while its origin is down
    cluster["suqian"].wait_status(placed["suqian"]["id"], "failed", "completed", "stopped")
    started = time.monotonic()
    root.start()
    cluster.wait_linked(10)
    relinked = time.monotonic() - started
    print(f"jiangsu up and every link alive {relinked:.1f} s after the restart")
    assert relinked <= 10
    assert root.proc.pid != old and _starts(root) == starts + 1

    def intact() -> bool:
        mirrors = _listed(root)
        return set(mirrors) == {w["id"] for w in placed.values()} and all(
            _same(mirrors[w["id"]], cluster[n].workload(w["id"])) for n, w in placed.items())
    wait_for(intact, timeout=5, interval=0.05, message="jiangsu's records after its restart")
    mirrors = _listed(root)
    assert mirrors[placed["nanjing"]["id"]]["status"] == "running"
    assert mirrors[placed["suqian"]["id"]]["status"] not in LIVE
    local = mirrors[placed["jiangsu"]["id"]]
    assert local["status"] == "running" and local["process_pid"] == placed["jiangsu"]["process_pid"]
    for node in ("nanjing", "suqian"):
        _no_ghosts(root, cluster[node])
