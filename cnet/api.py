"""The REST front door (the seed's endpoints), the route of the WebSocket event stream (the
stream is :mod:`cnet.events_socket`, imported by its first request), /metrics, the UI and the
API's OpenAPI document (``openapi.json`` beside this file).

A REST handler takes its operation's arguments from the path, the query and the body, and runs
it (:mod:`cnet.ops`): parse, run, reply. Bad input gets the same error as over the bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import tornado.httpserver
import tornado.routing
import tornado.web

from .errors import BadRequest, CnetError, NotFound, PayloadTooLarge
from .http_auth import bearer
from .http_errors import JsonErrors
from .ops import (
    OPS,
    Caller,
    Delete,
    Get,
    Health,
    List,
    Logs,
    Nodes,
    Operation,
    ResourcesOp,
    Stop,
    Submit,
    check_token,
)
from .svc_dispatch import AgentApp

if TYPE_CHECKING:
    from .events import EventHub
    from .metrics import AgentMetrics
    from .node import Node
    from .svc_router import ReplicaSource
    from .uploads import Uploads

log = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
_ID = r"([^/]+)"   # any path segment: the operation says what a workload id may be


@dataclass(frozen=True)
class Web:
    """What the HTTP side needs besides the operations' node."""

    node: "Node"
    hub: "EventHub"
    metrics: "AgentMetrics"
    uploads: "Uploads | None"
    bus_endpoints: Callable[[], dict]     # where this node's bus listens (GET /api/bus)
    token: str | None = None
    max_json_body: int = 1 << 20
    upload_limit: int = 1 << 30
    upload_idle_timeout: float = 60.0
    replicas: "ReplicaSource | None" = None   # the sets served at /svc/<id>/; None: every /svc/ is 404
    svc_body_limit: int = 64 << 20            # request bodies through /svc/ (413 beyond)
    svc_timeout: float = 60.0                 # how long a replica may take to answer (504 beyond)


class BaseHandler(JsonErrors):
    """JSON in, JSON out; bearer-token auth; CnetError becomes ``{"error": {code, message}}``."""

    public = False  # True: no token needed (health, bus discovery)
    route = "other"

    def initialize(self, web: Web) -> None:
        self.web = web
        self._started = time.perf_counter()

    def prepare(self):
        if not self.public:
            check_token(self.web.token, bearer(self.request))

    async def run(self, kind: type[Operation], args: dict[str, Any] | None = None) -> dict:
        """Parse and run one operation for a client of this node."""
        return await kind.parse(args or {}).run(self.web.node, Caller())

    def reply(self, body, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, separators=(",", ":")))

    def json_body(self, raw: bytes | None = None):
        raw = self.request.body if raw is None else raw
        if not raw:
            raise BadRequest("the request body is empty; expected JSON", code="invalid_json")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from None
        except RecursionError:
            raise BadRequest("malformed JSON: nested too deeply", code="invalid_json") from None

    def query(self, *names: str) -> dict[str, str]:
        """The named query arguments that are present."""
        found = {name: self.get_query_argument(name, None) for name in names}
        return {name: value for name, value in found.items() if value is not None}

    def on_finish(self) -> None:
        self.web.metrics.observe_request(self.request.method, self.route, self.get_status(),
                                         time.perf_counter() - self._started)


