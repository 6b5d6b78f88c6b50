"""The gateway's HTTP/1 server: a request Tornado cannot parse (a malformed request line, a
header with a control character such as NUL, a bad Content-Length or chunk) gets an S3 XML 400,
not a bare one; the body of a request already answered (a refused write) is never read.

It leans on Tornado's HTTP/1 internals (the request loop, ``_parse_headers``, ``_read_body``
and ``_read_message``); tests/services/test_gateway_hostile.py holds it to its answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import tornado.httpserver
from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection

from services.gateway import s3xml
from services.gateway.errors import new_request_id
from services.gateway.state import SERVER_NAME

__all__ = ["GatewayServer"]

log = logging.getLogger(__name__)


class _Unparseable(Exception):
    """The head is not HTTP/1 that Tornado accepts; the message says why."""


class GatewayServer(tornado.httpserver.HTTPServer):
    """An HTTPServer whose connections answer unparseable heads with S3 XML errors."""

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = tornado.httpserver._HTTPRequestContext(stream, address, self.protocol,
                                                         self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)


class _ServerConnection(HTTP1ServerConnection):
    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        # Tornado's loop, with _Connection for HTTP1Connection.
        try:
            while True:
                conn = _Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError,
                        asyncio.CancelledError):
                    return
                except Exception:
                    log.error("uncaught exception while serving a connection", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class _Connection(HTTP1Connection):
    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        try:
            start_line, headers = super()._parse_headers(data)
            httputil.parse_request_start_line(start_line)
        except httputil.HTTPInputError as exc:
            raise _Unparseable(str(exc)) from None
        return start_line, headers

    def _read_body(self, code: int, headers: httputil.HTTPHeaders,
                   delegate: httputil.HTTPMessageDelegate) -> Awaitable[None] | None:
        if self._write_finished:
            return None            # answered already; the connection closes unread
        try:
            body = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as exc:
            raise _Unparseable(str(exc)) from None
        return None if body is None else self._checked(body)

    @staticmethod
    async def _checked(body: Awaitable[None]) -> None:
        try:
            await body
        except httputil.HTTPInputError as exc:
            raise _Unparseable(str(exc)) from None

    async def _read_message(self, delegate: httputil.HTTPMessageDelegate) -> bool:
        try:
            return await super()._read_message(delegate)
        except _Unparseable as exc:
            log.info("unparseable request from %s: %s", self.context, exc)
            if self._response_start_line is None and not self.stream.closed():
                await self._answer_unparseable(str(exc))
            self.close()
            return False

    async def _answer_unparseable(self, why: str) -> None:
        request_id = new_request_id()
        body = s3xml.error_document("InvalidRequest", f"Malformed HTTP request: {why}"[:200],
                                    "", request_id)
        head = (f"HTTP/1.1 400 Bad Request\r\nServer: {SERVER_NAME}\r\n"
                f"x-amz-request-id: {request_id}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            await self.stream.write(head.encode("latin-1") + body)
        except iostream.StreamClosedError:
            pass
