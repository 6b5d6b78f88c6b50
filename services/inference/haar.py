"""OpenCV Haar-cascade detector (face, eye, smile) from the cascades bundled with opencv-python.

Haar cascades give no probability, so every detection reports confidence 1.0 and the request's
confidence threshold does not filter them; ``max_det`` still caps the count. With
``within_faces`` the eye and smile cascades search only inside faces found by the face cascade
(fewer false positives); without it they search the whole image.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from services.inference.protocol import PredictParams

__all__ = ["CASCADES", "HaarDetector", "cascade_path", "check_cascade_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CascadeSpec:
    """A bundled cascade file and the detectMultiScale settings that suit it."""

    filename: str
    scale_factor: float
    min_neighbors: int
    min_size: int


CASCADES: dict[str, CascadeSpec] = {
    "face": CascadeSpec("haarcascade_frontalface_default.xml", 1.1, 5, 30),
    "eye": CascadeSpec("haarcascade_eye.xml", 1.1, 10, 15),
    "smile": CascadeSpec("haarcascade_smile.xml", 1.7, 20, 25),
}


def cascade_path(name: str) -> str:
    """Path of a bundled cascade; ValueError when the OpenCV build ships none (OpenCV 5)."""
    if name not in CASCADES:
        raise ValueError(f"unknown cascade {name!r}; choose one of {', '.join(CASCADES)}")
    base = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = os.path.join(base, CASCADES[name].filename)
    if not base or not os.path.isfile(path) or not hasattr(cv2, "CascadeClassifier"):
        raise ValueError(f"OpenCV {cv2.__version__} has no bundled Haar cascade {CASCADES[name].filename}"
                         " (install opencv-python-headless < 5)")
    return path


def check_cascade_file(path: str) -> str:
    """``path`` if OpenCV loads it as a cascade; ValueError saying why not."""
    if not os.path.isfile(path):
        raise ValueError(f"cascade file {path}: no such file")
    _classifier(path)
    return path


def _classifier(path: str) -> cv2.CascadeClassifier:
    try:
        classifier = cv2.CascadeClassifier(path)
    except (cv2.error, SystemError):   # OpenCV's parse error, raised as either
        raise ValueError(f"cannot load Haar cascade {path} (not a cascade classifier file)") \
            from None
    if classifier.empty():
        raise ValueError(f"cannot load Haar cascade {path} (not a cascade classifier file)")
    return classifier


def _load(name: str) -> cv2.CascadeClassifier:
    return _classifier(cascade_path(name))


class HaarDetector:
    """One cascade (and the face cascade too when searching inside faces)."""

    kind = "haar"

    def __init__(self, cascade: str, within_faces: bool = False, threads: int = 1,
                 cascade_file: str | None = None) -> None:
        self.cascade = cascade
        self.spec = CASCADES.get(cascade) or CASCADES["face"]
        self.custom = cascade_file is not None
        self.model_path = cascade_file or cascade_path(cascade)
        self.classifier = _classifier(self.model_path)
        self.within_faces = within_faces and cascade != "face"
        self.face_classifier = _load("face") if self.within_faces else None
        cv2.setNumThreads(max(1, int(threads)))
        log.info("loaded Haar cascade %s (within faces: %s)", self.model_path, self.within_faces)

    def info(self) -> dict[str, Any]:
        return {
            "model_type": "opencv",
            "format": "haar-cascade",
            "cascade": self.cascade,
            "cascade_file": self.model_path,
            "custom_cascade": self.custom,
            "within_faces": self.within_faces,
            "num_classes": 1,
            "class_names": [self.cascade],
            "opencv_version": cv2.__version__,
        }

    @staticmethod
    def _run(classifier: cv2.CascadeClassifier, gray: np.ndarray, spec: CascadeSpec) -> np.ndarray:
        boxes = classifier.detectMultiScale(gray, scaleFactor=spec.scale_factor,
                                            minNeighbors=spec.min_neighbors,
                                            minSize=(spec.min_size, spec.min_size))
        return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)

    def detect(self, image: np.ndarray, params: PredictParams) -> list[dict[str, Any]]:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        if self.face_classifier is None:
            boxes = self._run(self.classifier, gray, self.spec)
        else:
            found = []
            for fx, fy, fw, fh in self._run(self.face_classifier, gray, CASCADES["face"]):
                inner = self._run(self.classifier, gray[fy:fy + fh, fx:fx + fw], self.spec)
                found.append(inner + np.array([fx, fy, 0, 0]))
            boxes = np.concatenate(found) if found else np.empty((0, 4), dtype=np.int64)
        boxes = boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")][:params.max_det]
        return [
            {"class": self.cascade, "class_id": 0, "confidence": 1.0,
             "bbox": [int(x), int(y), int(x + w), int(y + h)]}
            for x, y, w, h in boxes
        ]
