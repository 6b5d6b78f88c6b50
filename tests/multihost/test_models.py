"""Models travel to where they run, between machines: a model uploaded at the root (jiangsu)
is named by ``model_url`` on the root's gateway, fetched over the bus by the city that runs it,
served there from its cache, and a second service of it is placed where the copy is, without
fetching again; a model stored nowhere is refused at the root before anything is placed."""

from __future__ import annotations

import base64
import hashlib
import uuid

import cv2
import numpy as np
import pytest

from ..harness import MODELS_DIR

YOLO_MODEL = MODELS_DIR / "yolo11n-320-int8.onnx"


def _fetches(machine, sha256: str) -> int:
    text = machine.log_path.read_text(errors="replace")
    return sum(1 for line in text.splitlines()
               if "model cache:" in line and f"sha256 {sha256[:12]}" in line and "fetched" in line)


def test_a_model_uploaded_at_the_root_is_fetched_to_a_city_and_a_second_service_goes_there(
        cluster):
    if not YOLO_MODEL.is_file():
        pytest.skip(f"shared models not found ({YOLO_MODEL}; set CNET_MODELS_DIR)")
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    sha256 = hashlib.sha256(YOLO_MODEL.read_bytes()).hexdigest()
    tag = uuid.uuid4().hex[:8]
    stored = root.api("POST", "/api/workloads", form={"type": "data", "name": f"yolo-{tag}"},
                      files={"file": str(YOLO_MODEL)}, timeout=60)
    assert stored.status_code == 201, stored.text
    data_key = stored.json()["data_key"]
    bucket = f"models-{tag}"
    gateway = root.submit({"name": "models", "type": "datagateway", "config": {"bucket": bucket},
                           "requirements": {"cpu": 0.1}, "placement": {"node": "jiangsu"}})
    assert gateway["status"] == "running", gateway
    url = f"s3://{bucket}/{data_key}/{YOLO_MODEL.name}"
    before = _fetches(nanjing, sha256)

    first = root.submit({"name": "yolo-by-url", "type": "mlmodel",
                         "config": {"model_type": "yolo", "model_url": url, "threads": 1},
                         "requirements": {"cpu": 1.0, "memory": 536870912},
                         "placement": {"node": "nanjing"}})
    first = root.wait_status(first["id"], "running", timeout=60)
    cached = nanjing.state_dir / "models" / sha256
    assert (first["node_id"], first["model_sha256"], first["model_file"]) == (
        "nanjing", sha256, str(cached))
    assert cached.read_bytes() == YOLO_MODEL.read_bytes()
    assert _fetches(nanjing, sha256) == before + 1
    health = cluster.client.http("GET", first["endpoint"] + "/health").json()
    assert health["model"] == str(cached)
    ok, jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 127, np.uint8))
    answer = cluster.client.http("POST", first["endpoint"] + "/predict", timeout=30,
                                 json={"image": base64.b64encode(jpeg.tobytes()).decode()})
    assert answer.status_code == 200 and answer.json()["count"] == 0, answer.text

    # The same model named as data, placed by the scheduler: jiangsu (which stores it) has no
    # room for 2 cores, and of the cities nanjing has the copy; it starts there without a fetch.
    second = root.submit({"name": "yolo-by-key", "type": "mlmodel",
                          "config": {"model_type": "yolo", "threads": 1,
                                     "model": {"data_key": data_key, "path": YOLO_MODEL.name}},
                          "requirements": {"cpu": 2.0, "memory": 536870912},
                          "placement": {"strategy": "least_loaded"}})
    second = root.wait_status(second["id"], "running", timeout=60)
    assert second["node_id"] == "nanjing" and second["model_sha256"] == sha256, second
    assert _fetches(nanjing, sha256) == before + 1

    missing = root.api("POST", "/api/workloads", json={
        "name": "nowhere", "type": "mlmodel",
        "config": {"model_type": "yolo", "model_url": f"s3://{bucket}/{data_key}/nope.onnx"}})
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "model_not_found"
    listed = {w["id"] for w in root.api("GET", "/api/workloads").json()["workloads"]}
    assert listed == {stored.json()["id"], gateway["id"], first["id"], second["id"]}
