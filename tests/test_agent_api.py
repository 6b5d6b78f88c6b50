"""The seed's REST API on one real agent: workloads, resources, health, metrics, errors."""

from __future__ import annotations

import re
import subprocess

import pytest
import requests

from .harness import gone, process_spec, wait_for

GiB = 1 << 30


def test_seed_process_example_verbatim(agent):
    """The seed's `curl` example, run with real curl."""
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{agent.url}/api/workloads",
         "-H", "Content-Type: application/json",
         "-d", '{ "name": "test-process", "type": "process", "requirements": { "cpu": 1.0, '
               '"memory": 536870912 }, "config": { "command": "sleep", "args": ["60"] } }'],
        capture_output=True, text=True, timeout=30, check=True)
    import json
    body = json.loads(out.stdout)
    assert body["status"] == "running"
    assert body["name"] == "test-process" and body["type"] == "process"
    assert body["node_id"] == "jiangsu"
    assert isinstance(body["process_pid"], int) and body["process_pid"] > 0
    listing = json.loads(subprocess.run(["curl", "-s", f"{agent.url}/api/workloads"],
                                        capture_output=True, text=True, check=True).stdout)
    assert [w["id"] for w in listing["workloads"]] == [body["id"]]
    one = json.loads(subprocess.run(["curl", "-s", f"{agent.url}/api/workloads/{body['id']}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert one["process_pid"] == body["process_pid"]
    stopped = json.loads(subprocess.run(
        ["curl", "-s", "-X", "POST", f"{agent.url}/api/workloads/{body['id']}/stop"],
        capture_output=True, text=True, check=True).stdout)
    assert stopped["status"] == "stopped"
    subprocess.run(["curl", "-s", "-X", "DELETE", f"{agent.url}/api/workloads/{body['id']}"],
                   capture_output=True, check=True)
    assert agent.api("GET", f"/api/workloads/{body['id']}").status_code == 404


def test_resources_before_after_and_after_stop(agent):
    """The seed's quota example: 8 cores/16 GiB -> 6/14 after a 2-core/2 GiB workload -> 8/16."""
    before = agent.resources()
    assert set(before) == {"node_id", "capacity", "allocated", "available", "usage",
                           "devices"}
    for section in ("capacity", "allocated", "available", "usage"):
        assert {"cpu", "memory", "gpu", "storage"} <= set(before[section])
    assert before["available"]["cpu"] == 8 and before["available"]["memory"] == 16 * GiB
    assert before["allocated"]["cpu"] == 0 and before["allocated"]["memory"] == 0
    wl = agent.submit(process_spec(cpu=2.0, memory=2 * GiB))
    during = agent.resources()
    assert during["available"]["cpu"] == 6 and during["available"]["memory"] == 14 * GiB
    assert during["allocated"]["cpu"] == 2 and during["allocated"]["memory"] == 2 * GiB
    assert during["capacity"] == before["capacity"]
    agent.api("POST", f"/api/workloads/{wl['id']}/stop")
    after = agent.resources()
    assert after["available"]["cpu"] == 8 and after["available"]["memory"] == 16 * GiB
    assert after["allocated"]["cpu"] == 0 and after["allocated"]["memory"] == 0
    assert before["usage"]["memory"] > 0


def test_process_exit_codes_release_resources(agent):
    ok = agent.submit(process_spec(name="ok", command="true", args=[], cpu=3))
    bad = agent.submit(process_spec(name="bad", command="sh", args=["-c", "echo boom >&2; exit 3"],
                                    cpu=3))
    ok = agent.wait_status(ok["id"], "completed")
    bad = agent.wait_status(bad["id"], "failed")
    assert ok["exit_code"] == 0 and ok["finished_at"] is not None
    assert bad["exit_code"] == 3 and "code 3" in bad["message"]
    res = agent.resources()
    assert res["allocated"]["cpu"] == 0
    logs = agent.api("GET", f"/api/workloads/{bad['id']}/logs?tail=10").json()
    assert logs["logs"].strip() == "boom"
    # Stopping an ended workload is not an error and changes nothing.
    again = agent.api("POST", f"/api/workloads/{ok['id']}/stop")
    assert again.status_code == 200 and again.json()["status"] == "completed"


def test_env_working_dir_and_logs_tail(agent, tmp_path):
    script = "i=0; while [ $i -lt 50 ]; do echo line$i; i=$((i+1)); done; echo $GREETING; pwd"
    wl = agent.submit({
        "name": "env", "type": "process",
        "config": {"command": "sh", "args": ["-c", script], "env": {"GREETING": "hello"},
                   "working_dir": str(tmp_path)}})
    agent.wait_status(wl["id"], "completed")
    tail = agent.api("GET", f"/api/workloads/{wl['id']}/logs?tail=3").json()["logs"]
    assert tail.splitlines() == ["line49", "hello", str(tmp_path)]
    text = agent.api("GET", f"/api/workloads/{wl['id']}/logs?tail=2&format=text")
    assert text.headers["Content-Type"].startswith("text/plain")
    assert text.text.splitlines() == ["hello", str(tmp_path)]


def test_stop_kills_the_process_group_with_sigkill_after_grace(make_agent):
    agent = make_agent(config={"process": {"stop_grace": 0.5}})
    # The shell ignores SIGTERM and has a child: both must be gone after stop.
    wl = agent.submit(process_spec(command="sh", args=["-c", "trap '' TERM; sleep 300 & wait"]))
    import psutil
    leader = psutil.Process(wl["process_pid"])
    wait_for(lambda: leader.children(), message="the child sleep to start")
    child = leader.children()[0]
    stopped = agent.api("POST", f"/api/workloads/{wl['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert gone(leader.pid)
    wait_for(lambda: gone(child.pid), message="the child to die with its group")


def test_filters(agent):
    a = agent.submit(process_spec(name="a"))
    b = agent.submit(process_spec(name="b", command="true", args=[]))
    agent.wait_status(b["id"], "completed")
    running = agent.api("GET", "/api/workloads?status=running").json()
    assert [w["id"] for w in running["workloads"]] == [a["id"]]
    done = agent.api("GET", "/api/workloads?status=completed&type=process").json()
    assert [w["id"] for w in done["workloads"]] == [b["id"]]
    assert agent.api("GET", "/api/workloads?status=bogus").status_code == 400
    assert agent.api("GET", "/api/workloads?type=bogus").status_code == 400


def test_health_and_metrics(agent):
    health = agent.api("GET", "/api/health").json()
    assert health["status"] == "healthy" and health["node_id"] == "jiangsu"
    agent.submit(process_spec())
    agent.api("GET", "/api/resources")
    text = agent.api("GET", "/metrics").text
    assert 'cnet_workloads{state="running",type="process"} 1.0' in text
    assert 'cnet_resources_allocated{resource="cpu"} 1.0' in text
    assert "cnet_http_request_duration_seconds_bucket" in text


def test_made_up_methods_are_refused_and_counted_as_one_label(agent):
    for i in range(20):
        for path in ("/api/health", "/svc/nope/predict"):
            resp = agent.api(f"FROB{i}", path)
            assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    text = agent.api("GET", "/metrics").text
    assert "FROB" not in text   # every made-up method would be a series kept for good
    assert 'method="other",route="/svc/{id}",status="405"' in text


def test_metrics_count_submissions_by_type_and_outcome(agent):
    spec = process_spec(id="counted-1")
    agent.submit(spec)
    agent.submit(spec, expect=200)
    agent.submit(process_spec(command="no-such-command-xyz"), expect=400)
    agent.submit({"name": "x", "type": ["not", "a", "type"]}, expect=400)
    text = agent.api("GET", "/metrics").text
    assert 'cnet_workload_submissions_total{result="created",type="process"} 1.0' in text
    assert 'cnet_workload_submissions_total{result="existing",type="process"} 1.0' in text
    assert 'cnet_workload_submissions_total{result="command_not_found",type="process"} 1.0' in text
    # A type that is not one never becomes a label of its own.
    assert re.search(r'cnet_workload_submissions_total\{result="\w+",type="unknown"\} 1\.0', text)


def test_client_supplied_id_is_idempotent(agent):
    spec = process_spec(id="job-1")
    first = agent.api("POST", "/api/workloads", json=spec)
    second = agent.api("POST", "/api/workloads", json=spec)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["process_pid"] == second.json()["process_pid"]
    assert agent.resources()["allocated"]["cpu"] == 1
    other = agent.api("POST", "/api/workloads", json=process_spec(id="job-1", name="other"))
    assert other.status_code == 409


BAD_BODIES = [
    ("not json", b"{nope", 400, "invalid_json"),
    ("empty", b"", 400, "invalid_json"),
    ("array", b"[]", 400, "invalid_body"),
    ("no name", {"type": "process", "config": {"command": "true"}}, 400, "invalid_field"),
    ("no type", {"name": "x", "config": {"command": "true"}}, 400, "invalid_field"),
    ("unknown type", {"name": "x", "type": "teleport", "config": {}}, 400, "unknown_type"),
    ("config not object", {"name": "x", "type": "process", "config": "sleep"}, 400, "invalid_field"),
    ("no command", {"name": "x", "type": "process", "config": {}}, 400, "invalid_field"),
    ("args not list", {"name": "x", "type": "process", "config": {"command": "true", "args": "a"}},
     400, "invalid_field"),
    ("env not map", {"name": "x", "type": "process", "config": {"command": "true", "env": [1]}},
     400, "invalid_field"),
    ("negative cpu", process_spec(cpu=-1), 400, "invalid_field"),
    ("string memory", {**process_spec(), "requirements": {"memory": "2G"}}, 400, "invalid_field"),
    ("nan cpu", b'{"name":"x","type":"process","config":{"command":"true"},'
                b'"requirements":{"cpu":NaN}}', 400, "invalid_field"),
    ("absurd memory", {**process_spec(), "requirements": {"memory": 10**30}}, 400, "invalid_field"),
    ("unknown requirement", {**process_spec(), "requirements": {"tpu": 1}}, 400, "invalid_field"),
    ("unknown field", {**process_spec(), "priority": 5}, 400, "invalid_field"),
    ("command not found", process_spec(command="no-such-command-xyz"), 400, "command_not_found"),
    ("not executable", process_spec(command="/etc/passwd"), 400, "command_not_executable"),
    ("a directory", process_spec(command="/tmp"), 400, "command_not_executable"),
    ("bad working dir", {"name": "x", "type": "process",
                         "config": {"command": "true", "working_dir": "/no/such/dir"}},
     400, "invalid_field"),
    ("bad id", {**process_spec(), "id": "../../x"}, 400, "invalid_field"),
]


@pytest.mark.parametrize("label,body,status,code", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_submissions_change_nothing(agent, label, body, status, code):
    before = agent.resources()
    if isinstance(body, bytes):
        resp = agent.api("POST", "/api/workloads", data=body,
                         headers={"Content-Type": "application/json"})
    else:
        resp = agent.api("POST", "/api/workloads", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"]
    assert agent.api("GET", "/api/workloads").json()["count"] == 0
    assert agent.resources()["allocated"] == before["allocated"]


def test_insufficient_resources_is_503_with_reason(agent):
    resp = agent.api("POST", "/api/workloads", json=process_spec(cpu=9))
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "insufficient_resources"
    assert "cpu 8 free < 9 requested" in error["message"]
    assert agent.api("GET", "/api/workloads").json()["count"] == 0


def test_body_too_large_is_413(make_agent):
    agent = make_agent(config={"api": {"max_json_body": 4096}})
    big = {**process_spec(), "name": "x" * 10000}
    resp = agent.api("POST", "/api/workloads", json=big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    # Chunked (no Content-Length): counted while streaming.
    resp = agent.api("POST", "/api/workloads", data=iter([b'{"name": "', b"x" * 8000, b'"}']),
                     headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert agent.api("GET", "/api/workloads").json()["count"] == 0


def test_unknown_ids_and_endpoints_are_404(agent):
    for method, path in (("GET", "/api/workloads/nope"), ("DELETE", "/api/workloads/nope"),
                         ("POST", "/api/workloads/nope/stop"), ("GET", "/api/workloads/nope/logs"),
                         ("GET", "/api/nothing-here")):
        resp = agent.api(method, path)
        assert resp.status_code == 404, (method, path)
        assert resp.json()["error"]["code"] == "not_found"


def test_bad_tail_is_400(agent):
    wl = agent.submit(process_spec())
    for tail in ("x", "-1", "99999999"):
        resp = agent.api("GET", f"/api/workloads/{wl['id']}/logs?tail={tail}")
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid_argument"


def test_token_auth(make_agent):
    agent = make_agent(config={"api": {"token": "s3cret"}})
    anonymous = requests.get(agent.url + "/api/workloads", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    wrong = requests.post(agent.url + "/api/workloads", json=process_spec(),
                          headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert requests.get(agent.url + "/api/health", timeout=5).status_code == 200
    assert agent.api("GET", "/api/workloads").json()["count"] == 0  # nothing was started
    assert agent.submit(process_spec())["status"] == "running"


def test_token_from_environment(make_agent):
    agent = make_agent(env={"CNET_API_TOKEN": "envtoken"})
    assert requests.get(agent.url + "/api/resources", timeout=5).status_code == 401
    ok = requests.get(agent.url + "/api/resources", timeout=5,
                      headers={"Authorization": "Bearer envtoken"})
    assert ok.status_code == 200


def test_delete_running_stops_it_first(agent):
    import psutil
    wl = agent.submit(process_spec())
    proc = psutil.Process(wl["process_pid"])
    resp = agent.api("DELETE", f"/api/workloads/{wl['id']}")
    assert resp.status_code == 200
    assert gone(proc.pid)
    assert agent.resources()["allocated"]["cpu"] == 0
    assert agent.api("GET", f"/api/workloads/{wl['id']}").status_code == 404