@tornado.web.stream_request_body
class WorkloadsHandler(BaseHandler):
    """``GET /api/workloads`` lists; ``POST`` submits (JSON, or multipart for data)."""

    route = "/api/workloads"

    def prepare(self):
        super().prepare()
        self._body = bytearray()
        self._too_large = False
        self._upload = None
        self._watchdog: asyncio.Task | None = None
        if self.request.method != "POST":
            return None
        ctype = self.request.headers.get("Content-Type", "")
        try:
            declared = int(self.request.headers.get("Content-Length", 0) or 0)
        except ValueError:
            raise BadRequest("Content-Length: not a number", code="invalid_header") from None
        if ctype.startswith("multipart/form-data"):
            return self._begin_upload(ctype, declared)
        limit = self.web.max_json_body
        if declared > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte "
                                  "limit for JSON submissions")
        # A margin past the limit, so an oversized chunked body is answered with our 413
        # rather than Tornado dropping the connection.
        self.request.connection.set_max_body_size(limit + (1 << 20))
        return None

    async def _begin_upload(self, ctype: str, declared: int) -> None:
        uploads = self.web.uploads
        if uploads is None:
            raise BadRequest("data uploads are not available on this agent", code="unsupported")
        self.request.connection.set_max_body_size(self.web.upload_limit + (1 << 20))
        self._upload = await uploads.begin(ctype, declared)
        self._last_chunk = time.monotonic()
        self._watchdog = asyncio.ensure_future(self._watch_idle(self.web.upload_idle_timeout))

    async def _watch_idle(self, timeout: float) -> None:
        """A client that stays connected but stops sending must not hold its reservation."""
        while self._upload is not None and not self._finished:
            idle = time.monotonic() - self._last_chunk
            if idle >= timeout:
                log.warning("upload stalled for %.0f s; dropping it", idle)
                self._upload.abort(f"no data for {timeout:g} s")
                self._upload = None
                self.request.connection.close()
                return
            await asyncio.sleep(timeout - idle)

    async def data_received(self, chunk: bytes) -> None:
        if self._upload is not None:
            self._last_chunk = time.monotonic()
            try:
                await self._upload.feed(chunk)
            except CnetError as exc:
                # Answer now: the rest of the body is then skipped and the connection closed.
                # (The upload has already removed what it had written.)
                self._upload = None
                self._handle_request_exception(exc)
            return
        if self._too_large:
            return
        self._body += chunk
        if len(self._body) > self.web.max_json_body:
            # Answer now (a chunked body has no length to refuse it by up front): the rest
            # of the body is then skipped and the connection closed.
            self._too_large = True
            self._body = bytearray()
            self._handle_request_exception(self._too_large_error())

    def on_finish(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().on_finish()

    def on_connection_close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._upload is not None and not self._finished:
            self._upload.abort("the client disconnected")
        super().on_connection_close()  # ends the wait for the rest of the body

    async def post(self):
        if self._upload is not None:
            try:
                wl = await self._upload.finish()
            except CnetError as exc:
                self.web.node.on_submission("data", exc.code)
                raise
            self._upload = None
            self.web.node.on_submission("data", "created")
            self.reply(wl.to_dict(), 201)
            return
        if self._too_large:
            raise self._too_large_error()
        result = await self.run(Submit, {"workload": self.json_body(bytes(self._body))})
        self.reply(result["workload"], 201 if result["created"] else 200)

    def _too_large_error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the {self.web.max_json_body}-byte "
                               "limit for JSON submissions")

    async def get(self):
        self.reply(await self.run(List, self.query("status", "type", "scope")))


class WorkloadHandler(BaseHandler):
    route = "/api/workloads/{id}"

    async def get(self, workload_id: str):
        self.reply(await self.run(Get, {"id": workload_id}))

    async def delete(self, workload_id: str):
        self.reply(await self.run(Delete, {"id": workload_id}))


class WorkloadStopHandler(BaseHandler):
    route = "/api/workloads/{id}/stop"

    async def post(self, workload_id: str):
        self.reply(await self.run(Stop, {"id": workload_id}))


class WorkloadScaleHandler(BaseHandler):
    route = "/api/workloads/{id}/scale"

    async def post(self, workload_id: str):
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object: {\"replicas\": M}",
                             code="invalid_body")
        # OPS: the scale operation (and the set record's checks) imported by its first use
        self.reply(await self.run(OPS["scale"], {**body, "id": workload_id}))


class WorkloadLogsHandler(BaseHandler):
    route = "/api/workloads/{id}/logs"

    async def get(self, workload_id: str):
        result = await self.run(Logs, {"id": workload_id, **self.query("tail")})
        if self.get_query_argument("format", "json") == "text":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(result["logs"])
            return
        self.reply(result)


class ResourcesHandler(BaseHandler):
    route = "/api/resources"

    async def get(self):
        self.reply(await self.run(ResourcesOp))


class NodesHandler(BaseHandler):
    route = "/api/nodes"

    async def get(self):
        self.reply(await self.run(Nodes))


class HealthHandler(BaseHandler):
    route = "/api/health"
    public = True

    async def get(self):
        self.reply(await self.run(Health))


class BusInfoHandler(BaseHandler):
    """``GET /api/bus``: where this node's bus listens (neighbours discover it here)."""

    route = "/api/bus"
    public = True

    def get(self):
        doc = self.web.bus_endpoints()
        host = self.request.host.rsplit(":", 1)[0]
        for key in ("router", "pub"):
            for wildcard in ("0.0.0.0", "[::]", "*"):
                doc[key] = doc[key].replace(f"//{wildcard}:", f"//{host}:")
        self.reply(doc)


class MetricsHandler(BaseHandler):
    route = "/metrics"
    public = True

    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.web.metrics.render())


class OpenAPIHandler(BaseHandler):
    """``GET /api/openapi.json``: the document of this API, naming this agent as its server."""

    route = "/api/openapi.json"
    public = True

    def get(self):
        server = f"{self.request.protocol}://{self.request.host}"
        self.reply({**openapi_document(), "servers": [{"url": server}]})


class NotFoundHandler(BaseHandler):
    def prepare(self):
        super().prepare()    # with a token, an unknown path says nothing to whoever lacks it
        raise NotFound(f"no such endpoint: {self.request.path[:200]}")


