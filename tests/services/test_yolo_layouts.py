"""cnet-inference-yolo on tiny ONNX graphs built here, whose output is a known constant tensor.

Each graph takes ``images`` [1, 3, S, S] and returns a fixed tensor (a Constant plus
0 * ReduceMean(images), so that the input is used) in the YOLOv5 layout [1, N, 5+nc]
(cx, cy, w, h, objectness, class scores) or the v8 layout [1, 4+nc, N] (cx, cy, w, h, class
scores). The expected detections are worked out below from the tensor alone: score = obj * cls,
strictly above the confidence, per-class NMS, and boxes mapped back through the Ultralytics
letterbox (round(side * r), centred pad) per axis, then clipped. No shared model is needed.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

YOLO = "services.inference.yolo_service"
SIZE = 64                       # model input side
WIDTH, HEIGHT = 200, 120        # the posted image: letterboxed to 64 x 38, pad 13 at the top
CONFIDENCE = 0.25
NAMES = {0: "widget", 1: "gadget"}

# One row per candidate: (cx, cy, w, h) in model pixels, objectness, class scores.
V5_ROWS = [
    ((20, 30, 10, 8), 0.9, (0.8, 0.1)),     # widget 0.72
    ((40, 35, 16, 12), 0.6, (0.2, 0.9)),    # gadget 0.54
    ((10, 20, 6, 6), 0.2, (0.99, 0.0)),     # objectness below the confidence: dropped
    ((50, 20, 6, 6), 0.5, (0.4, 0.1)),      # score 0.2: dropped
    ((21, 30, 10, 8), 0.8, (0.8, 0.0)),     # widget 0.64, IoU 0.82 with the first: suppressed
    ((21, 30, 10, 8), 0.7, (0.1, 0.5)),     # gadget 0.35 on the same spot: kept (other class)
    ((60, 50, 20, 10), 1.0, (0.3, 0.0)),    # widget 0.3, runs off the image: clipped
    ((0, 0, 0, 0), 0.0, (0.0, 0.0)),
    ((0, 0, 0, 0), 0.0, (0.0, 0.0)),
    ((0, 0, 0, 0), 0.0, (0.0, 0.0)),
]

# v8 rows: (cx, cy, w, h), class scores (no objectness); three classes, no names metadata.
V8_ROWS = [
    ((32, 32, 20, 20), (0.1, 0.2, 0.95)),   # class_2 0.95
    ((10, 25, 8, 8), (0.6, 0.0, 0.0)),      # class_0 0.6
    ((33, 32, 20, 20), (0.0, 0.0, 0.9)),    # class_2, IoU 0.9 with the first: suppressed
    ((50, 40, 10, 10), (0.0, 0.25, 0.0)),   # exactly the confidence: dropped (strict test)
    ((5, 45, 12, 12), (0.0, 0.4, 0.0)),     # class_1 0.4, left edge clipped to 0
    ((0, 0, 0, 0), (0.0, 0.0, 0.0)),
    ((0, 0, 0, 0), (0.0, 0.0, 0.0)),
    ((0, 0, 0, 0), (0.0, 0.0, 0.0)),
]


# -- the models --------------------------------------------------------------------------------

def v5_tensor(rows) -> np.ndarray:
    return np.array([[[*box, obj, *cls] for box, obj, cls in rows]], dtype=np.float32)


def v8_tensor(rows) -> np.ndarray:
    return np.array([[[*box, *cls] for box, cls in rows]], dtype=np.float32).transpose(0, 2, 1).copy()


def constant_model(path: Path, output: np.ndarray, metadata: dict[str, str]) -> Path:
    """An ONNX model ``images`` [1, 3, SIZE, SIZE] -> ``output0`` = ``output`` for any input."""
    nodes = [
        helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(output, "table")),
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Constant", [], ["zero"],
                         value=numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="cnet-tests")
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# -- the expected detections, from the tensor alone ----------------------------------------------

def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def expected_detections(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[int, float, list]]:
    """(class id, score, box in original pixels) from xywh boxes and per-class scores."""
    candidates = []
    for (cx, cy, w, h), row in zip(boxes.astype(np.float64), scores):
        cls = int(np.argmax(row))
        if row[cls] > np.float32(CONFIDENCE):
            candidates.append((cls, float(row[cls]), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    candidates.sort(key=lambda c: -c[1])
    kept: list[tuple[int, float, list]] = []
    for cand in candidates:
        if all(k[0] != cand[0] or _iou(k[2], cand[2]) <= 0.45 for k in kept):
            kept.append(cand)
    r = min(SIZE / HEIGHT, SIZE / WIDTH)
    new_w, new_h = round(WIDTH * r), round(HEIGHT * r)
    left, top = round((SIZE - new_w) / 2 - 0.1), round((SIZE - new_h) / 2 - 0.1)
    out = []
    for cls, score, (x1, y1, x2, y2) in kept:
        sx, sy = new_w / WIDTH, new_h / HEIGHT
        box = [min(max((x1 - left) / sx, 0), WIDTH), min(max((y1 - top) / sy, 0), HEIGHT),
               min(max((x2 - left) / sx, 0), WIDTH), min(max((y2 - top) / sy, 0), HEIGHT)]
        out.append((cls, score, box))
    return out


def check_detections(body: dict, expected: list, names: list[str]) -> None:
    got = body["detections"]
    assert body["image"] == {"width": WIDTH, "height": HEIGHT}
    assert [(d["class_id"], d["class"]) for d in got] == [(c, names[c]) for c, _, _ in expected], got
    for det, (_, score, box) in zip(got, expected):
        assert det["confidence"] == round(score, 5)
        assert det["bbox"] == pytest.approx(box, abs=0.011)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    names = "{0: 'widget', 1: 'gadget'}"
    return {
        "v5": constant_model(root / "v5.onnx", v5_tensor(V5_ROWS), {"names": names}),
        "v8": constant_model(root / "v8.onnx", v8_tensor(V8_ROWS), {}),
        "v8-named": constant_model(root / "v8-named.onnx",
                                   v8_tensor([(b, c[:2]) for b, c in V8_ROWS]), {"names": names}),
    }


@pytest.fixture(scope="module")
def image_png() -> bytes:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", image)
    assert ok
    return png.tobytes()


def _predict(service, image: bytes) -> dict:
    response = service.predict(data=image, params={"confidence": CONFIDENCE},
                               headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def _info(service) -> dict:
    return requests.get(f"{service.url}/info", timeout=10).json()


# -- tests -------------------------------------------------------------------------------------

def test_the_graphs_give_the_tensor_for_any_input(models):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(models["v5"]), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    assert np.array_equal(session.run(None, {"images": noise})[0], v5_tensor(V5_ROWS))


def test_v5_layout_is_detected_and_decoded_with_metadata_names(models, image_png, start_module_service):
    service = start_module_service(YOLO, "--model", str(models["v5"]), "--workers", "1",
                                   "--threads", "1")
    info = _info(service)
    assert (info["workers"], info["threads"], info["spin"]) == (1, 1, False)  # spin: off by default
    assert (info["layout"], info["format"]) == ("v5", "yolov5")
    assert info["num_classes"] == 2 and info["class_names"] == ["widget", "gadget"]
    assert info["input_size"] == [SIZE, SIZE]

    table = v5_tensor(V5_ROWS)[0]
    objectness = table[:, 4:5]
    scores = np.where(objectness > np.float32(CONFIDENCE), table[:, 5:] * objectness, 0)
    expected = expected_detections(table[:, :4], scores)
    assert [(c, round(s, 2)) for c, s, _ in expected] == [(0, 0.72), (1, 0.54), (1, 0.35), (0, 0.3)]
    body = _predict(service, image_png)
    check_detections(body, expected, ["widget", "gadget"])
    assert body["detections"][-1]["bbox"][2:] == [WIDTH, HEIGHT]  # the clipped one


def test_v8_layout_without_names_gets_class_n(models, image_png, start_module_service):
    service = start_module_service(YOLO, "--model", str(models["v8"]), "--workers", "1",
                                   "--threads", "1")
    info = _info(service)
    assert (info["layout"], info["format"]) == ("v8", "ultralytics-v8")
    assert info["class_names"] == ["class_0", "class_1", "class_2"]

    table = v8_tensor(V8_ROWS)[0].T
    expected = expected_detections(table[:, :4], table[:, 4:])
    assert [(c, round(s, 2)) for c, s, _ in expected] == [(2, 0.95), (0, 0.6), (1, 0.4)]
    body = _predict(service, image_png)
    check_detections(body, expected, info["class_names"])
    assert body["detections"][-1]["bbox"][0] == 0  # the clipped one


def test_v8_layout_with_metadata_names(models, image_png, start_module_service):
    service = start_module_service(YOLO, "--model", str(models["v8-named"]), "--workers", "1",
                                   "--threads", "1")
    assert _info(service)["class_names"] == ["widget", "gadget"]
    table = v8_tensor([(b, c[:2]) for b, c in V8_ROWS])[0].T
    expected = expected_detections(table[:, :4], table[:, 4:])
    check_detections(_predict(service, image_png), expected, ["widget", "gadget"])


def test_info_reports_the_speed_options(models, start_service):
    service = start_service(YOLO, "--model", str(models["v5"]), "--workers", "2",
                            "--threads", "1", "--spin")
    info = _info(service)
    assert (info["workers"], info["threads_per_worker"], info["threads"]) == (2, 1, 1)
    assert info["spin"] is True
