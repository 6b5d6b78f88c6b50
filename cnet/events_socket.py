"""``/api/events``: the WebSocket stream of every workload, resource and node change.

Imported by the first request to ``/api/events`` (``cnet.api`` routes it lazily): the stream
needs ``tornado.websocket``, which an agent nobody watches never loads.
"""

from __future__ import annotations

import json

import tornado.websocket

from .errors import HTTP_CODES, CnetError
from .http_auth import bearer
from .ops import check_token

__all__ = ["EventsSocket"]


class EventsSocket(tornado.websocket.WebSocketHandler):
    """Sends a ``hello`` (this node, its resources), then each event of the node's hub as JSON."""

    def initialize(self, web) -> None:
        self.web = web       # cnet.api.Web
        self._unsubscribe = None

    def prepare(self):
        try:
            check_token(self.web.token, bearer(self.request) or self.get_query_argument("token", ""))
        except CnetError as exc:
            self._json_error(exc.status, exc.to_dict())

    async def get(self, *args, **kwargs):
        headers = self.request.headers
        connection = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            self._json_error(400, {"code": "bad_request", "message": "this is a WebSocket "
                                   "stream: connect with Upgrade: websocket"})
            return
        await super().get(*args, **kwargs)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self._json_error(status_code, {"code": HTTP_CODES.get(status_code, "http_error"),
                                       "message": message})

    def _json_error(self, status: int, error: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": error}))

    def check_origin(self, origin: str) -> bool:
        return True  # the token, not the origin, guards the stream

    def open(self):
        node = self.web.node
        self.write_message(json.dumps({"type": "hello", "node_id": node.node_id,
                                       "resources": node.register.resources()}))
        self._unsubscribe = self.web.hub.subscribe(self._send)

    def _send(self, event: dict) -> None:
        try:
            shown = {k: v for k, v in event.items() if not k.startswith("_")}
            self.write_message(json.dumps(shown, separators=(",", ":")))
        except tornado.websocket.WebSocketClosedError:
            self.on_close()

    def on_message(self, message):
        pass  # the stream is one-way; pings are handled by Tornado

    def on_close(self):
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
