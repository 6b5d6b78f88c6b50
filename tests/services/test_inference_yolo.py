"""cnet-inference-yolo on the shared models and scikit-image photos, against an independent reference.

The reference below is written from the maths in shared/models/README.md and shares no code with
the service: letterbox (Ultralytics: round(side*r), centred pad 114, RGB/255; YOLOX: int(side*r),
top-left pad 114, BGR 0..255), YOLOX grid decode, strict confidence test, per-class greedy NMS at
IoU 0.45, at most 300 boxes, mapping back per axis (Ultralytics) or by r (YOLOX), clipping.
"""
from __future__ import annotations

import base64
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import requests

from .conftest import REPO, free_port, model_path

YOLO = "services.inference.yolo_service"
MODELS = ["yolo11n-320-int8.onnx", "yolov8n-640-int8.onnx", "yolox-nano-416.onnx"]
EXPECTED_TOP = {"astronaut": "person", "coffee": "cup", "chelsea": "cat"}
CONFIDENCE = 0.25
IOU = 0.45
COCO_CUP, COCO_PERSON = 41, 0


# -- reference -------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[int]:
    kept: list[int] = []
    for cls in sorted(set(classes.tolist())):
        members = sorted(np.flatnonzero(classes == cls).tolist(), key=lambda i: -scores[i])
        chosen: list[int] = []
        for i in members:
            if all(_iou(boxes[i], boxes[j]) <= IOU for j in chosen):
                chosen.append(i)
        kept.extend(chosen)
    return sorted(kept, key=lambda i: -scores[i])[:300]


def reference_detect(model_file: str, bgr: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    tensor = session.get_inputs()[0]
    size_h, size_w = tensor.shape[2], tensor.shape[3]
    h, w = bgr.shape[:2]
    r = min(size_h / h, size_w / w)
    canvas = np.full((size_h, size_w, 3), 114, dtype=np.uint8)
    yolox = session.get_outputs()[0].shape[1] > session.get_outputs()[0].shape[2]
    if yolox:
        new_w, new_h = int(w * r), int(h * r)
        top = left = 0
    else:
        new_w, new_h = round(w * r), round(h * r)
        top, left = round((size_h - new_h) / 2 - 0.1), round((size_w - new_w) / 2 - 0.1)
    resized = bgr if (new_w, new_h) == (w, h) else cv2.resize(bgr, (new_w, new_h),
                                                              interpolation=cv2.INTER_LINEAR)
    canvas[top:top + new_h, left:left + new_w] = resized
    if yolox:
        x = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    else:
        x = (canvas[:, :, ::-1].transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
    out = session.run(None, {tensor.name: x})[0][0]

    if yolox:
        cells = [(gx, gy, s) for s in (8, 16, 32)
                 for gy in range(size_h // s) for gx in range(size_w // s)]
        grid = np.array(cells, dtype=np.float32)
        centre = (out[:, 0:2] + grid[:, 0:2]) * grid[:, 2:3]
        size = np.exp(out[:, 2:4]) * grid[:, 2:3]
        all_scores = out[:, 5:] * out[:, 4:5]
    else:
        rows = out.T
        centre, size, all_scores = rows[:, 0:2], rows[:, 2:4], rows[:, 4:]
    classes = all_scores.argmax(axis=1)
    scores = all_scores.max(axis=1)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float64)
    mask = scores > CONFIDENCE
    boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
    result = []
    for i in _nms_per_class(boxes, scores, classes):
        box = boxes[i].copy()
        if yolox:
            box /= r
        else:
            box[[0, 2]] = (box[[0, 2]] - left) / (new_w / w)
            box[[1, 3]] = (box[[1, 3]] - top) / (new_h / h)
        box[[0, 2]] = box[[0, 2]].clip(0, w)
        box[[1, 3]] = box[[1, 3]].clip(0, h)
        result.append((int(classes[i]), float(scores[i]), box))
    return result


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=MODELS)
def yolo(request, start_module_service):
    path = model_path(request.param)
    service = start_module_service(YOLO, "--model", str(path), "--workers", "1")
    return path, service


# -- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_boxes_match_reference(yolo, photos, photo):
    path, service = yolo
    response = service.predict(data=photos[photo], params={"confidence": CONFIDENCE, "iou": IOU},
                               headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    detections = body["detections"]
    assert body["count"] == len(detections) > 0
    assert detections[0]["class"] == EXPECTED_TOP[photo]

    image = cv2.imdecode(np.frombuffer(photos[photo], np.uint8), cv2.IMREAD_COLOR)
    expected = reference_detect(str(path), image)
    assert len(detections) == len(expected), (detections, expected)
    for got, (cls, score, box) in zip(detections, expected):
        assert got["class_id"] == cls
        assert got["confidence"] == pytest.approx(score, abs=1e-4)
        assert _iou(np.array(got["bbox"]), box) >= 0.99, (got, box)
        x1, y1, x2, y2 = got["bbox"]
        assert 0 <= x1 <= x2 <= image.shape[1] and 0 <= y1 <= y2 <= image.shape[0]


def test_json_base64_and_options(yolo, photos):
    _, service = yolo
    image = base64.b64encode(photos["coffee"]).decode()
    low = service.predict(json={"image": image, "confidence": 0.25}).json()
    high = service.predict(json={"image": image, "confidence": 0.9}).json()
    assert all(d["confidence"] > 0.9 for d in high["detections"])
    assert high["count"] < low["count"]
    one = service.predict(json={"image": image, "confidence": 0.25, "max_det": 1}).json()
    assert one["count"] == 1 and one["detections"][0]["class_id"] == COCO_CUP
    assert {"class", "class_id", "confidence", "bbox"} <= set(low["detections"][0])


def test_info_and_health(yolo):
    path, service = yolo
    info = requests.get(f"{service.url}/info", timeout=10).json()
    assert info["model_type"] == "yolo" and info["loaded"] is True
    assert info["num_classes"] == 80 and info["class_names"][COCO_PERSON] == "person"
    assert info["format"] == ("yolox" if "yolox" in path.name else "ultralytics-v8")
    expected_side = int(path.stem.split("-")[-1] if "yolox" in path.name else path.stem.split("-")[1])
    assert info["input_size"] == [expected_side, expected_side]
    assert (info["workers"], info["spin"]) == (1, False)  # idle ORT threads do not spin by default
    health = service.health()
    assert health["status"] == "healthy" and health["model"] == str(path)


def _run_program(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", YOLO, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_missing_model_is_one_clear_line(tmp_path):
    result = _run_program("--model", str(tmp_path / "nope.onnx"), "--port", str(free_port()))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"cnet-inference-yolo: error: model file not found: {tmp_path / 'nope.onnx'}"]


def test_unloadable_model_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    result = _run_program("--model", str(bad), "--port", str(free_port()))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot load" in errors[0], result.stderr
