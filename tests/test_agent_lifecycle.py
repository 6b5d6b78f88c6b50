"""Agent start-up checks, restart recovery after kill -9, and allocation under concurrency."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import psutil
import pytest
import requests
import yaml

from .harness import REPO, free_port, gone, process_spec, wait_for


def _start_with(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config) if isinstance(config, dict) else config)
    return subprocess.run([sys.executable, "-m", "cnet", "agent", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=str(REPO))


def _base(tmp_path, **agent) -> dict:
    return {"agent": {"node_id": "n1", "address": "127.0.0.1", "port": 1,
                      "state_dir": str(tmp_path / "s"), **agent}}


BAD_CONFIGS = [
    ("cpu negative", {"resources": {"cpu": -1}}, "resources.cpu: must not be negative"),
    ("cpu wrong type", {"resources": {"cpu": "lots"}}, "resources.cpu: must be a number"),
    ("memory bad size", {"resources": {"memory": "16 parsecs"}}, "resources.memory"),
    ("port wrong type", {"agent": {"port": "eighty"}}, "agent.port: must be a whole number"),
    ("port out of range", {"agent": {"port": 70000}}, "agent.port: must be between"),
    ("node id characters", {"agent": {"node_id": "nan jing/1"}}, "agent.node_id"),
    ("parent not host:port", {"parent": {"enabled": True, "address": "nowhere"}}, "parent.address"),
    ("log level", {"logging": {"level": "loud"}}, "logging.level"),
    ("peers not list", {"peers": {"enabled": True, "addresses": "a:1"}}, "peers.addresses"),
]


@pytest.mark.parametrize("label,override,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_fails_with_one_clear_line(tmp_path, label, override, expected):
    config = _base(tmp_path)
    for key, value in override.items():
        config[key] = {**config.get(key, {}), **value}
    result = _start_with(tmp_path, config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_not_yaml_and_missing_file(tmp_path):
    result = _start_with(tmp_path, "agent: [unclosed")
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    missing = subprocess.run([sys.executable, "-m", "cnet", "agent", "--config",
                              str(tmp_path / "nope.yaml")], capture_output=True, text=True,
                             timeout=30, cwd=str(REPO))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_port_in_use(agent, tmp_path):
    config = _base(tmp_path, port=agent.port)
    result = _start_with(tmp_path, config)
    assert result.returncode == 2
    assert f"agent.port: 127.0.0.1:{agent.port} is already in use" in result.stderr


def test_listening_beyond_loopback_without_a_token_warns_loudly(make_agent):
    exposed = make_agent("exposed", config={"agent": {"address": "0.0.0.0"}})
    warning = wait_for(lambda: [line for line in exposed.output.read_text().splitlines()
                                if "SECURITY" in line], timeout=10, message="the security warning")
    assert "WARNING" in warning[0] and "without a token" in warning[0]
    guarded = make_agent("guarded", config={"agent": {"address": "0.0.0.0"}, "api": {"token": "t"}})
    quiet = make_agent("quiet")   # loopback, no token: fine
    for agent in (guarded, quiet):
        wait_for(lambda a=agent: "listening on" in a.output.read_text(), timeout=10,
                 message=f"{agent.node_id} to log that it listens")
        assert "SECURITY" not in agent.output.read_text()


def test_two_agents_never_share_state(agent, tmp_path):
    config = _base(tmp_path, port=free_port())
    config["storage"] = {"sqlite": {"db_path": str(agent.state_dir / "cnet.db")}}
    result = _start_with(tmp_path, config)
    assert result.returncode == 2
    assert "storage.sqlite.db_path" in result.stderr and "in use by another agent" in result.stderr


def test_seed_config_format_is_accepted(tmp_path):
    """The seed's config file, unchanged but for ports and paths."""
    from .harness import AgentProcess
    seed = f"""
agent:
  node_id: "nanjing"
  address: "127.0.0.1"
  port: PORT
resources:
  cpu: 8.0
  gpu: 1
  memory: 17179869184
  storage: 214748364800
parent:
  enabled: false
  address: "localhost:8080"
peers:
  enabled: false
  addresses:
    - "localhost:8082"
    - "localhost:8083"
logging:
  level: "info"
  format: "json"
storage:
  sqlite:
    db_path: "{tmp_path}/cnet_storage.db"
    data_path: "{tmp_path}/cnet_data"
"""
    agent = AgentProcess(tmp_path, "nanjing")
    agent.config_path.write_text(seed.replace("PORT", str(agent.port)))
    agent.start()
    try:
        res = agent.resources()
        assert res["node_id"] == "nanjing"
        assert res["capacity"] == {"cpu": 8.0, "memory": 17179869184, "gpu": 1,
                                   "storage": 214748364800}
        assert (tmp_path / "cnet_storage.db").exists() and (tmp_path / "cnet_data").is_dir()
    finally:
        agent.terminate()


