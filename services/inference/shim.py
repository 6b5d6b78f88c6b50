"""The HTTP shim of an inference service: Tornado endpoints in front of a pool of ZMQ workers.

``GET /health``, ``GET /info``, ``POST /predict``, ``GET /metrics``. The shim parses and checks
requests, hands each to a free worker (:mod:`services.inference.pool`) and turns every failure
into a JSON error ``{"error": {"code", "message"}}``. :func:`run` is the whole program apart
from the detector-specific arguments: bind, start the workers, serve, stop on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from services.inference.metrics import ServiceMetrics
from services.inference.pool import (
    PoolError,
    QueueFull,
    QueueTimeout,
    StartupError,
    WorkerDied,
    WorkerPool,
    WorkerSpec,
    WorkerTimeout,
)
from services.inference.request import RequestError, parse_predict_request

__all__ = [
    "ShimConfig",
    "add_common_arguments",
    "build_app",
    "config_from_args",
    "default_threads",
    "run",
]

log = logging.getLogger("services.inference")

MIB = 1024 * 1024
DRAIN_LIMIT = 256 * MIB       # bodies up to this size are read (and dropped) to answer 413 cleanly
THREADED_PARSE_BYTES = 256 * 1024
RETRY_AFTER_SECONDS = 1
WORKER_ERRORS = {  # worker error code -> (HTTP status, code sent to the client)
    "bad_image": (400, "invalid_image"),
    "bad_request": (400, "invalid_request"),
    "inference_failed": (500, "inference_failed"),
    "load_failed": (503, "model_not_loaded"),
}


@dataclass(frozen=True)
class ShimConfig:
    """Everything the shim needs besides the worker spec."""

    program: str
    model_type: str
    model: str
    host: str
    port: int
    workers: int
    threads: int
    queue_size: int
    request_timeout: float
    start_timeout: float
    max_body_bytes: int
    max_image_pixels: int
    log_level: str = "INFO"


def default_threads(workers: int) -> int:
    """ONNX Runtime / OpenCV threads per worker so that workers x threads <= cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every inference program shares (network, workers, limits)."""
    parser.add_argument("--port", type=_port, required=True, help="HTTP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads per worker (default: cores // workers)")
    parser.add_argument("--queue-size", type=_positive_int, default=32,
                        help="requests that may wait for a busy worker before 503")
    parser.add_argument("--request-timeout", type=_positive_float, default=30.0,
                        help="seconds a request may wait for and run on a worker")
    parser.add_argument("--start-timeout", type=_positive_float, default=60.0,
                        help="seconds a worker may take to load its model")
    parser.add_argument("--max-body-mb", type=_positive_float, default=20.0,
                        help="largest accepted request body in MiB (larger: 413)")
    parser.add_argument("--max-image-pixels", type=_positive_int, default=100_000_000,
                        help="largest decoded image in pixels (larger: 400)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def config_from_args(program: str, model_type: str, model: str,
                     args: argparse.Namespace) -> ShimConfig:
    return ShimConfig(
        program=program, model_type=model_type, model=model, host=args.host, port=args.port,
        workers=args.workers, threads=args.threads or default_threads(args.workers),
        queue_size=args.queue_size, request_timeout=args.request_timeout,
        start_timeout=args.start_timeout, max_body_bytes=int(args.max_body_mb * MIB),
        max_image_pixels=args.max_image_pixels, log_level=args.log_level,
    )


class BaseHandler(tornado.web.RequestHandler):
    """JSON responses and errors, and request counting."""

    endpoint = "other"

    def initialize(self, pool: WorkerPool, config: ShimConfig, metrics: ServiceMetrics,
                   started: float) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics
        self.started = started

    def send_json(self, payload: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def send_error_json(self, status: int, code: str, message: str) -> None:
        self.send_json({"error": {"code": code, "message": message}}, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason or "error"
        code = reason.lower().replace(" ", "_")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": reason}}))

    def on_finish(self) -> None:
        self.metrics.requests.labels(self.endpoint, str(self.get_status())).inc()


class HealthHandler(BaseHandler):
    endpoint = "health"

    def get(self) -> None:
        healthy = self.pool.alive > 0
        self.send_json({
            "status": "healthy" if healthy else "unhealthy",
            "model": self.config.model,
            "model_type": self.config.model_type,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "workers": self.pool.status(),
        }, 200 if healthy else 503)


class InfoHandler(BaseHandler):
    endpoint = "info"

    def get(self) -> None:
        self.send_json({
            **self.pool.info,
            "model_type": self.config.model_type,
            "model": self.config.model,
            "loaded": self.pool.alive > 0,
            "workers": self.config.workers,
            "workers_alive": self.pool.alive,
            "threads_per_worker": self.config.threads,
            "queue_size": self.config.queue_size,
            "max_body_bytes": self.config.max_body_bytes,
        })


class MetricsHandler(BaseHandler):
    endpoint = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.metrics.render())


@tornado.web.stream_request_body
class PredictHandler(BaseHandler):
    """POST /predict: the body is streamed in so an oversized one is counted, not kept."""

    endpoint = "predict"

    def prepare(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.started_at = time.perf_counter()
        declared = self.request.headers.get("Content-Length")
        self.too_large = declared is not None and declared.isdigit() \
            and int(declared) > self.config.max_body_bytes
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(DRAIN_LIMIT)

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.config.max_body_bytes:
            self.too_large = True
            self.chunks.clear()
        elif not self.too_large:
            self.chunks.append(chunk)

    async def post(self) -> None:
        if self.too_large:
            return self.send_error_json(
                413, "body_too_large", f"request body exceeds {self.config.max_body_bytes} bytes")
        body = b"".join(self.chunks)
        self.chunks.clear()
        content_type = self.request.headers.get("Content-Type", "")
        query = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        try:
            if len(body) > THREADED_PARSE_BYTES:  # keep the loop responsive on big JSON/base64
                request = await asyncio.get_running_loop().run_in_executor(
                    None, parse_predict_request, content_type, body, query)
            else:
                request = parse_predict_request(content_type, body, query)
        except RequestError as exc:
            return self.send_error_json(exc.status, exc.code, exc.message)
        del body
        try:
            reply = await self.pool.predict(request.params, request.image)
        except (QueueFull, QueueTimeout) as exc:
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
            return self.send_error_json(503, "overloaded", str(exc))
        except WorkerDied as exc:
            return self.send_error_json(502, "worker_died", str(exc))
        except WorkerTimeout as exc:
            return self.send_error_json(504, "timeout", str(exc))
        except PoolError as exc:
            return self.send_error_json(503, "unavailable", str(exc))
        self.set_header("X-Worker-Pid", str(reply["pid"]))
        if not reply["ok"]:
            status, code = WORKER_ERRORS.get(reply["error"]["code"], (500, "worker_error"))
            return self.send_error_json(status, code, reply["error"].get("message", ""))
        detections = reply.get("detections", [])
        self.metrics.detections.inc(len(detections))
        timings = dict(reply.get("timings", {}))
        self.metrics.worker_seconds.observe(
            (timings.get("decode_ms", 0) + timings.get("inference_ms", 0)) / 1000)
        elapsed = time.perf_counter() - self.started_at
        self.metrics.latency.observe(elapsed)
        timings["total_ms"] = round(elapsed * 1000, 3)
        self.send_json({"detections": detections, "count": len(detections),
                        "model": self.config.model, "image": reply.get("image"),
                        "timings": timings})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_error_json(404, "not_found", f"no such endpoint: {self.request.path}")


def build_app(pool: WorkerPool, config: ShimConfig, metrics: ServiceMetrics) -> tornado.web.Application:
    context = {"pool": pool, "config": config, "metrics": metrics, "started": time.monotonic()}
    return tornado.web.Application(
        [
            (r"/health", HealthHandler, context),
            (r"/info", InfoHandler, context),
            (r"/predict", PredictHandler, context),
            (r"/metrics", MetricsHandler, context),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=context,
    )


async def _serve(config: ShimConfig, spec: WorkerSpec, sockets: list[Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = ServiceMetrics()
    pool = WorkerPool(spec, config.workers, config.queue_size, config.request_timeout,
                      config.start_timeout, on_worker_exit=metrics.on_worker_exit)
    metrics.watch(pool)
    starting = asyncio.create_task(pool.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopped while starting")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await pool.close()
        return 0
    stopping.cancel()
    try:
        starting.result()
    except StartupError as exc:
        print(f"{config.program}: error: cannot load {config.model}: {exc}", file=sys.stderr)
        return 2
    server = HTTPServer(build_app(pool, config, metrics), max_body_size=DRAIN_LIMIT, xheaders=False)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("%s serving %s on http://%s:%d with %d worker(s) x %d thread(s)", config.program,
             config.model, config.host, port, config.workers, config.threads)
    await stop.wait()
    log.info("shutting down")
    server.stop()
    await pool.close()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
    except TimeoutError:
        log.warning("connections still open at exit")
    log.info("stopped")
    return 0


def run(config: ShimConfig, spec: WorkerSpec) -> int:
    """Bind the port, start the workers, serve until SIGTERM/SIGINT; return the exit status."""
    logging.basicConfig(stream=sys.stderr, level=config.log_level,
                        format=f"%(asctime)s {config.program}[{os.getpid()}] %(levelname)s %(message)s")
    try:
        sockets = bind_sockets(config.port, config.host)
    except OSError as exc:
        print(f"{config.program}: error: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    spec = WorkerSpec(spec.kind, spec.options,
                      {**spec.env, "OPENCV_IO_MAX_IMAGE_PIXELS": str(config.max_image_pixels)})
    try:
        return asyncio.run(_serve(config, spec, sockets))
    finally:
        for sock in sockets:
            sock.close()
