"""The shim's HTTP endpoints (/health, /info, /predict, /metrics, and /openapi.json describing them):
each request is checked, handed to a free worker, and every failure becomes a JSON error
``{"error": {"code", "message"}}``."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from services.inference.metrics import ServiceMetrics
from services.inference.options import MIB, ShimConfig
from services.inference.pool import (
    PoolError,
    QueueFull,
    QueueTimeout,
    WorkerDied,
    WorkerPool,
    WorkerTimeout,
)
from services.inference.request import RequestError, parse_predict_request

__all__ = ["DRAIN_LIMIT", "build_app"]

DRAIN_LIMIT = 256 * MIB       # bodies up to this size are read (and dropped) to answer 413 cleanly
THREADED_PARSE_BYTES = 256 * 1024
RETRY_AFTER_SECONDS = 1
WORKER_ERRORS = {  # worker error code -> (HTTP status, code sent to the client)
    "bad_image": (400, "invalid_image"),
    "bad_request": (400, "invalid_request"),
    "inference_failed": (500, "inference_failed"),
    "load_failed": (503, "model_not_loaded"),
}
OPENAPI = json.loads((Path(__file__).resolve().parent / "openapi.json").read_text())


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


class OpenAPIHandler(BaseHandler):
    """The OpenAPI document of these endpoints, naming this service as its server."""

    endpoint = "openapi"

    def get(self) -> None:
        self.send_json({**OPENAPI, "servers": [{"url": f"{self.request.protocol}://{self.request.host}"}]})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_error_json(404, "not_found", f"no such endpoint: {self.request.path}")


def build_app(pool: WorkerPool, config: ShimConfig, metrics: ServiceMetrics) -> tornado.web.Application:
    """The Tornado application: the endpoints, and a JSON 404 for anything else."""
    context = {"pool": pool, "config": config, "metrics": metrics, "started": time.monotonic()}
    return tornado.web.Application(
        [
            (r"/health", HealthHandler, context),
            (r"/info", InfoHandler, context),
            (r"/predict", PredictHandler, context),
            (r"/metrics", MetricsHandler, context),
            (r"/openapi\.json", OpenAPIHandler, context),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=context,
    )
