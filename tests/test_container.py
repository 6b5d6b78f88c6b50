"""Container workloads against a real Docker Engine API (Podman's service in CI: .ci/podman-up).

The engine is found through DOCKER_HOST or the env file .ci/podman-up writes; without one the
engine tests skip (the engine-down test and the config checks still run).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from pathlib import Path

import pytest
import requests

from cnet.executors.container import _about_limits
from cnet.executors.container_config import _ports
from cnet.executors.container_engine import describe_exit

from .harness import free_port, process_spec, wait_for

IMAGE = "cnet-test/busybox:latest"
ENV_FILE = Path(os.environ.get("CNET_PODMAN_DIR", "/tmp/cnet-podman")) / "env"
ZERO = {"cpu": 0.0, "memory": 0, "gpu": 0, "storage": 0}


def _engine_url() -> str | None:
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key.strip() == "DOCKER_HOST":
                return value.strip().strip("\"'")
    return None


@pytest.fixture(scope="module")
def engine():
    """A docker SDK client on the test engine, with the test image present; else skip."""
    docker = pytest.importorskip("docker")
    url = _engine_url()
    if url is None:
        pytest.skip("no container engine: run .ci/podman-up (podman) or set DOCKER_HOST")
    try:
        client = docker.DockerClient(base_url=url, timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"container engine at {url} not reachable ({exc}); run .ci/podman-up (podman)")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"test image {IMAGE} missing; run .ci/podman-up (podman) to import it")
    client.url = url
    yield client
    client.close()


@pytest.fixture
def cagent(make_agent, engine):
    """An agent on the test engine, with a node id of its own; its containers removed after."""
    node_id = f"ct-{uuid.uuid4().hex[:8]}"
    agent = make_agent(node_id, config={"container": {"engine_url": engine.url}})
    yield agent
    for container in engine.containers.list(all=True, filters={"label": f"cnet.node_id={node_id}"}):
        container.remove(force=True)


def container_spec(command: str | list[str], name: str = "test-container", cpu: float = 0.5,
                   memory: int = 64 << 20, workload_id: str | None = None, **config) -> dict:
    spec = {"name": name, "type": "container", "requirements": {"cpu": cpu, "memory": memory},
            "config": {"image": IMAGE, "command": command, "stop_grace": 1, **config}}
    if workload_id is not None:
        spec["id"] = workload_id
    return spec


def labelled(engine, workload_id: str) -> list:
    return engine.containers.list(all=True, filters={"label": f"cnet.workload_id={workload_id}"})


def container_health(agent) -> dict:
    resp = agent.api("GET", "/api/health", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["executors"]["container"]


def logs(agent, workload_id: str, tail: int = 100) -> str:
    resp = agent.api("GET", f"/api/workloads/{workload_id}/logs", params={"tail": tail})
    assert resp.status_code == 200, resp.text
    return resp.json()["logs"]


# -- on a real engine --------------------------------------------------------------------


def test_run_logs_limits_and_stop(cagent, engine):
    health = wait_for(lambda: container_health(cagent)["status"] == "up" and container_health(cagent),
                      message="the engine to show as up in /api/health")
    assert health["engine"] == engine.url and health["version"]

    wl = cagent.submit(container_spec("sh -c 'echo hello-out; echo hello-err >&2; sleep 300'"))
    assert wl["status"] == "running" and wl["image"] == IMAGE
    container = engine.containers.get(wl["container_id"])
    assert container.labels["cnet.workload_id"] == wl["id"]
    assert container.labels["cnet.node_id"] == cagent.node_id
    host_config = container.attrs["HostConfig"]
    if wl["limits"].startswith("enforced"):
        assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 64 << 20
    else:
        assert wl["limits"].startswith("not enforced")
    assert cagent.resources()["allocated"]["memory"] == 64 << 20

    text = wait_for(lambda: "hello-err" in (t := logs(cagent, wl["id"])) and t,
                    message="the container's output in its logs")
    assert "hello-out" in text
    assert logs(cagent, wl["id"], tail=1).strip() in ("hello-out", "hello-err")

    stopped = cagent.api("POST", f"/api/workloads/{wl['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["exit_code"] is not None
    container.reload()
    assert container.status == "exited"
    assert cagent.resources()["allocated"] == ZERO
    assert "hello-out" in logs(cagent, wl["id"])  # still readable until the workload is deleted


@pytest.mark.parametrize("code,status", [(0, "completed"), (7, "failed")])
def test_exit_code_ends_the_workload(cagent, code, status):
    wl = cagent.submit(container_spec(["sh", "-c", f"echo bye; exit {code}"]))
    ended = cagent.wait_status(wl["id"], "completed", "failed")
    assert ended["status"] == status and ended["exit_code"] == code
    assert f"code {code}" in ended["message"]
    assert cagent.resources()["allocated"] == ZERO
    assert "bye" in logs(cagent, wl["id"])


def test_port_mapping_serves_a_mounted_volume(cagent, engine, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served from a cnet container\n")
    port = free_port()
    spec = container_spec(["httpd", "-f", "-p", "80", "-h", "/www"],
                          ports={"80/tcp": port}, volumes=[f"{www}:/www:ro"])
    wl = cagent.submit(spec)
    assert wl["endpoint"] == f"http://127.0.0.1:{port}" and wl["ports"] == {"80/tcp": port}
    page = wait_for(lambda: requests.get(wl["endpoint"] + "/index.html", timeout=2),
                    message="httpd through the mapped host port")
    assert page.text == "served from a cnet container\n"

    # The same host port again: a clear conflict, nothing reserved, no container left over.
    taken = cagent.api("POST", "/api/workloads", json={**spec, "id": "port-taken"})
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"]["code"] == "port_in_use"
    assert cagent.api("GET", "/api/workloads/port-taken").status_code == 404
    assert labelled(engine, "port-taken") == []
    assert cagent.resources()["allocated"]["memory"] == 64 << 20

    # No host port given: the engine picks one, and the endpoint says which.
    picked = cagent.submit({**spec, "config": {**spec["config"], "ports": {"80": None}}})
    assert picked["endpoint"] and picked["endpoint"] != wl["endpoint"]
    wait_for(lambda: requests.get(picked["endpoint"] + "/index.html", timeout=2).ok,
             message="httpd through the engine-picked port")

    for item in (wl, picked):
        assert cagent.api("POST", f"/api/workloads/{item['id']}/stop").json()["status"] == "stopped"
    assert cagent.resources()["allocated"] == ZERO


def test_missing_image_fails_fast_and_reserves_nothing(cagent, engine):
    spec = container_spec("true", workload_id="no-image")
    spec["config"]["image"] = "cnet-test/not-here:1.0"
    resp = cagent.api("POST", "/api/workloads", json=spec, timeout=20)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "image_not_found"
    assert "cnet-test/not-here:1.0 not found locally" in error["message"]
    assert cagent.api("GET", "/api/workloads/no-image").status_code == 404
    assert cagent.resources()["allocated"] == ZERO
    assert labelled(engine, "no-image") == []


def test_delete_removes_the_container(cagent, engine):
    import docker

    wl = cagent.submit(container_spec("sleep 300"))
    assert cagent.api("DELETE", f"/api/workloads/{wl['id']}").status_code == 200
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(wl["container_id"])
    assert cagent.api("GET", f"/api/workloads/{wl['id']}").status_code == 404
    assert cagent.resources()["allocated"] == ZERO


def test_readopt_after_the_agent_is_killed(cagent, engine, tmp_path):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    keeps = cagent.submit(container_spec("sleep 300", name="keeps"))
    exits = cagent.submit(container_spec(
        ["sh", "-c", "while [ ! -f /ctl/go ]; do sleep 0.1; done; exit 5"], name="exits",
        volumes=[f"{ctl}:/ctl"]))
    vanishes = cagent.submit(container_spec("sleep 300", name="vanishes"))
    unrecorded = cagent.submit(container_spec("sleep 300", name="unrecorded"))
    assert cagent.resources()["allocated"]["memory"] == 4 * (64 << 20)

    cagent.kill()
    # As if the agent had died between starting the container and recording its id.
    with sqlite3.connect(cagent.state_dir / "cnet.db") as db:
        db.execute("UPDATE workloads SET status = 'pending', runtime = '{}' WHERE id = ?",
                   (unrecorded["id"],))
    (ctl / "go").write_text("")
    wait_for(lambda: engine.containers.get(exits["container_id"]).status == "exited",
             message="the 'exits' container to exit while the agent is down")
    engine.containers.get(vanishes["container_id"]).remove(force=True)
    cagent.start()

    ended = cagent.wait_status(exits["id"], "failed")
    assert ended["exit_code"] == 5
    gone = cagent.wait_status(vanishes["id"], "failed")
    assert "no longer exists" in gone["message"]
    still = cagent.workload(keeps["id"])
    assert still["status"] == "running" and still["container_id"] == keeps["container_id"]
    found = wait_for(lambda: (w := cagent.workload(unrecorded["id"])).get("container_id") and w,
                     message="the unrecorded container to be found by its label")
    assert found["status"] == "running" and found["container_id"] == unrecorded["container_id"]
    assert cagent.resources()["allocated"]["memory"] == 2 * (64 << 20)

    # Re-adopted means watched again: a stop is seen through to the end.
    for item in (keeps, unrecorded):
        assert cagent.api("POST", f"/api/workloads/{item['id']}/stop").json()["status"] == "stopped"
        assert engine.containers.get(item["container_id"]).status == "exited"
    assert cagent.resources()["allocated"] == ZERO


# -- without an engine -------------------------------------------------------------------


@pytest.mark.parametrize("socket_file", ["absent", "stale"])
def test_engine_down_is_a_clear_503_and_the_agent_keeps_serving(make_agent, tmp_path, socket_file):
    path = tmp_path / "no-engine.sock"
    if socket_file == "stale":   # an engine that died: its socket file stays, nothing listens
        with socket.socket(socket.AF_UNIX) as gone_engine:
            gone_engine.bind(str(path))
    dead = f"unix://{path}"
    agent = make_agent("no-engine", config={"container": {"engine_url": dead}})

    state = wait_for(lambda: container_health(agent)["status"] == "down" and container_health(agent),
                     message="the engine to show as down in /api/health")
    assert state["engine"] == dead and "not reachable" in state["error"]

    resp = agent.api("POST", "/api/workloads", json=container_spec("true", workload_id="no-engine-wl"))
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "engine_unavailable" and dead in error["message"]
    assert agent.api("GET", "/api/workloads/no-engine-wl").status_code == 404
    assert agent.resources()["allocated"] == ZERO

    wl = agent.submit(process_spec(args=["30"]))
    assert wl["status"] == "running"
    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").json()["status"] == "stopped"
    assert agent.resources()["allocated"] == ZERO


BAD_CONFIGS = [
    ({}, "config.image: required"),
    ({"image": IMAGE, "ports": {"80/tcp": 70000}}, "1..65535"),
    ({"image": IMAGE, "ports": {"80/icmp": 8080}}, "protocol"),
    ({"image": IMAGE, "ports": {"80": 8080, "81": 8080}}, "used twice"),
    ({"image": IMAGE, "volumes": ["relative:/data"]}, "absolute"),
    ({"image": IMAGE, "volumes": ["/no/such/dir/for/cnet:/data"]}, "does not exist"),
    ({"image": IMAGE, "command": "sh -c 'unclosed"}, "config.command"),
    ({"image": IMAGE, "working_dir": "relative"}, "config.working_dir"),
    ({"image": IMAGE, "privileged": True}, "unknown field"),
]


def test_bad_config_is_rejected_before_the_engine(make_agent, tmp_path):
    agent = make_agent("bad-config", config={"container": {"engine_url": f"unix://{tmp_path}/x.sock"}})
    for config, fragment in BAD_CONFIGS:
        resp = agent.api("POST", "/api/workloads", json={"name": "bad", "type": "container",
                                                          "config": config})
        assert resp.status_code == 400, (config, resp.text)
        assert fragment in resp.json()["error"]["message"], (config, resp.text)
    assert agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert agent.resources()["allocated"] == ZERO


def test_config_and_exit_helpers():
    assert _ports({"ports": {"8080/tcp": 18080, 80: "8081", "53/udp": None}}) == {
        "8080/tcp": 18080, "80/tcp": 8081, "53/udp": None}
    assert _ports({"ports": ["18080:8080", "53/udp"]}) == {"8080/tcp": 18080, "53/udp": None}
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(137) == "killed by SIGKILL (exit code 137)"
    assert describe_exit(137, {"OOMKilled": True}).startswith("killed: out of memory")
    # What runc says when it cannot apply a memory limit on a cgroup v1 host.
    assert _about_limits("runc create failed: unable to start container process: error setting "
                         "cgroup config for procHooks process: unable to set memory limit")
    assert not _about_limits("cannot listen on the TCP port: address already in use")
