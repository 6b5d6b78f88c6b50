"""YOLO object detector on ONNX Runtime: Ultralytics v8/v11 and v5 layouts and the YOLOX raw head.

The layout is read from the model (output shape, anchor count, metadata) unless overridden:

- ``v8``    Ultralytics YOLOv8/YOLO11, output ``[1, 4+nc, N]`` (cx, cy, w, h, class scores);
- ``v5``    YOLOv5, output ``[1, N, 5+nc]`` (cx, cy, w, h, objectness, class scores);
- ``yolox`` Megvii YOLOX raw head, output ``[1, N, 5+nc]`` with one row per grid cell of the
            stride 8/16/32 maps, decoded here (xy = (xy + grid) * s, wh = exp(wh) * s).

Ultralytics models take RGB /255 letterboxed centred with pad 114; YOLOX takes BGR 0..255 padded
at the top-left. Boxes are mapped back to original pixels and clipped; NMS is class-aware.
"""
from __future__ import annotations

import ast
import logging
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from services.inference.protocol import MAX_DETECTIONS, PredictParams

__all__ = ["COCO_NAMES", "LAYOUTS", "YoloDetector", "class_names_from_metadata", "detect_layout"]

log = logging.getLogger(__name__)

LAYOUTS = ("v8", "v5", "yolox")
YOLOX_STRIDES = (8, 16, 32)
PAD_VALUE = 114
MAX_WH = 7680.0       # class offset for class-aware NMS in one pass (as Ultralytics)
MAX_NMS_INPUT = 30000  # candidates kept (highest scores first) before NMS
DEFAULT_INPUT_SIZE = 640

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class BoxMapping:
    """How letterboxed model coordinates map back to the original image: (v - pad) / scale."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float64, copy=True)
        out[:, [0, 2]] = ((out[:, [0, 2]] - self.pad_x) / self.scale_x).clip(0, self.width)
        out[:, [1, 3]] = ((out[:, [1, 3]] - self.pad_y) / self.scale_y).clip(0, self.height)
        return out


def letterbox_ultralytics(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, BoxMapping]:
    """Ultralytics preprocessing: resize by round(side * r), centred pad 114, RGB, /255, NCHW."""
    target_h, target_w = size
    h, w = image.shape[:2]
    r = min(target_h / h, target_w / w)
    new_w, new_h = round(w * r), round(h * r)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (target_w - new_w) / 2, (target_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                               value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    # Divide (not multiply by 1/255): the int8 models are sensitive to the last bit of the input.
    blob = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
    blob /= np.float32(255.0)
    return blob, BoxMapping(new_w / w, new_h / h, left, top, w, h)


def letterbox_yolox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, BoxMapping]:
    """YOLOX preprocessing: resize by int(side * r), pad 114 bottom/right, BGR, 0..255, NCHW."""
    target_h, target_w = size
    h, w = image.shape[:2]
    r = min(target_h / h, target_w / w)
    new_w, new_h = int(w * r), int(h * r)
    padded = np.full((target_h, target_w, 3), PAD_VALUE, dtype=np.uint8)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
    return blob, BoxMapping(r, r, 0.0, 0.0, w, h)


def yolox_grid_count(size: tuple[int, int]) -> int:
    return sum((size[0] // s) * (size[1] // s) for s in YOLOX_STRIDES)


def detect_layout(output_shape: tuple[int, ...], input_size: tuple[int, int],
                  metadata: dict[str, str]) -> str:
    """Guess the output layout from the output shape, the grid size and the model metadata."""
    if len(output_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in output_shape[1:]):
        raise ValueError(f"unsupported output shape {list(output_shape)}; use --layout")
    rows, cols = output_shape[1], output_shape[2]
    if rows < cols:                    # [1, 4+nc, N]: fewer attributes than anchors
        return "v8"
    if "ultralytics" in metadata.get("author", "").lower():
        return "v5"
    if rows == yolox_grid_count(input_size):
        return "yolox"                 # one row per grid cell: anchor-free raw head
    return "v5"


def class_names_from_metadata(metadata: dict[str, str], count: int) -> list[str]:
    """Names from the metadata ``names`` literal, else COCO when count is 80, else class_N."""
    fallback = list(COCO_NAMES) if count == len(COCO_NAMES) else [f"class_{i}" for i in range(count)]
    raw = metadata.get("names")
    if not raw:
        return fallback
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        log.warning("ignoring unparseable names metadata")
        return fallback
    if isinstance(parsed, (list, tuple)):
        parsed = dict(enumerate(parsed))
    if not isinstance(parsed, dict):
        log.warning("ignoring names metadata that is not a dict or list")
        return fallback
    names = list(fallback)
    for key, value in parsed.items():
        if isinstance(key, int) and 0 <= key < count and isinstance(value, str):
            names[key] = value
    return names


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def nms_class_aware(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    iou_threshold: float, max_det: int) -> np.ndarray:
    """Greedy NMS per class (class offset trick); drops a box whose IoU with a kept one is > threshold."""
    order = np.argsort(-scores, kind="stable")[:MAX_NMS_INPUT]
    shifted = boxes + (class_ids.astype(np.float64) * MAX_WH)[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        inter_w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(min=0)
        inter_h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(min=0)
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_UNAVAILABLE = "gpu_provider_unavailable"   # the marker the agent turns into a 400


class ProviderUnavailable(RuntimeError):
    """A GPU was asked for, ONNX Runtime cannot run on it, and no CPU fallback was allowed."""


def session_providers(device: str, gpu_fallback: str | None,
                      available: list[str]) -> list[Any]:
    """The providers to ask ONNX Runtime for: the CPU for ``device="cpu"``; for ``"cuda"`` the
    CUDA provider on the first visible device (CUDA_VISIBLE_DEVICES names the workload's), or
    the CPU where ``gpu_fallback`` is ``"cpu"``; else ProviderUnavailable."""
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [(CUDA, {"device_id": 0}), CPU]
    if gpu_fallback == "cpu":
        log.warning("the CUDA execution provider is not available (%s); running on the CPU",
                    ", ".join(available))
        return [CPU]
    raise ProviderUnavailable(
        f"{PROVIDER_UNAVAILABLE}: this ONNX Runtime has no {CUDA} (available: "
        f"{', '.join(available)}); install onnxruntime-gpu (pip install cnet[gpu]) or submit "
        "with gpu_fallback: cpu")


class YoloDetector:
    """One ONNX Runtime session and the pre/post-processing that matches its layout."""

    kind = "yolo"

    def __init__(self, model: str, threads: int = 1, layout: str | None = None,
                 spin: bool = False, device: str = "cpu",
                 gpu_fallback: str | None = None) -> None:
        if not os.path.isfile(model):
            raise FileNotFoundError(f"model file not found: {model}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
        self.model_path = model
        self.threads = max(1, int(threads))
        self.spin = bool(spin)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # ORT's own default is to spin; ours is not to: K workers (and the shim) share the cores.
        # Spinning trades idle CPU for a little latency on a host the service has to itself.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        providers = session_providers(device, gpu_fallback, ort.get_available_providers())
        if providers[0] != CPU and hasattr(ort, "preload_dlls"):
            try:   # CUDA and cuDNN from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn])
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 -- system libraries may still do
                log.warning("preloading the CUDA libraries failed: %s", exc)
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ValueError(f"cannot load ONNX model {model}: {exc}") from exc
        # ORT falls back to the CPU by itself when the CUDA provider fails to load (no driver,
        # no cuDNN): the providers in use are what the session says.
        self.provider = self.session.get_providers()[0]
        if device != "cpu" and self.provider != CUDA and gpu_fallback != "cpu":
            raise ProviderUnavailable(
                f"{PROVIDER_UNAVAILABLE}: {CUDA} failed to load on "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} (the session "
                f"runs on {self.provider}); check the driver and CUDA/cuDNN libraries, or submit "
                "with gpu_fallback: cpu")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError(f"expected one image input, got {len(inputs)} inputs")
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = inputs[0].name
        self.input_size = self._input_size(inputs[0].shape)
        self.output_shape = tuple(outputs[0].shape)
        self.layout = layout or detect_layout(self.output_shape, self.input_size, self.metadata)
        attributes = self.output_shape[1] if self.layout == "v8" else self.output_shape[2]
        fixed = attributes if isinstance(attributes, int) else 0  # a dynamic axis cannot be read
        self.num_classes = fixed - (4 if self.layout == "v8" else 5)
        if self.num_classes < 1:
            raise ValueError(f"output shape {list(self.output_shape)} does not fit layout {self.layout}")
        self.names = class_names_from_metadata(self.metadata, self.num_classes)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None
        log.info("loaded %s: layout %s, input %sx%s, %d classes, %d threads, spinning %s", model,
                 self.layout, self.input_size[1], self.input_size[0], self.num_classes, self.threads,
                 "on" if self.spin else "off")

    def _input_size(self, shape: list[Any]) -> tuple[int, int]:
        """(height, width) from the input shape, else metadata imgsz, else 640."""
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        try:
            imgsz = ast.literal_eval(self.metadata.get("imgsz", ""))
            if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2:
                return int(imgsz[0]), int(imgsz[1])
        except (ValueError, SyntaxError):
            pass
        return DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE

    def info(self) -> dict[str, Any]:
        return {
            "model_type": "yolo",
            "format": {"v8": "ultralytics-v8", "v5": "yolov5", "yolox": "yolox"}[self.layout],
            "layout": self.layout,
            "input_size": [self.input_size[1], self.input_size[0]],
            "num_classes": self.num_classes,
            "class_names": self.names,
            "threads": self.threads,
            "spin": self.spin,
            "provider": self.provider,
            "gpu_devices": _visible_gpus() if self.provider == CUDA else [],
        }

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, BoxMapping]:
        if self.layout == "yolox":
            return letterbox_yolox(image, self.input_size)
        return letterbox_ultralytics(image, self.input_size)

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: blob})[0]

    def candidates(self, output: np.ndarray, confidence: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (xyxy, model pixels), scores and class ids whose score is strictly > confidence."""
        if self.layout == "v8":
            pred = output[0].T
            class_scores = pred[:, 4:]
        else:
            pred = output[0]
            if self.layout == "yolox":
                pred = self._decode_yolox(pred)
            objectness = pred[:, 4:5]
            mask = objectness[:, 0] > confidence
            pred, objectness = pred[mask], objectness[mask]
            class_scores = pred[:, 5:] * objectness
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(class_ids)), class_ids]
        keep = scores > confidence
        return xywh_to_xyxy(pred[keep, :4]), scores[keep], class_ids[keep]

    def _decode_yolox(self, pred: np.ndarray) -> np.ndarray:
        if self._grid is None:
            grids, strides = [], []
            for stride in YOLOX_STRIDES:
                h, w = self.input_size[0] // stride, self.input_size[1] // stride
                xv, yv = np.meshgrid(np.arange(w), np.arange(h))
                grids.append(np.stack((xv, yv), axis=2).reshape(-1, 2))
                strides.append(np.full((h * w, 1), stride))
            self._grid = (np.concatenate(grids).astype(np.float32),
                          np.concatenate(strides).astype(np.float32))
        grid, stride = self._grid
        if len(pred) != len(grid):
            raise ValueError(f"YOLOX output has {len(pred)} rows, grid has {len(grid)}")
        decoded = pred.copy()
        decoded[:, :2] = (pred[:, :2] + grid) * stride
        decoded[:, 2:4] = np.exp(pred[:, 2:4]) * stride
        return decoded

    def detect(self, image: np.ndarray, params: PredictParams) -> list[dict[str, Any]]:
        blob, mapping = self.preprocess(image)
        output = self.infer(blob)
        boxes, scores, class_ids = self.candidates(output, params.confidence)
        keep = nms_class_aware(boxes, scores, class_ids, params.iou,
                               min(params.max_det, MAX_DETECTIONS))
        boxes = mapping.to_original(boxes[keep])
        return [
            {
                "class": self.names[int(c)],
                "class_id": int(c),
                "confidence": round(float(s), 5),
                "bbox": [round(float(v), 2) for v in box],
            }
            for box, s, c in zip(boxes, scores[keep], class_ids[keep])
        ]


def _visible_gpus() -> list[str]:
    return [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
