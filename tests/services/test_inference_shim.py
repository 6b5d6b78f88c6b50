"""The shim and its worker pool, driven through a real Haar service: input checks, dispatch to idle
workers, the bounded queue, worker and shim crashes. Ordering is forced with SIGSTOP/SIGCONT on a
worker, never with sleeps or timing thresholds."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from .conftest import REPO, STOP_TIMEOUT, pids_gone, wait_for

OPENCV = "services.inference.opencv_service"
WAIT = 30.0


@pytest.fixture(scope="module")
def service(start_module_service):
    return start_module_service(OPENCV, "--cascade", "face", "--max-body-mb", "5")


def _json_ok(service, photos) -> dict:
    response = service.predict(json={"image": base64.b64encode(photos["astronaut"]).decode()})
    assert response.status_code == 200, response.text
    return response.json()


BAD_JSON_BODIES = [
    ({"image": "this is not base64!"}, 400, "invalid_base64"),
    ({"image": base64.b64encode(b"plain text, not an image").decode()}, 400, "invalid_image"),
    ({"image": ""}, 400, "empty_image"),
    ({"image": 42}, 400, "invalid_image"),
    ({"image": None}, 400, "invalid_image"),
    ({"picture": "abcd"}, 400, "missing_image"),
    ({"image": "aGVsbG8=", "confidence": 1.5}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "confidence": -0.1}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "confidence": "high"}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "confidence": True}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "iou": [0.5]}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "max_det": 0}, 400, "invalid_parameter"),
    ({"image": "aGVsbG8=", "max_det": 2.5}, 400, "invalid_parameter"),
    (["image"], 400, "invalid_json"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_JSON_BODIES)
def test_bad_json_input_is_a_json_error(service, photos, body, status, code):
    response = service.predict(json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(("data", "content_type", "status", "code"), [
    (b"{not json", "application/json", 400, "invalid_json"),
    (b"", "application/json", 400, "empty_body"),
    (b"", "image/png", 400, "empty_body"),
    (b"\x89PNG but broken", "image/png", 400, "invalid_image"),
    (b"hello", "text/plain", 415, "unsupported_media_type"),
    (b"x" * (50 * 1024 * 1024), "image/jpeg", 413, "body_too_large"),
])
def test_bad_raw_input_is_a_json_error(service, photos, data, content_type, status, code):
    response = service.predict(data=data, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    _json_ok(service, photos)  # and the service keeps serving


@pytest.mark.parametrize("data", [
    b"[" * 100_000,                        # parsed on the loop
    b'{"image": ' + b"[" * 300_000,        # big enough to be parsed in a thread
], ids=["small", "threaded"])
def test_deeply_nested_json_is_a_json_error(service, photos, data):
    response = service.predict(data=data, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "RecursionError" not in service.log() and "Traceback" not in service.log()
    _json_ok(service, photos)


JSON = "application/json"
_PARTS = (b'--b\r\nContent-Disposition: form-data; name=""\r\n\r\nx\r\n'
          b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
          b'\x89PNG\r\n--b--\r\n')
# The hostile bodies every JSON front door gets (deep nesting, huge numbers, NaN/Infinity, NUL,
# lone surrogates, bytes that are not UTF-8, wrong content types): (body, Content-Type, status,
# error code). Each is a JSON error, and the service answers as before.
HOSTILE_BODIES = {
    "nested 100,000 deep": (b"[" * 100_000, JSON, 400, "invalid_json"),
    "nested 5,000 deep in an option":
        (b'{"image": "aGVsbG8=", "iou": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, 400,
         "invalid_json"),
    "objects nested 5,000 deep as the image":
        (b'{"image": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001, JSON, 400, "invalid_json"),
    "an integer of 400 digits":
        (b'{"image": "aGVsbG8=", "max_det": 1' + b"0" * 400 + b"}", JSON, 400, "invalid_parameter"),
    "1e400": (b'{"image": "aGVsbG8=", "confidence": 1e400}', JSON, 400, "invalid_parameter"),
    "-1e400": (b'{"image": "aGVsbG8=", "iou": -1e400}', JSON, 400, "invalid_parameter"),
    "NaN": (b'{"image": "aGVsbG8=", "confidence": NaN}', JSON, 400, "invalid_parameter"),
    "Infinity": (b'{"image": "aGVsbG8=", "iou": Infinity}', JSON, 400, "invalid_parameter"),
    "-Infinity": (b'{"image": "aGVsbG8=", "max_det": -Infinity}', JSON, 400, "invalid_parameter"),
    "NaN as the image": (b'{"image": NaN}', JSON, 400, "invalid_image"),
    "NUL in the image": (b'{"image": "aGVs\\u0000bG8="}', JSON, 400, "invalid_base64"),
    "NUL as the image": (b'{"image": "\\u0000"}', JSON, 400, "invalid_base64"),
    "a lone surrogate": (b'{"image": "\\ud800"}', JSON, 400, "invalid_base64"),
    "not UTF-8": (b'{"image": "\xff\xfe"}', JSON, 400, "invalid_json"),
    "text/plain": (b"hello", "text/plain", 415, "unsupported_media_type"),
    "XML": (b"<image/>", "application/xml", 415, "unsupported_media_type"),
    "a form": (b"image=aGVsbG8%3D", "application/x-www-form-urlencoded", 415,
               "unsupported_media_type"),
    "no Content-Type, not JSON": (b"\x00\x01", None, 415, "unsupported_media_type"),
    "JSON labelled image/png": (b'{"image": "aGVsbG8="}', "image/png", 400, "invalid_image"),
    "NUL bytes as a PNG": (b"\x00" * 1000, "image/png", 400, "invalid_image"),
}
HOSTILE_MULTIPART = {
    "multipart without a boundary": (b"--x\r\n\r\nabc\r\n--x--\r\n", "multipart/form-data"),
    "multipart without its closing boundary": (b"garbage", "multipart/form-data; boundary=x"),
    "a multipart part without a name": (_PARTS, "multipart/form-data; boundary=b"),
}


def _hostile(service, photos, body: bytes, content_type: str | None, status: int,
             code: str | None):
    """A JSON error with ``status`` and ``code`` (None: any code), and the service unhurt."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = service.predict(data=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code if code is not None else error["code"]
    assert error["message"]
    _json_ok(service, photos)


