"""The gateway's Tornado application: its own ``/health``, ``/info``, ``/metrics`` and
``/openapi.json`` (the document of this API, ``openapi.json`` beside this file), and S3
everywhere else, at the root (``/<bucket>/<key>``) and under ``/s3`` alike.

A bucket may be named ``health``, ``info``, ``metrics`` or ``openapi.json``. Then a plain
``GET /health`` (no query string, unsigned) is still the gateway's own endpoint, which the
agent's health probe sends; any other request to that path (a query, a signature, another
method) is S3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tornado.routing
import tornado.web

from services.gateway.paths import MOUNT
from services.gateway.s3 import S3Handler
from services.gateway.state import SERVER_NAME, Gateway

__all__ = ["OPENAPI", "OWN_PATHS", "GatewayApp", "make_app"]

OWN_PATHS = ("/health", "/info", "/metrics", "/openapi.json")
OPENAPI = json.loads((Path(__file__).resolve().parent / "openapi.json").read_text())


class OwnPath(tornado.routing.Matcher):
    """One of the gateway's own paths, unless the bucket has its name and the request is S3's."""

    def __init__(self, path: str, bucket: str):
        self.path = path
        self.shadowed = path[1:] == bucket

    def match(self, request: Any) -> dict | None:
        if request.path != self.path:
            return None
        if self.shadowed and (request.method != "GET" or request.query
                              or "Authorization" in request.headers):
            return None
        return {}


class GatewayApp(tornado.web.Application):
    """Counts every answer (for ``/metrics``) as it logs it."""

    def __init__(self, gateway: Gateway, handlers: list):
        super().__init__(handlers)
        self.gateway = gateway

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        self.gateway.metrics.count(handler.request.method, handler.get_status())
        super().log_request(handler)


class _OwnHandler(tornado.web.RequestHandler):
    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def set_default_headers(self) -> None:
        self.set_header("Server", SERVER_NAME)


class HealthHandler(_OwnHandler):
    def get(self) -> None:
        gw = self.gateway
        self.write({"status": "ok", "service": SERVER_NAME, "bucket": gw.bucket,
                    "base_path": gw.base_real, "index": gw.index.kind,
                    "objects": gw.index.count(), "auth": gw.credentials is not None,
                    "uptime": gw.uptime()})


class InfoHandler(_OwnHandler):
    def get(self) -> None:
        gw = self.gateway
        self.write({"service": SERVER_NAME, "bucket": gw.bucket, "region": gw.region,
                    "s3_paths": ["/", MOUNT + "/"], "addressing_style": "path",
                    "auth": "sigv4" if gw.credentials is not None else "none",
                    "owner": {"id": gw.owner.id, "display_name": gw.owner.display_name},
                    "index": gw.index.kind, "read_only": True})


class MetricsHandler(_OwnHandler):
    def get(self) -> None:
        gw = self.gateway
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(gw.metrics.render(objects=gw.index.count(), uptime=gw.uptime()))


class OpenAPIHandler(_OwnHandler):
    """This API's OpenAPI document, naming this gateway as its server."""

    def get(self) -> None:
        self.write({**OPENAPI, "servers": [{"url": f"{self.request.protocol}://{self.request.host}"}]})


def make_app(gateway: Gateway) -> GatewayApp:
    own = dict(zip(OWN_PATHS, (HealthHandler, InfoHandler, MetricsHandler, OpenAPIHandler)))
    args = {"gateway": gateway}
    rules = [tornado.routing.Rule(OwnPath(path, gateway.bucket), handler, args)
             for path, handler in own.items()]
    rules.append(tornado.routing.Rule(tornado.routing.AnyMatches(), S3Handler, args))
    return GatewayApp(gateway, rules)
