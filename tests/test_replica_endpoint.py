"""A replica set behind its one endpoint (``/svc/<id>/`` on the origin), on a real 3-node tree:
identical answers from every replica, and a bounded load that loses no request while a
replica's service, or a replica's whole node, is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from .harness import MODELS_DIR, deep_merge, wait_for
from .test_replica_sets import (  # noqa: F401 (tree: the fixture)
    CONFIG,
    ROOT,
    faces,
    start_tree,
    submit_set,
    tree,
)

LOAD_THREADS = 3


class Load:
    """Clients posting /predict through the set's endpoint until stopped; every answer kept."""

    def __init__(self, endpoint: str, image_b64: str):
        self.url = endpoint + "predict"
        self.body = {"image": image_b64}
        self.ok: list[tuple[str, list]] = []          # (replica that answered, detections)
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(LOAD_THREADS)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    resp = session.post(self.url, json=self.body, timeout=30)
                except requests.RequestException as exc:
                    self.failed.append(repr(exc))
                    continue
                if resp.status_code == 200:
                    self.ok.append((resp.headers.get("X-CNET-Replica", ""),
                                    resp.json()["detections"]))
                else:
                    self.failed.append(f"{resp.status_code} {resp.text[:200]}")

    def wait_answers(self, more: int, timeout: float = 30.0) -> None:
        target = len(self.ok) + more
        wait_for(lambda: len(self.ok) >= target, timeout=timeout, interval=0.05,
                 message=f"{more} more answers through the endpoint")


def _answers_alike(record: dict, image_b64: str) -> list:
    """Load the set's endpoint until every member answered: all answers are the first
    member's own (asked directly); that answer."""
    direct = requests.post(record["members"][0]["endpoint"] + "/predict",
                           json={"image": image_b64}, timeout=30).json()["detections"]
    with Load(record["endpoint"], image_b64) as load:
        wait_for(lambda: {r for r, _ in load.ok} >= {m["id"] for m in record["members"]},
                 timeout=60, message="answers from all three replicas")
    assert not load.failed
    assert all(detections == direct for _, detections in load.ok)
    return direct


def test_one_endpoint_answers_alike_from_every_replica(tree, astronaut_b64):  # noqa: F811
    assert _answers_alike(tree[ROOT].submit(faces()), astronaut_b64)


def test_a_yolo_set_answers_alike_from_every_replica(tree, astronaut_b64):  # noqa: F811
    model = MODELS_DIR / "yolo11n-320-int8.onnx"
    if not model.is_file():
        pytest.skip(f"shared models not found ({model}; set CNET_MODELS_DIR)")
    record = tree[ROOT].submit({"id": "yolo", "name": "yolo", "type": "mlmodel", "replicas": 3,
                                "config": {"model_type": "yolo", "model_path": str(model),
                                           "threads": 1},
                                "requirements": {"cpu": 1.0, "memory": 1 << 30}})
    assert sorted(m["node_id"] for m in record["members"]) == sorted(tree)
    assert "person" in {d["class"] for d in _answers_alike(record, astronaut_b64)}


def test_a_killed_replica_service_loses_no_request(tree, astronaut_b64):  # noqa: F811
    root = tree[ROOT]
    record, victim, host = submit_set(tree, 3)
    pid = host.workload(victim["id"])["process_pid"]
    with Load(record["endpoint"], astronaut_b64) as load:
        load.wait_answers(20)
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: (w := host.workload(victim["id"]))["restart_count"] == 1
                 and w["status"] == "running", timeout=30, message="the service restarted")
        load.wait_answers(20)
    assert not load.failed, load.failed[:5]
    assert root.workload("faces")["restart_count"] == 0       # restarted in place, not replaced


def test_a_killed_replica_node_loses_no_request_and_is_replaced(tree, astronaut_b64):  # noqa: F811
    root = tree[ROOT]
    record, victim, host = submit_set(tree, 2)
    pid = host.workload(victim["id"])["process_pid"]
    started = time.monotonic()
    with Load(record["endpoint"], astronaut_b64) as load:
        load.wait_answers(20)
        host.kill()                            # the node's machine goes: its agent and services
        os.killpg(pid, signal.SIGKILL)
        replaced = wait_for(lambda: (r := root.workload("faces"))["restart_count"] == 1
                            and all(m["status"] == "running" for m in r["members"]) and r,
                            timeout=45, message="the lost member replaced")
        load.wait_answers(20)
    assert not load.failed, load.failed[:5]
    nodes = {m["node_id"] for m in replaced["members"]}
    assert victim["node_id"] not in nodes and len(nodes) == 2
    after = {r for r, _ in load.ok[-10:]}
    assert victim["id"] not in after
    print(f"node lost and its member replaced within {time.monotonic() - started:.1f} s; "
          f"{len(load.ok)} requests answered, none failed")


@pytest.fixture
def slow_checks_tree(make_cluster):
    """The tree, its services' health checks given 5 s: a member that stops answering fails
    its first check after 5 s, and its third (which has its node restart it) 10 s later."""
    return start_tree(make_cluster, deep_merge(CONFIG, {"services": {"health_timeout": 5.0}}))


def test_a_member_failing_its_checks_takes_over_when_the_other_members_node_is_killed(
        slow_checks_tree, astronaut_b64):
    """A loaded machine: one member is slow (stopped here) and fails a health check, so new
    requests go to the other; then the other's node is killed. Until its origin sees that
    node lost, that member still looks healthy and usable: a request it refuses is retried on
    the slow member rather than failed, and none in flight to the slow one is cut short for
    its failed check. Once the slow member answers again, every request has been answered."""
    nodes = slow_checks_tree
    root = nodes[ROOT]
    record, victim, host = submit_set(nodes, 2)
    slow = next(m for m in record["members"] if m["id"] != victim["id"])
    slow_pid = nodes[slow["node_id"]].workload(slow["id"])["process_pid"]
    victim_pid = host.workload(victim["id"])["process_pid"]
    with Load(record["endpoint"], astronaut_b64) as load:
        load.wait_answers(10)
        os.kill(slow_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: root.workload(slow["id"]).get("healthy") is False, timeout=20,
                     message="the stopped member failing its health check")
            host.kill()
            os.killpg(victim_pid, signal.SIGKILL)
            wait_for(lambda: root.workload("faces")["restart_count"] == 1, timeout=30,
                     message="the killed node's member replaced")
        finally:
            os.kill(slow_pid, signal.SIGCONT)
        load.wait_answers(20)
    assert not load.failed, load.failed[:5]
    assert root.workload(slow["id"])["restart_count"] == 0     # it was slow, never restarted
