"""The gateway's HTTP front door: each request is checked and built here before it is routed.

An absolute-form target (``GET http://host:port/bucket/key``) is served as its path. A header
section larger than S3 takes, any other target form, and a head Tornado cannot make into a
request (no or a bad ``Host``, a query it cannot parse) are answered here with an S3 XML error.
"""

from __future__ import annotations

import http
import re
from collections.abc import Awaitable

import tornado.web
from tornado import httputil

from services.gateway import s3xml
from services.gateway.errors import S3Error, new_request_id
from services.gateway.state import SERVER_NAME, Gateway

__all__ = ["MAX_HEADER_SECTION", "Front"]

MAX_HEADER_SECTION = 8 * 1024     # bytes of header lines, as S3 allows
_ABSOLUTE = re.compile(r"^https?://[^/?#]*", re.IGNORECASE)


class Front(httputil.HTTPServerConnectionDelegate):
    """What the HTTPServer is given in place of the application itself."""

    def __init__(self, app: tornado.web.Application, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Exchange(self, server_conn, request_conn)


def origin_form(target: str) -> str:
    """The request target as ``/path?query``; raise S3Error for a target S3 cannot serve."""
    if target.startswith("/"):
        return target
    match = _ABSOLUTE.match(target)
    if match is None:
        raise S3Error("InvalidRequest", "The request target must be a path or an absolute URL.")
    rest = target[match.end():]
    return rest if rest.startswith("/") else "/" + rest


def check_header_section(headers: httputil.HTTPHeaders) -> None:
    size = sum(len(name) + len(value) + 4 for name, value in headers.get_all())
    if size > MAX_HEADER_SECTION:
        raise S3Error("RequestHeaderSectionTooLarge",
                      "Your request header section exceeds the maximum allowed size.")


class _Exchange(httputil.HTTPMessageDelegate):
    """One request: routed to the application, or refused before it gets there."""

    def __init__(self, front: Front, server_conn: object,
                 request_conn: httputil.HTTPConnection):
        self.front = front
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.delegate: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        try:
            start_line = start_line._replace(path=origin_form(start_line.path))
            check_header_section(headers)
            request = httputil.HTTPServerRequest(connection=self.request_conn,
                                                 server_connection=self.server_conn,
                                                 start_line=start_line, headers=headers)
        except S3Error as exc:
            self._refuse(start_line, exc)
            return None
        except httputil.HTTPInputError as exc:
            self._refuse(start_line, S3Error("InvalidRequest", f"Malformed request: {exc}"[:200]))
            return None
        self.delegate = self.front.app.find_handler(request)
        return self.delegate.headers_received(start_line, headers)

    def _refuse(self, start_line: httputil.RequestStartLine, error: S3Error) -> None:
        request_id = new_request_id()
        resource = start_line.path.partition("?")[0]
        body = b"" if start_line.method == "HEAD" else s3xml.error_document(
            error.code, error.message, resource, request_id)
        headers = httputil.HTTPHeaders({
            "Server": SERVER_NAME, "x-amz-request-id": request_id,
            "Content-Type": "application/xml", "Content-Length": str(len(body)),
            "Connection": "close"})
        self.front.gateway.metrics.count(start_line.method, error.status)
        self.request_conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", error.status,
                                       http.HTTPStatus(error.status).phrase), headers, body)
        self.request_conn.finish()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk) if self.delegate is not None else None

    def finish(self) -> None:
        if self.delegate is not None:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()
