"""The read-only S3 API, path-style, at the root and under ``/s3`` (the same handler for both).

``/`` is ListBuckets (one bucket); ``/<bucket>`` ListObjects v2 (``list-type=2``) or v1,
HeadBucket, GetBucketLocation and GetBucketAcl; ``/<bucket>/<key>`` GetObject, HeadObject and
GetObjectAcl. ``OPTIONS`` is answered as S3 answers a bucket without CORS configuration. Every
other request is an S3 XML error; writes are refused with MethodNotAllowed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import tornado.iostream
import tornado.web

from services.gateway import s3xml
from services.gateway.errors import S3Error, new_request_id
from services.gateway.index import ObjectInfo
from services.gateway.paths import (
    MAX_KEY_BYTES,
    mount_of,
    open_object,
    resolve_object,
    split_request_path,
)
from services.gateway.preconditions import (
    RangeNotSatisfiable,
    evaluate_conditions,
    http_date,
    parse_range,
    range_applies,
)
from services.gateway.sigv4 import SignatureError, verify_request
from services.gateway.state import SERVER_NAME

if TYPE_CHECKING:
    from services.gateway.state import Gateway

__all__ = ["S3Handler"]

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20
MAX_KEYS = 1000
MAX_KEYS_LIMIT = 2**31 - 1       # S3 refuses a max-keys beyond a signed 32-bit integer
READ_METHODS = ("GET", "HEAD")

# Subresources S3 has but a read-only gateway over plain files does not.
UNSUPPORTED_BUCKET_QUERIES = frozenset({
    "accelerate", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
    "lifecycle", "logging", "metrics", "notification", "object-lock", "ownershipControls",
    "policy", "policyStatus", "publicAccessBlock", "replication", "requestPayment", "tagging",
    "uploads", "versioning", "versions", "website"})
UNSUPPORTED_OBJECT_QUERIES = frozenset({
    "attributes", "legal-hold", "restore", "retention", "select", "tagging", "torrent",
    "uploadId"})
RESPONSE_OVERRIDES = {
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
    "response-content-language": "Content-Language",
    "response-content-type": "Content-Type",
    "response-expires": "Expires",
}
# Characters an XML 1.0 document cannot hold, even as references (controls but tab, LF, CR).
XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A response-* override becomes a header: Latin-1 text without control characters (tab aside).
HEADER_VALUE = re.compile("[\t\x20-\x7e\x80-\xff]*")
ECHOED_LISTING_PARAMS = ("prefix", "delimiter", "marker", "start-after")
CODE_BY_STATUS = {400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey",
                  405: "MethodNotAllowed", 416: "InvalidRange"}


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        key = None
    if key is None or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect.")
    return key


def _max_keys(value: str | None) -> int:
    """``max-keys``: 0..2^31-1 as S3 takes it (a 400 outside), at most 1000 keys a page."""
    if value is None:
        return MAX_KEYS
    number = int(value) if value.isascii() and value.isdigit() else -1
    if not 0 <= number <= MAX_KEYS_LIMIT:
        raise S3Error("InvalidArgument",
                      f"max-keys must be an integer between 0 and {MAX_KEYS_LIMIT}.")
    return min(number, MAX_KEYS)


@tornado.web.stream_request_body
class S3Handler(tornado.web.RequestHandler):
    """One S3 request. Errors raised as S3Error become XML error documents in write_error.

    Bodies are streamed, not buffered, so a write of any size is refused from its headers
    (MethodNotAllowed) without reading what it uploads; GET and HEAD bodies are discarded.
    """

    def initialize(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    def prepare(self) -> None:
        if self.request.method not in (*READ_METHODS, "OPTIONS"):
            self._refuse_write()

    def data_received(self, chunk: bytes) -> None:
        """Request bodies carry nothing a read-only gateway needs."""

    def set_default_headers(self) -> None:
        # Called again by clear() before an error is written; the request keeps one id.
        if not getattr(self, "request_id", None):
            self.request_id = new_request_id()
        self.set_header("Server", SERVER_NAME)
        self.set_header("x-amz-request-id", self.request_id)

    def compute_etag(self) -> str | None:
        return None                     # ETags are the objects' MD5s, set explicitly

    # -- methods -----------------------------------------------------------------------------

    async def get(self) -> None:
        await self._serve(head=False)

    async def head(self) -> None:
        await self._serve(head=True)

    def options(self) -> None:
        """A CORS preflight, as S3 answers it for a bucket with no CORS configuration."""
        headers = self.request.headers
        if not headers.get("Origin"):
            raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
        method = headers.get("Access-Control-Request-Method")
        if not method:
            raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null")
        raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.")

    def _refuse_write(self) -> None:
        raise S3Error("MethodNotAllowed", "This gateway is read-only; writes are not allowed.",
                      headers={"Allow": "GET, HEAD"})

    # -- errors ------------------------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, S3Error):
            code, message, extra = exc.code, exc.message, exc.headers
            self.set_status(exc.status)
        elif isinstance(exc, tornado.web.HTTPError):
            code = CODE_BY_STATUS.get(status_code, "InternalError")
            message, extra = exc.log_message or self._reason, {}
        else:
            code, message, extra = "InternalError", "We encountered an internal error.", {}
            self.set_status(500)
        for name, value in extra.items():
            self.set_header(name, value)
        if self.request.method == "HEAD":
            return
        self.set_header("Content-Type", "application/xml")
        self.finish(s3xml.error_document(code, message, self.request.path, self.request_id))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, S3Error):
            log.debug("%s %s -> %s %s", self.request.method, self.request.uri, value.code,
                      value.message)
            return
        super().log_exception(typ, value, tb)

    # -- dispatch ----------------------------------------------------------------------------

    async def _serve(self, *, head: bool) -> None:
        target = split_request_path(self.request.path, mount_of(self.request.path))
        query = self._query()
        self._authenticate(query)
        if target.bucket is None:
            self._list_buckets(head)
        elif target.bucket != self.gateway.bucket:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist.")
        elif target.key is None:
            await self._bucket(dict(query), head)
        else:
            await self._object(target.key, dict(query), head)

    def _query(self) -> list[tuple[str, str]]:
        try:
            return parse_qsl(self.request.query, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise S3Error("InvalidArgument", "The query string is not valid UTF-8.") from None

    def _authenticate(self, query: list[tuple[str, str]]) -> None:
        creds = self.gateway.credentials
        if creds is None:
            return
        headers: dict[str, list[str]] = {}
        for name, value in self.request.headers.get_all():
            headers.setdefault(name.lower(), []).append(value)
        try:
            verify_request(creds, method=self.request.method or "GET",
                           raw_path=self.request.path, query=query, headers=headers)
        except SignatureError as exc:
            raise S3Error("AccessDenied", str(exc)) from None

    def _send_xml(self, body: bytes, head: bool) -> None:
        self.set_header("Content-Type", "application/xml")
        if head:
            self.set_header("Content-Length", str(len(body)))
        else:
            self.write(body)

    # -- service and bucket ------------------------------------------------------------------

    def _list_buckets(self, head: bool) -> None:
        gw = self.gateway
        self._send_xml(s3xml.list_buckets_document(gw.bucket, self._bucket_created(), gw.owner),
                       head)

    def _send_acl(self, head: bool) -> None:
        gw = self.gateway
        self._send_xml(s3xml.acl_document(gw.owner, public=gw.credentials is None), head)

    def _bucket_created(self) -> float:
        try:
            return os.stat(self.gateway.base_real).st_ctime
        except OSError:
            return self.gateway.started

    async def _bucket(self, params: dict[str, str], head: bool) -> None:
        self.set_header("x-amz-bucket-region", self.gateway.region)
        if "acl" in params:
            self._send_acl(head)
            return
        if head:
            return
        if "location" in params:
            self._send_xml(s3xml.location_document(self.gateway.region), head)
            return
        unsupported = UNSUPPORTED_BUCKET_QUERIES.intersection(params)
        if unsupported:
            raise S3Error("NotImplemented", f"?{min(unsupported)} is not supported by this gateway.")
        list_type = params.get("list-type")
        if list_type not in (None, "2"):
            raise S3Error("InvalidArgument", "list-type must be 2 (or absent for ListObjects v1).")
        max_keys = _max_keys(params.get("max-keys"))
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter") or None
        encoding_type = params.get("encoding-type") or None
        if encoding_type not in (None, "url"):
            raise S3Error("InvalidArgument", "encoding-type must be url.")
        if encoding_type is None:
            # The answer echoes these; one XML cannot carry would make it unparseable.
            for name in ECHOED_LISTING_PARAMS:
                if XML_INVALID.search(params.get(name, "")):
                    raise S3Error("InvalidArgument", f"{name} holds a character XML 1.0 cannot "
                                  "carry; use encoding-type=url.")
        index = self.gateway.index
        if list_type == "2":
            token = params.get("continuation-token")
            start_after = params.get("start-after")
            after = _decode_token(token) if token is not None else start_after
            page = await index.list_page(prefix=prefix, delimiter=delimiter, after=after or None,
                                         max_keys=max_keys)
            next_token = _encode_token(page.next_marker) if page.next_marker is not None else None
            body = s3xml.list_objects_v2_document(
                page, bucket=self.gateway.bucket, prefix=prefix, delimiter=delimiter,
                max_keys=max_keys, encoding_type=encoding_type, start_after=start_after,
                continuation_token=token, next_continuation_token=next_token,
                owner=self.gateway.owner if params.get("fetch-owner") == "true" else None)
        else:
            marker = params.get("marker", "")
            page = await index.list_page(prefix=prefix, delimiter=delimiter, after=marker or None,
                                         max_keys=max_keys)
            body = s3xml.list_objects_v1_document(
                page, bucket=self.gateway.bucket, prefix=prefix, delimiter=delimiter,
                max_keys=max_keys, encoding_type=encoding_type, marker=marker,
                owner=self.gateway.owner)
        self._send_xml(body, head)

    # -- objects -----------------------------------------------------------------------------

    async def _object(self, key: str, params: dict[str, str], head: bool) -> None:
        unsupported = UNSUPPORTED_OBJECT_QUERIES.intersection(params)
        if unsupported:
            raise S3Error("NotImplemented", f"?{min(unsupported)} is not supported by this gateway.")
        real = resolve_object(self.gateway.base_real, key)
        opened = open_object(real) if real is not None else None
        if opened is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.")
        fd, file_stat = opened
        try:
            info = await self.gateway.index.lookup(key, file_stat)
            if info is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.")
            if "acl" in params:
                self._send_acl(head)
                return
            await self._send_object(fd, info, params, head)
        finally:
            os.close(fd)

    async def _send_object(self, fd: int, info: ObjectInfo, params: dict[str, str],
                           head: bool) -> None:
        headers = self.request.headers
        self.set_header("ETag", f'"{info.etag}"')
        self.set_header("Last-Modified", http_date(info.last_modified))
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Type", info.content_type)
        for param, header in RESPONSE_OVERRIDES.items():
            if param in params:
                if not HEADER_VALUE.fullmatch(params[param]):
                    raise S3Error("InvalidArgument", f"{param} is not a valid header value.")
                self.set_header(header, params[param])
        outcome = evaluate_conditions(headers, info.etag, info.last_modified)
        if outcome == 304:
            self.set_status(304)
            return
        if outcome == 412:
            raise S3Error("PreconditionFailed",
                          "At least one of the pre-conditions you specified did not hold.")
        byte_range = None
        if range_applies(headers, info.etag, info.last_modified):
            try:
                byte_range = parse_range(headers.get("Range"), info.size)
            except RangeNotSatisfiable:
                raise S3Error("InvalidRange", "The requested range is not satisfiable.",
                              headers={"Content-Range": f"bytes */{info.size}"}) from None
        if byte_range is not None:
            self.set_status(206)
            self.set_header("Content-Range",
                            f"bytes {byte_range.start}-{byte_range.end}/{info.size}")
            start, length = byte_range.start, byte_range.length
        else:
            start, length = 0, info.size
            if info.sha256 and headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                self.set_header("x-amz-checksum-sha256",
                                base64.b64encode(bytes.fromhex(info.sha256)).decode("ascii"))
                self.set_header("x-amz-checksum-type", "FULL_OBJECT")
        self.set_header("Content-Length", str(length))
        if not head:
            await self._stream(fd, start, length)

    async def _stream(self, fd: int, start: int, length: int) -> None:
        """Send ``length`` bytes from ``start``, one chunk in memory at a time."""
        offset, end = start, start + length
        while offset < end:
            chunk = os.pread(fd, min(STREAM_CHUNK, end - offset), offset)
            if not chunk:
                log.warning("%s shrank while being sent; closing the connection", self.request.path)
                self.request.connection.close()
                return
            self.write(chunk)
            offset += len(chunk)
            self.gateway.metrics.bytes_sent += len(chunk)
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                log.debug("client went away during %s", self.request.path)
                return