class OnFirstUse(tornado.routing.Router):
    """A route whose handler is imported (and its arguments made) by the first request it gets,
    so that what only it needs costs an idle agent no memory: the events socket
    (tornado.websocket); and, asked by AgentApp rather than routed, the /svc/ router and its
    connections."""

    def __init__(self, load: Callable[[tornado.web.Application], tuple[type, dict[str, Any]]]):
        self.load = load
        self.application: tornado.web.Application | None = None
        self._target: tuple[type, dict[str, Any]] | None = None

    def target(self) -> tuple[type, dict[str, Any]]:
        """The handler class and its arguments, made on the first call."""
        if self._target is None:
            self._target = self.load(self.application)
        return self._target

    def find_handler(self, request, **target_params):
        handler, kwargs = self.target()
        return self.application.get_handler_delegate(request, handler, kwargs)


def _events_socket(web: Web) -> Callable[[tornado.web.Application], tuple[type, dict]]:
    def load(app: tornado.web.Application) -> tuple[type, dict]:
        from .events_socket import EventsSocket  # noqa: PLC0415 -- lazy: on the first /api/events
        return EventsSocket, {"web": web}
    return load


def _service_router(web: Web) -> Callable[[tornado.web.Application], tuple[type, dict]]:
    def load(app: tornado.web.Application) -> tuple[type, dict]:
        from .svc_proxy import ServiceRouter, SvcExchange  # noqa: PLC0415 -- lazy: the first /svc/
        from .svc_upstream import UpstreamPool  # noqa: PLC0415
        router = ServiceRouter(web.replicas, pool=UpstreamPool(read_timeout=web.svc_timeout))
        app.settings["svc_router"] = router
        return SvcExchange, {"router": router, "metrics": web.metrics,
                             "body_limit": web.svc_body_limit}
    return load


def openapi_document() -> dict:
    """The API's OpenAPI document, read when asked for (kept, it would hold ~0.2 MB for good)."""
    return json.loads(OPENAPI_PATH.read_text())


def make_app(web: Web) -> tornado.web.Application:
    """The agent's HTTP application; ``app.settings["svc_router"]``, once a /svc/ request made
    it, holds the connections to replicas, closed with :func:`close_app`."""
    args = {"web": web}
    events, svc = OnFirstUse(_events_socket(web)), OnFirstUse(_service_router(web))
    routes = [   # /svc/ is met before these (AgentApp)
        (r"/api/workloads/?", WorkloadsHandler, args),
        (rf"/api/workloads/{_ID}", WorkloadHandler, args),
        (rf"/api/workloads/{_ID}/stop", WorkloadStopHandler, args),
        (rf"/api/workloads/{_ID}/logs", WorkloadLogsHandler, args),
        (rf"/api/workloads/{_ID}/scale", WorkloadScaleHandler, args),
        (r"/api/resources", ResourcesHandler, args),
        (r"/api/nodes", NodesHandler, args),
        (r"/api/health", HealthHandler, args),
        (r"/api/events", events),
        (r"/metrics", MetricsHandler, args),
        (r"/api/bus", BusInfoHandler, args),
        (r"/api/openapi\.json", OpenAPIHandler, args),
        (r"/api/.*", NotFoundHandler, args),
    ]
    if UI_DIR.is_dir():
        routes.append((r"/(.*)", tornado.web.StaticFileHandler,
                       {"path": str(UI_DIR), "default_filename": "index.html"}))
    app = AgentApp(routes, websocket_ping_interval=20, log_function=_log_request, svc_route=svc)
    events.application = svc.application = app
    return app


# What one read from a client's socket takes at most, and the most a streamed body hands a
# handler at once: near twice Tornado's 64 KiB, so an upload comes in half the reads, each a
# trip through Tornado's stream and our data_received (bench_upload: ~9 % less agent CPU a
# GiB). Kept below malloc's 128 KiB mmap threshold: a read buffer that size would be mapped,
# and freeing it would raise the threshold and leave later ones on the heap, resident at idle
# (bench_footprint: +0.3 MB with 256 KiB).
READ_CHUNK = 120 * 1024


def http_server(app: tornado.web.Application, *, max_body_size: int | None = None
                ) -> tornado.httpserver.HTTPServer:
    """The HTTP server the agent runs its app on (not listening yet)."""
    return tornado.httpserver.HTTPServer(app, max_body_size=max_body_size, chunk_size=READ_CHUNK,
                                         idle_connection_timeout=120, xheaders=False)


def service_router(app: tornado.web.Application):
    """The app's /svc/ router (a ``cnet.svc_proxy.ServiceRouter``), made now if no request has."""
    return app.settings["svc_route"].target()[1]["router"]


def close_app(app: tornado.web.Application) -> None:
    router = app.settings.get("svc_router")
    if router is not None:
        router.close()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    relayed = getattr(handler, "relayed", False)   # a service's answer through /svc/
    level = logging.WARNING if status >= 500 and not relayed else logging.DEBUG
    log.log(level, "%d %s %.1fms", status, handler._request_summary(),
            1000.0 * handler.request.request_time())
