"""mlmodel and opencv workloads with the real inference services: the seed's curl examples."""

from __future__ import annotations

import os
import signal

import pytest
import requests

from .harness import MODELS_DIR, deep_merge, free_port, free_port_range
from .service_helpers import FAST_SERVICES, group_pids, port_is_free, wait_gone, wait_restarted

YOLO_MODEL = MODELS_DIR / "yolo11n-320-int8.onnx"
GIB = 1 << 30


@pytest.fixture
def model() -> str:
    if not YOLO_MODEL.is_file():
        pytest.skip(f"shared models not found ({YOLO_MODEL}; set CNET_MODELS_DIR)")
    return str(YOLO_MODEL)


@pytest.fixture
def ml_agent(make_agent):
    return make_agent(config=deep_merge(FAST_SERVICES, {"services": {"port_range": list(free_port_range(41))}}))


def _seed_yolo(model_path: str, port: int) -> dict:
    """The seed's mlmodel curl body (model path and port aside)."""
    return {"name": "yolo-detection-service", "type": "mlmodel",
            "config": {"model_type": "yolo", "model_path": model_path, "service_port": port},
            "requirements": {"cpu": 2.0, "memory": 2147483648, "gpu": 0}}


def _available(agent) -> tuple[float, float]:
    res = agent.resources()["available"]
    return res["cpu"], res["memory"] / GIB


def _predict(endpoint: str, image_b64: str) -> dict:
    resp = requests.post(endpoint + "/predict", json={"image": image_b64, "confidence": 0.5},
                         timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_seed_mlmodel_example_serves_predictions_and_releases(ml_agent, model, astronaut_b64):
    agent = ml_agent
    assert _available(agent) == (8.0, 16.0)
    port = free_port()
    wl = agent.submit(_seed_yolo(model, port))
    assert wl["status"] == "running"
    assert wl["endpoint"] == f"http://127.0.0.1:{port}"
    assert isinstance(wl["process_pid"], int)
    assert _available(agent) == (6.0, 14.0)

    health = requests.get(wl["endpoint"] + "/health", timeout=10).json()
    assert health["status"] == "healthy"
    info = requests.get(wl["endpoint"] + "/info", timeout=10).json()
    assert info["model_type"] == "yolo" and info["loaded"] is True
    result = _predict(wl["endpoint"], astronaut_b64)
    assert result["count"] == len(result["detections"]) >= 1
    assert "person" in {d["class"] for d in result["detections"]}
    logs = agent.api("GET", f"/api/workloads/{wl['id']}/logs").json()["logs"]
    assert "cnet-inference-yolo" in logs
    assert wl["log_path"].endswith(f"yolo_service_{port}.log")

    members = group_pids(wl["process_pid"])
    assert len(members) >= 2  # the shim and its worker
    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    agent.wait_status(wl["id"], "stopped")
    wait_gone(members)
    assert port_is_free(port)
    assert _available(agent) == (8.0, 16.0)


def test_kill_9_of_the_shim_restarts_it(ml_agent, model, astronaut_b64):
    agent = ml_agent
    wl = agent.submit(_seed_yolo(model, free_port()))
    old = wl["process_pid"]
    os.kill(old, signal.SIGKILL)
    wl = wait_restarted(agent, wl["id"], 1, old, timeout=60)
    assert wl["restart_count"] == 1
    assert "person" in {d["class"] for d in _predict(wl["endpoint"], astronaut_b64)["detections"]}


@pytest.mark.parametrize("model_type", ["tensorflow", "pytorch"])
def test_tensorflow_and_pytorch_are_not_supported_yet(ml_agent, model, model_type):
    spec = _seed_yolo(model, free_port())
    spec["config"]["model_type"] = model_type
    resp = ml_agent.api("POST", "/api/workloads", json=spec)
    assert resp.status_code == 400, resp.text
    assert f"model_type {model_type} is not supported yet" in resp.json()["error"]["message"]


# The message a bad speed option gets: it names the field and what it may hold.
SPEED_OPTION_MESSAGES = {"workers": "config.workers: must be a whole number, 1..64",
                         "threads": "config.threads: must be a whole number, 1..256",
                         "spin": "config.spin: must be true or false"}


@pytest.mark.parametrize("config, code", [
    ({"model_type": "caffe"}, "unknown_model_type"),
    ({"model_type": None}, "invalid_field"),
    ({"model_path": "/nonexistent/yolo11n.onnx"}, "model_not_found"),
    ({"model_path": "/tmp"}, "model_not_found"),
    ({"model_path": None}, "invalid_field"),
    ({"workers": -1}, "invalid_field"),
    ({"workers": 0}, "invalid_field"),
    ({"workers": "2"}, "invalid_field"),
    ({"workers": 100}, "invalid_field"),
    ({"threads": 0}, "invalid_field"),
    ({"threads": 1.5}, "invalid_field"),
    ({"threads": True}, "invalid_field"),
    ({"spin": "yes"}, "invalid_field"),
    ({"spin": 1}, "invalid_field"),
    ({"intra_op_threads": 2}, "invalid_field"),
])
def test_bad_mlmodel_config_is_a_400_and_reserves_nothing(ml_agent, model, config, code):
    spec = _seed_yolo(model, free_port())
    spec["config"].update(config)
    spec["config"] = {k: v for k, v in spec["config"].items() if v is not None}
    resp = ml_agent.api("POST", "/api/workloads", json=spec)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    field = next(iter(config))
    if field in SPEED_OPTION_MESSAGES:
        assert resp.json()["error"]["message"] == SPEED_OPTION_MESSAGES[field]
    assert ml_agent.api("GET", "/api/workloads").json()["workloads"] == []
    assert _available(ml_agent) == (8.0, 16.0)


def test_speed_options_reach_the_service(ml_agent, model, astronaut_b64):
    spec = _seed_yolo(model, free_port())
    spec["config"].update({"workers": 2, "threads": 1, "spin": True})
    wl = ml_agent.submit(spec)
    assert wl["status"] == "running"
    assert {k: wl["config"][k] for k in ("workers", "threads", "spin")} == \
        {"workers": 2, "threads": 1, "spin": True}
    info = requests.get(wl["endpoint"] + "/info", timeout=10).json()
    assert (info["workers"], info["threads_per_worker"], info["spin"]) == (2, 1, True)
    assert "person" in {d["class"] for d in _predict(wl["endpoint"], astronaut_b64)["detections"]}
    assert ml_agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    ml_agent.wait_status(wl["id"], "stopped")


def test_seed_opencv_example_finds_the_face(ml_agent, astronaut_b64):
    agent = ml_agent
    port = free_port()
    wl = agent.submit({"name": "opencv-face-detection", "type": "opencv",
                       "config": {"cascade_type": "face", "service_port": port},
                       "requirements": {"cpu": 1.0, "memory": 536870912}})
    assert wl["status"] == "running" and wl["endpoint"] == f"http://127.0.0.1:{port}"
    assert wl["log_path"].endswith(f"opencv_service_{port}.log")
    result = _predict(wl["endpoint"], astronaut_b64)
    assert result["count"] == 1
    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    agent.wait_status(wl["id"], "stopped")
    assert port_is_free(port)
