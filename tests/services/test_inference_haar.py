"""cnet-inference-opencv: OpenCV's bundled Haar cascades on the astronaut photo, same JSON as YOLO."""
from __future__ import annotations

import base64

import pytest
import requests

OPENCV = "services.inference.opencv_service"


def _inside(inner: list[float], outer: list[float]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


@pytest.fixture(scope="module")
def face_service(start_module_service):
    return start_module_service(OPENCV, "--cascade", "face")


def _detect(service, image: bytes) -> list[dict]:
    response = service.predict(json={"image": base64.b64encode(image).decode()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["detections"])
    return body["detections"]


def test_astronaut_has_exactly_one_face(face_service, photos):
    faces = _detect(face_service, photos["astronaut"])
    assert len(faces) == 1
    face = faces[0]
    assert face["class"] == "face" and face["class_id"] == 0 and face["confidence"] == 1.0
    x1, y1, x2, y2 = face["bbox"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512


def test_eye_cascade_standalone_finds_eyes_inside_the_face(face_service, start_service, photos):
    face = _detect(face_service, photos["astronaut"])[0]["bbox"]
    eyes = _detect(start_service(OPENCV, "--cascade", "eye"), photos["astronaut"])
    assert eyes and all(eye["class"] == "eye" for eye in eyes)
    assert all(_inside(eye["bbox"], face) for eye in eyes), (eyes, face)


def test_eyes_within_faces_option(face_service, start_service, photos):
    face = _detect(face_service, photos["astronaut"])[0]["bbox"]
    service = start_service(OPENCV, "--cascade", "eye", "--within-faces")
    eyes = _detect(service, photos["astronaut"])
    assert 1 <= len(eyes) <= 2
    assert all(_inside(eye["bbox"], face) for eye in eyes)
    assert requests.get(f"{service.url}/info", timeout=10).json()["within_faces"] is True


def test_smile_cascade_loads_and_answers(start_service, photos):
    service = start_service(OPENCV, "--cascade", "smile", "--within-faces")
    smiles = _detect(service, photos["astronaut"])
    assert all(s["class"] == "smile" for s in smiles)


def test_info_health_and_no_face_in_coffee(face_service, photos):
    info = requests.get(f"{face_service.url}/info", timeout=10).json()
    assert info["model_type"] == "opencv" and info["loaded"] is True
    assert info["cascade"] == "face" and info["format"] == "haar-cascade"
    health = face_service.health()
    assert health["status"] == "healthy"
    assert health["model"].endswith("haarcascade_frontalface_default.xml")
    assert _detect(face_service, photos["coffee"]) == []