def test_missing_resources_are_detected(make_agent):
    agent = make_agent(config={"resources": {"cpu": None, "memory": None, "storage": None,
                                             "gpu": None}})
    cap = agent.resources()["capacity"]
    assert cap["cpu"] == psutil.cpu_count()
    assert cap["memory"] == psutil.virtual_memory().total
    assert cap["storage"] > 0 and cap["gpu"] == 0


def test_restart_after_kill_9_readopts_and_fails_the_dead(make_agent):
    agent = make_agent()
    live = agent.submit(process_spec(name="live", cpu=2))
    doomed = agent.submit(process_spec(name="doomed", cpu=1))
    finished = agent.submit(process_spec(name="done", command="true", args=[]))
    agent.wait_status(finished["id"], "completed")
    agent.kill()
    # While the agent is down, one workload dies.
    psutil.Process(doomed["process_pid"]).kill()
    wait_for(lambda: gone(doomed["process_pid"]), message="doomed to die")
    agent.start()
    listing = {w["id"]: w for w in agent.api("GET", "/api/workloads").json()["workloads"]}
    assert set(listing) == {live["id"], doomed["id"], finished["id"]}
    assert listing[live["id"]]["status"] == "running"
    assert listing[live["id"]]["process_pid"] == live["process_pid"]
    assert listing[doomed["id"]]["status"] == "failed"
    assert "ended while the agent was down" in listing[doomed["id"]]["message"]
    assert listing[finished["id"]]["status"] == "completed"
    # Allocations are rebuilt from the live workloads only, never double-counted.
    assert agent.resources()["allocated"]["cpu"] == 2
    # The re-adopted process can be stopped, and its exit is noticed.
    stopped = agent.api("POST", f"/api/workloads/{live['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert gone(live["process_pid"])
    assert agent.resources()["allocated"]["cpu"] == 0


def test_readopted_process_exit_is_noticed(make_agent, tmp_path):
    agent = make_agent()
    flag = tmp_path / "go"
    wl = agent.submit(process_spec(command="sh", args=["-c", f"while [ ! -e {flag} ]; do sleep 0.05; done"]))
    agent.kill()
    agent.start()
    assert agent.workload(wl["id"])["status"] == "running"
    flag.touch()
    done = agent.wait_status(wl["id"], "completed")
    assert done["exit_code"] is None and "exit code unknown" in done["message"]
    assert agent.resources()["allocated"]["cpu"] == 0


def test_reused_pid_is_not_mistaken(make_agent):
    """A recorded pid whose start time differs belongs to another process."""
    agent = make_agent()
    wl = agent.submit(process_spec())
    agent.kill()
    import json
    import sqlite3
    db = agent.state_dir / "cnet.db"
    with sqlite3.connect(db) as conn:
        (runtime,) = conn.execute("SELECT runtime FROM workloads WHERE id=?", (wl["id"],)).fetchone()
        info = json.loads(runtime)
        real_pid = info["pid"]
        info["pid"] = 1  # init is alive, but it is not our process
        conn.execute("UPDATE workloads SET runtime=? WHERE id=?", (json.dumps(info), wl["id"]))
    try:
        agent.start()
        assert agent.workload(wl["id"])["status"] == "failed"
        assert psutil.pid_exists(1)
    finally:
        psutil.Process(real_pid).kill()


def test_concurrent_submits_never_over_allocate(make_agent):
    """50 concurrent submits against room for 10: exactly 10 run, 40 get a clean 503."""
    agent = make_agent(config={"resources": {"cpu": 10.0}})

    def submit(i: int) -> requests.Response:
        return requests.post(agent.url + "/api/workloads", json=process_spec(name=f"w{i}", cpu=1),
                             timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(submit, range(50)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 10 and codes.count(503) == 40, codes
    for r in results:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "insufficient_resources"
    res = agent.resources()
    assert res["allocated"]["cpu"] == 10 and res["available"]["cpu"] == 0
    running = agent.api("GET", "/api/workloads?status=running").json()["count"]
    assert running == 10
