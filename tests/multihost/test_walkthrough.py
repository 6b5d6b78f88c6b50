"""The seed's Jiangsu walkthrough with every agent on its own machine (network namespace)."""

from __future__ import annotations

from ..harness import process_spec, wait_for

CITIES = {"nanjing", "suqian", "changzhou"}


def test_jobs_too_big_for_the_root_run_on_cities_and_are_stopped_and_deleted_through_it(cluster):
    root = cluster["jiangsu"]
    view = root.api("GET", "/api/nodes").json()
    assert {c["node_id"]: c["status"] for c in view["children"]} == dict.fromkeys(CITIES, "alive")
    assert {c["node_id"]: c["address"] for c in view["children"]} == {
        n: cluster[n].url for n in CITIES}

    # jiangsu has 1 core: a 3-core job goes to a city, and fills it; the next goes to another.
    first = root.submit(process_spec("seed-job-1", cpu=3.0))
    assert first["status"] == "running" and first["node_id"] in CITIES, first
    runner = cluster[first["node_id"]]
    assert runner.resources()["allocated"]["cpu"] == 3.0
    wait_for(lambda: root.nodes()[runner.node_id]["allocated"]["cpu"] == 3.0, timeout=5,
             message=f"jiangsu's view of {runner.node_id}'s allocation")
    second = root.bus("submit", process_spec("seed-job-2", cpu=3.0))["workload"]
    assert second["status"] == "running", second
    assert second["node_id"] in CITIES - {runner.node_id}, second
    assert root.bus("get", second["id"])["node_id"] == second["node_id"]
    listed = {w["id"]: w["node_id"] for w in root.api("GET", "/api/workloads").json()["workloads"]}
    assert listed == {first["id"]: runner.node_id, second["id"]: second["node_id"]}

    # Stop and delete through jiangsu: forwarded to the city that runs it.
    assert root.api("POST", f"/api/workloads/{first['id']}/stop").status_code == 200
    assert root.wait_status(first["id"], "stopped")["node_id"] == runner.node_id
    assert runner.workload(first["id"])["status"] == "stopped"
    assert runner.resources()["allocated"]["cpu"] == 0.0
    wait_for(lambda: root.nodes()[runner.node_id]["allocated"]["cpu"] == 0.0, timeout=5,
             message=f"jiangsu's view of {runner.node_id} released")
    assert root.api("DELETE", f"/api/workloads/{first['id']}").status_code == 200
    assert root.api("GET", f"/api/workloads/{first['id']}").status_code == 404
    assert runner.api("GET", f"/api/workloads/{first['id']}").status_code == 404
    assert root.bus("delete", second["id"])["deleted"] is True
    assert cluster[second["node_id"]].api("GET", f"/api/workloads/{second['id']}").status_code == 404