@pytest.mark.parametrize("what", list(HOSTILE_BODIES))
def test_hostile_bodies_are_json_errors(service, photos, what):
    _hostile(service, photos, *HOSTILE_BODIES[what])


@pytest.mark.parametrize("what", list(HOSTILE_MULTIPART))
def test_hostile_multipart_bodies_are_json_errors(service, photos, what):
    _hostile(service, photos, *HOSTILE_MULTIPART[what], 400, None)


def test_bad_query_parameter(service, photos):
    response = service.predict(data=photos["astronaut"], params={"confidence": "abc"},
                               headers={"Content-Type": "image/png"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_json_raw_and_multipart_agree(service, photos):
    image = photos["astronaut"]
    as_json = _json_ok(service, photos)["detections"]
    raw = service.predict(data=image, headers={"Content-Type": "image/png"}).json()["detections"]
    multipart = service.predict(files={"image": ("a.png", image, "image/png")},
                                data={"confidence": "0.5"}).json()["detections"]
    data_uri = service.predict(json={"image": "data:image/png;base64,"
                                     + base64.b64encode(image).decode()}).json()["detections"]
    assert as_json == raw == multipart == data_uri
    assert len(as_json) == 1


def test_unknown_endpoint_and_method(service):
    missing = requests.get(f"{service.url}/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = requests.get(f"{service.url}/predict", timeout=10)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_metrics(service, photos):
    _json_ok(service, photos)
    text = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'inference_requests_total{code="200",endpoint="predict"}' in text
    assert "inference_workers_alive 1.0" in text
    assert "inference_request_seconds_bucket" in text


def test_worker_pid_header(service, photos):
    response = service.predict(data=photos["astronaut"], headers={"Content-Type": "image/png"})
    assert int(response.headers["X-Worker-Pid"]) in service.worker_pids()


# -- dispatch, queue and crashes (each with its own service) ---------------------------------

def _post_png(service, image: bytes) -> requests.Response:
    return service.predict(data=image, headers={"Content-Type": "image/png"})


def _workers(service) -> dict:
    return service.health()["workers"]


def test_a_stuck_worker_does_not_block_the_other(start_service, photos):
    service = start_service(OPENCV, "--cascade", "face", "--workers", "2")
    stuck, free = service.health()["workers"]["pids"]
    os.kill(stuck, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_post_png, service, photos["astronaut"]) for _ in range(4)]
            wait_for(lambda: sum(f.done() for f in futures) >= 3, timeout=WAIT, message="3 of 4 requests")
            served = [f.result() for f in futures if f.done()]
            assert all(r.status_code == 200 for r in served)
            assert {int(r.headers["X-Worker-Pid"]) for r in served} == {free}
            os.kill(stuck, signal.SIGCONT)
            results = [f.result(timeout=WAIT) for f in futures]
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert [r.status_code for r in results] == [200] * 4


def test_full_queue_answers_503_with_retry_after(start_service, photos):
    service = start_service(OPENCV, "--cascade", "face", "--queue-size", "1")
    (worker,) = _workers(service)["pids"]
    os.kill(worker, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post_png, service, photos["astronaut"])
            wait_for(lambda: _workers(service)["busy"] == 1, timeout=WAIT, message="a busy worker")
            second = pool.submit(_post_png, service, photos["astronaut"])
            wait_for(lambda: _workers(service)["queued"] == 1, timeout=WAIT, message="a queued request")
            refused = _post_png(service, photos["astronaut"])
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            os.kill(worker, signal.SIGCONT)
            assert first.result(timeout=WAIT).status_code == 200
            assert second.result(timeout=WAIT).status_code == 200
    finally:
        os.kill(worker, signal.SIGCONT)


def test_killed_idle_worker_is_replaced(start_service, photos):
    service = start_service(OPENCV, "--cascade", "face", "--workers", "2")
    before = _workers(service)["pids"]
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: (w := _workers(service))["alive"] == 2 and before[0] not in w["pids"],
             timeout=WAIT, message="a replacement worker")
    assert _workers(service)["restarts"] == 1
    assert sorted(service.worker_pids()) == _workers(service)["pids"]
    for _ in range(3):
        assert _post_png(service, photos["astronaut"]).status_code == 200


def test_worker_killed_mid_request_gets_a_retry_or_an_error(start_service, photos):
    service = start_service(OPENCV, "--cascade", "face")
    (worker,) = _workers(service)["pids"]
    os.kill(worker, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as pool:
        pending: Future[requests.Response] = pool.submit(_post_png, service, photos["astronaut"])
        wait_for(lambda: _workers(service)["busy"] == 1, timeout=WAIT, message="the request to reach the worker")
        os.kill(worker, signal.SIGKILL)
        response = pending.result(timeout=WAIT)
    if response.status_code == 200:  # retried on the replacement
        assert int(response.headers["X-Worker-Pid"]) != worker
        assert response.json()["count"] == 1
    else:
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "worker_died"
    wait_for(lambda: _workers(service)["alive"] == 1, timeout=WAIT, message="a replacement worker")
    assert _post_png(service, photos["astronaut"]).status_code == 200


def test_workers_die_with_a_killed_shim(start_service):
    service = start_service(OPENCV, "--cascade", "face", "--workers", "2")
    workers = service.worker_pids()
    assert len(workers) == 2
    service.process.kill()
    service.process.wait(timeout=STOP_TIMEOUT)
    wait_for(lambda: pids_gone(workers), timeout=STOP_TIMEOUT, message="orphaned workers to exit")


def test_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", OPENCV, "--cascade", "face", "--port",
                                 str(port)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"cnet-inference-opencv: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
