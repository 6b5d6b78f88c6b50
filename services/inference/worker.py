"""Inference worker process: a ZMQ REP socket that decodes images and runs one detector on them.

Run by the shim as ``python -m services.inference.worker --endpoint EP --kind yolo|haar
--options JSON --parent-pid PID``. The worker binds EP, loads its detector, then answers the
requests of :mod:`services.inference.protocol` one at a time. It dies with its parent
(PR_SET_PDEATHSIG, and a parent-pid check while idle) and never lets a bad request end its loop.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Protocol

import cv2
import numpy as np
import zmq

from services.inference import protocol
from services.inference.protocol import PredictParams

__all__ = ["DETECTOR_KINDS", "Detector", "Worker", "decode_image", "load_detector", "main"]

log = logging.getLogger("services.inference.worker")

# kind -> (module, class); each class takes the --options map as keyword arguments.
DETECTOR_KINDS: dict[str, tuple[str, str]] = {
    "yolo": ("services.inference.yolo", "YoloDetector"),
    "haar": ("services.inference.haar", "HaarDetector"),
}
PARENT_CHECK_MS = 1000
PR_SET_PDEATHSIG = 1


class Detector(Protocol):
    """What a worker needs from a detector."""

    def info(self) -> dict[str, Any]: ...

    def detect(self, image: np.ndarray, params: PredictParams) -> list[dict[str, Any]]: ...


class BadImage(ValueError):
    """The request's bytes are not a decodable image."""


def load_detector(kind: str, options: dict[str, Any]) -> Detector:
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown detector kind {kind!r}")
    module_name, class_name = DETECTOR_KINDS[kind]
    return getattr(importlib.import_module(module_name), class_name)(**options)


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image file into a BGR uint8 array."""
    if not data:
        raise BadImage("image is empty")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. more pixels than OPENCV_IO_MAX_IMAGE_PIXELS
        raise BadImage(f"image cannot be decoded: {exc.msg.strip() or exc}") from exc
    if image is None or image.size == 0:
        raise BadImage("data is not a supported image (JPEG, PNG, BMP, WebP, TIFF ...)")
    return image


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill us when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(0)


class Worker:
    """The request loop around one detector (or the error that kept it from loading)."""

    def __init__(self, socket: zmq.Socket, detector: Detector | None, load_error: str | None,
                 parent_pid: int) -> None:
        self.socket = socket
        self.detector = detector
        self.load_error = load_error
        self.parent_pid = parent_pid
        self.pid = os.getpid()

    def handle(self, frames: list[bytes]) -> list[bytes]:
        try:
            op, params, image = protocol.decode_request(frames)
        except protocol.ProtocolError as exc:
            return protocol.encode_error(self.pid, "bad_request", str(exc))
        if self.detector is None:
            return protocol.encode_error(self.pid, "load_failed", self.load_error or "not loaded")
        if op == protocol.OP_PING:
            return protocol.encode_reply(self.pid, {"info": self.detector.info()})
        if params is None or image is None:
            return protocol.encode_error(self.pid, "bad_request", "predict needs params and an image")
        return self.predict(params, image)

    def predict(self, params: PredictParams, data: bytes) -> list[bytes]:
        start = time.perf_counter()
        try:
            image = decode_image(data)
        except BadImage as exc:
            return protocol.encode_error(self.pid, "bad_image", str(exc))
        decoded = time.perf_counter()
        try:
            detections = self.detector.detect(image, params)  # type: ignore[union-attr]
        except Exception as exc:  # a failure on one image must not end the worker
            log.exception("inference failed")
            return protocol.encode_error(self.pid, "inference_failed", f"{type(exc).__name__}: {exc}")
        done = time.perf_counter()
        return protocol.encode_reply(self.pid, {
            "detections": detections,
            "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
            "timings": {"decode_ms": round((decoded - start) * 1000, 3),
                        "inference_ms": round((done - decoded) * 1000, 3)},
        })

    def serve(self) -> int:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while True:
            if not poller.poll(PARENT_CHECK_MS):
                if os.getppid() != self.parent_pid:
                    log.warning("parent %d is gone; exiting", self.parent_pid)
                    return 0
                continue
            frames = self.socket.recv_multipart(copy=True)
            self.socket.send_multipart(self.handle(frames))
            if self.detector is None:
                return 3  # the load error has been reported to the shim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="services.inference.worker", description=__doc__)
    parser.add_argument("--endpoint", required=True, help="ZMQ endpoint to bind (ipc:// or tcp://)")
    parser.add_argument("--kind", required=True, choices=sorted(DETECTOR_KINDS))
    parser.add_argument("--options", default="{}", help="detector keyword arguments as JSON")
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the shim owns Ctrl-C and stops us itself
    die_with_parent(args.parent_pid)
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.linger = 0
    socket.bind(args.endpoint)
    detector: Detector | None = None
    load_error: str | None = None
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise TypeError("--options must be a JSON object")
        detector = load_detector(args.kind, options)
    except Exception as exc:  # noqa: BLE001 -- any load failure is reported on the first ping
        load_error = str(exc) or type(exc).__name__
    try:
        return Worker(socket, detector, load_error, args.parent_pid).serve()
    finally:
        socket.close(linger=0)
        context.term()


if __name__ == "__main__":
    sys.exit(main())
