"""How the agent's HTTP handlers answer an error: ``{"error": {"code", "message"}}`` as JSON,
for a CnetError, Tornado's own errors (405, a bad body) and anything unexpected alike."""

from __future__ import annotations

import json

import tornado.web

from .errors import CnetError

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         413: "payload_too_large", 415: "unsupported_media_type", 500: "internal"}


class JsonErrors(tornado.web.RequestHandler):
    """A handler base whose answers are JSON unless it says otherwise, errors included."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, CnetError):
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CnetError):
            body = exc.to_dict()
        elif isinstance(exc, tornado.web.HTTPError):
            body = {"code": CODES.get(status_code, "http_error"),
                    "message": exc.log_message or self._reason}
        else:
            body = {"code": "internal", "message": "internal error; see the agent log"}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": body}))
