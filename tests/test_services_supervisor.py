"""The service supervisor with a fake service program: start, health, restarts, stop, adoption."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import requests

from .harness import deep_merge, free_port_range, wait_for
from .service_helpers import FAST_SERVICES, fake_install, group_pids, port_is_free, wait_gone, wait_restarted

CPU, MEMORY = 1.0, 536870912


def _port_range() -> list[int]:
    return list(free_port_range(41))


@pytest.fixture
def service_agent(make_agent, tmp_path):
    """An agent whose service programs are the fake; returns (agent, flag dir)."""
    env, flags = fake_install(tmp_path)
    config = deep_merge(FAST_SERVICES, {"services": {"port_range": _port_range()}})
    return make_agent(config=config, env=env), flags


def _spec(**config) -> dict:
    return {"name": "svc", "type": "opencv", "config": {"cascade_type": "face", **config},
            "requirements": {"cpu": CPU, "memory": MEMORY}}


def _allocated(agent) -> tuple[float, int]:
    res = agent.resources()["allocated"]
    return res["cpu"], res["memory"]


def _health(endpoint: str) -> int:
    return requests.get(endpoint + "/health", timeout=5).status_code


def test_start_runs_healthy_with_endpoint_then_stop_leaves_nothing(service_agent):
    agent, _flags = service_agent
    wl = agent.submit(_spec())
    assert wl["status"] == "running"
    pid, port = wl["process_pid"], wl["port"]
    low, high = agent.config["services"]["port_range"]
    assert low <= port <= high
    assert wl["endpoint"] == f"http://127.0.0.1:{port}"
    assert wl["log_path"].endswith(f"opencv_service_{port}.log")
    assert _health(wl["endpoint"]) == 200
    assert _allocated(agent) == (CPU, MEMORY)
    members = wait_for(lambda: len(g := group_pids(pid)) >= 2 and g,
                       message="the shim and its worker")
    logs = agent.api("GET", f"/api/workloads/{wl['id']}/logs").json()["logs"]
    assert '"event": "started"' in logs

    resp = agent.api("POST", f"/api/workloads/{wl['id']}/stop")
    assert resp.status_code == 200, resp.text
    assert agent.wait_status(wl["id"], "stopped")["status"] == "stopped"
    wait_gone(members)
    assert not group_pids(pid)
    assert port_is_free(port)
    assert _allocated(agent) == (0.0, 0)


def test_two_services_get_different_ports(service_agent):
    agent, _flags = service_agent
    one, two = agent.submit(_spec()), agent.submit(_spec())
    assert one["port"] != two["port"]
    assert _health(one["endpoint"]) == _health(two["endpoint"]) == 200


def test_crashes_are_restarted_then_the_fourth_fails_and_releases(service_agent):
    agent, _flags = service_agent
    wl = agent.submit(_spec())
    port = wl["port"]
    for n in (1, 2, 3):
        old = wl["process_pid"]
        os.kill(old, signal.SIGKILL)
        wl = wait_restarted(agent, wl["id"], n, old)
        assert wl["port"] == port
        assert "crashed" in wl["message"]
        assert _health(wl["endpoint"]) == 200
    last = wl["process_pid"]
    os.kill(last, signal.SIGKILL)
    failed = agent.wait_status(wl["id"], "failed", timeout=30)
    assert failed["restart_count"] == 3
    assert "restarted 3 times, giving up" in failed["message"]
    assert _allocated(agent) == (0.0, 0)
    wait_for(lambda: not group_pids(last), message="the crashed service's group to end")
    assert port_is_free(port)


def test_unhealthy_service_is_restarted(service_agent):
    agent, flags = service_agent
    wl = agent.submit(_spec())
    old = wl["process_pid"]
    (flags / f"unhealthy-{old}").touch()
    wl = wait_restarted(agent, wl["id"], 1, old)
    assert "unhealthy" in wl["message"] and "503" in wl["message"]
    assert _health(wl["endpoint"]) == 200
    wait_for(lambda: not group_pids(old), message="the unhealthy service's group to end")


def test_one_failed_health_check_is_not_a_restart(service_agent):
    agent, flags = service_agent
    wl = agent.submit(_spec())
    pid = wl["process_pid"]
    checks = flags / f"checks-{pid}"
    blip = flags / f"blip-{pid}"
    blip.touch()
    wait_for(lambda: not blip.exists(), message="the 503 blip to be served")
    seen = checks.stat().st_size
    wait_for(lambda: checks.stat().st_size >= seen + 4, message="four more health checks")
    again = agent.workload(wl["id"])
    assert again["restart_count"] == 0 and again["process_pid"] == pid


def test_failed_restarts_end_in_failed(service_agent):
    agent, flags = service_agent
    wl = agent.submit(_spec())
    (flags / "fail-start").touch()
    os.kill(wl["process_pid"], signal.SIGKILL)
    failed = agent.wait_status(wl["id"], "failed", timeout=30)
    assert failed["restart_count"] == 3
    assert "giving up" in failed["message"]
    assert _allocated(agent) == (0.0, 0)
    assert port_is_free(wl["port"])


def test_start_failure_is_a_clear_error_with_the_log_and_reserves_nothing(service_agent):
    agent, flags = service_agent
    (flags / "fail-start").touch()
    resp = agent.api("POST", "/api/workloads", json=_spec())
    assert resp.status_code == 500, resp.text
    error = resp.json()["error"]
    assert error["code"] == "service_start_failed"
    assert "exited with code 3 while starting" in error["message"]
    assert "told to fail at start" in error["message"]
    assert agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert _allocated(agent) == (0.0, 0)


def test_taken_explicit_port_is_a_clear_error_and_reserves_nothing(service_agent):
    agent, _flags = service_agent
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        resp = agent.api("POST", "/api/workloads", json=_spec(service_port=port))
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "port_in_use"
        assert str(port) in resp.json()["error"]["message"]
    assert agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert _allocated(agent) == (0.0, 0)

    # A port one of our own services holds: the same answer, nothing kept.
    first = agent.submit(_spec(service_port=port))
    assert first["endpoint"] == f"http://127.0.0.1:{port}"
    resp = agent.api("POST", "/api/workloads", json=_spec(service_port=port))
    assert resp.status_code == 409, resp.text
    assert [w["id"] for w in agent.api("GET", "/api/workloads").json()["workloads"]] == [first["id"]]
    assert _allocated(agent) == (CPU, MEMORY)


@pytest.mark.parametrize("config, fragment", [
    ({"service_port": 0}, "service_port"),
    ({"service_port": "9000"}, "service_port"),
    ({"service_host": "203.0.113.77"}, "service_host"),
    ({"cascade_type": "nose"}, "cascade_type"),
    ({"workers": 0}, "workers"),
    ({"colour": "red"}, "colour"),
])
def test_bad_service_config_is_a_400(service_agent, config, fragment):
    agent, _flags = service_agent
    resp = agent.api("POST", "/api/workloads", json=_spec(**config))
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]["message"]
    assert _allocated(agent) == (0.0, 0)


def test_agent_kill_9_then_restart_readopts_and_keeps_supervising(service_agent):
    agent, _flags = service_agent
    wl = agent.submit(_spec())
    pid, port = wl["process_pid"], wl["port"]
    agent.kill()
    assert _health(wl["endpoint"]) == 200  # the service outlives the agent
    agent.start()
    again = agent.workload(wl["id"])
    assert again["status"] == "running" and again["process_pid"] == pid
    assert _allocated(agent) == (CPU, MEMORY)

    os.kill(pid, signal.SIGKILL)  # supervision resumed: the crash is noticed and repaired
    again = wait_restarted(agent, wl["id"], 1, pid)
    members = group_pids(again["process_pid"])
    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    agent.wait_status(wl["id"], "stopped")
    wait_gone(members)
    assert port_is_free(port)
    assert _allocated(agent) == (0.0, 0)


def test_service_that_died_while_the_agent_was_down_fails(service_agent):
    agent, _flags = service_agent
    wl = agent.submit(_spec())
    members = group_pids(wl["process_pid"])
    agent.kill()
    for pid in members:
        os.kill(pid, signal.SIGKILL)
    wait_gone(members)
    agent.start()
    failed = agent.wait_status(wl["id"], "failed")
    assert "ended while the agent was down" in failed["message"]
    assert _allocated(agent) == (0.0, 0)
