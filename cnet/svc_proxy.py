"""``/svc/<set id>/<rest>`` on the agent's HTTP port: each request forwarded to one replica of
the set (chosen by :class:`cnet.svc_router.Chooser`), retried once on another where that is
safe, the answer passed back as it came with ``X-CNET-Replica`` naming who gave it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import unquote

import tornado.httputil
import tornado.iostream

from .errors import (
    BadGateway,
    BadRequest,
    CnetError,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from .svc_router import Chooser, ReplicaSource, ServiceSet
from .svc_upstream import (
    Aborted,
    Attempt,
    ConnectFailed,
    Response,
    TimedOut,
    UpstreamError,
    UpstreamPool,
    connection_tokens,
)
from .workload import ID_RE

log = logging.getLogger(__name__)

IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
# Never forwarded either way (RFC 9110 7.6.1), beside those a Connection header names.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
# Request headers the router sets itself.
OWN_REQUEST = {"host", "content-length", "expect", "x-forwarded-proto", "x-forwarded-host"}
COMMIT_AFTER = 256 * 1024   # response bytes held back (so a break before them can be retried)
REPLICA_HEADER = "X-CNET-Replica"
SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")
BREAKS = re.compile(r"[\r\n\x00]")   # never in a header passed on
CONTROL = re.compile(r"[\x00-\x1f]")   # never in a header passed back (as Tornado's handlers)


class ServiceRouter:
    """The router one agent runs for all its sets: the choice, its counts and the connections.

    A source with a ``watch`` hook tells it when a set's members may have changed; the
    requests then in flight to a replica no longer usable are cut short (and retried where
    that is safe) rather than left to wait for an answer from a node that is gone."""

    def __init__(self, source: ReplicaSource | None, *, chooser: Chooser | None = None,
                 pool: UpstreamPool | None = None) -> None:
        self.source = source
        self.chooser = chooser or Chooser()
        self.pool = pool or UpstreamPool()
        self._flights: dict[str, dict[str, set[Attempt]]] = {}   # set -> replica -> requests
        self._answers: set[asyncio.Task] = set()   # requests whose answer is being made
        watch = getattr(source, "watch", None)
        self._unwatch = watch(self.changed) if callable(watch) else None

    def spawn(self, answer: Coroutine[Any, Any, None]) -> None:
        """Make an answer in the background (held here until done: the loop keeps only a weak
        reference to a task)."""
        task = asyncio.get_running_loop().create_task(answer)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    def begin(self, set_id: str, replica_id: str) -> Attempt:
        attempt = Attempt()
        self._flights.setdefault(set_id, {}).setdefault(replica_id, set()).add(attempt)
        return attempt

    def end(self, set_id: str, replica_id: str, attempt: Attempt) -> None:
        replicas = self._flights.get(set_id, {})
        attempts = replicas.get(replica_id, set())
        attempts.discard(attempt)
        if not attempts:
            replicas.pop(replica_id, None)
            if not replicas:
                self._flights.pop(set_id, None)

    def changed(self, set_id: str) -> None:
        """The source's word that a member of ``set_id`` may have become unusable: cut the
        requests in flight to each one that is (nothing to do, and nothing asked, when idle).
        One that only failed a health check is still usable: its requests go on."""
        flights = self._flights.get(set_id)
        if not flights or self.source is None:
            return
        svc = self.source.service_set(set_id)
        usable = {r.id for r in svc.replicas if r.usable} if svc is not None else set()
        for replica_id, attempts in list(flights.items()):
            if replica_id not in usable:
                log.info("svc %s: replica %s no longer usable: %d requests to it cut short",
                         set_id, replica_id, len(attempts))
                for attempt in list(attempts):
                    attempt.abort()

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        for task in list(self._answers):
            task.cancel()
        self.pool.close()


class SvcExchange(tornado.httputil.HTTPMessageDelegate):
    """One request to a set, met on the connection itself: checked, forwarded to a replica,
    its answer relayed.

    A message delegate under Tornado's HTTP/1 connection, not a RequestHandler: the data
    plane needs none of the web layer (routes, default headers, cookies, transforms), and
    skipping it takes ~0.2 ms off each request (bench_replicas). Tornado still reads and frames
    every message (heads, chunked bodies, 100-continue, keep-alive).

    No agent token: this is the services' own data plane, which answers without one on the
    services' ports too (README, "Replicas behind one endpoint")."""

    def __init__(self, connection: tornado.httputil.HTTPConnection, router: ServiceRouter,
                 metrics: Any, body_limit: int) -> None:
        self.connection, self.router = connection, router
        self.metrics, self.body_limit = metrics, body_limit
        self._started = time.perf_counter()
        self._pieces: list[bytes] = []   # the body as it came, joined once when whole
        self._size = 0
        self._status = 0                 # what went to the client; 0: nothing yet
        self._relayed = False            # the service's own status, not the agent's

    # -- the connection's calls ------------------------------------------------------------

    def headers_received(self, start_line, headers) -> None:
        self.request = tornado.httputil.HTTPServerRequest(
            connection=self.connection, start_line=start_line, headers=headers)
        self._head = start_line.method == "HEAD"
        try:
            if start_line.method not in SUPPORTED_METHODS:
                raise CnetError(f"method {start_line.method[:20]!r} is not allowed under /svc/",
                                code="method_not_allowed", status=405)
            self._set_id, self._target = split_target(start_line.path)
            self._lookup()   # an unknown set is answered before its body is read
            length = headers.get("Content-Length")
            if length is not None and not length.strip().isdigit():
                raise BadRequest("Content-Length: not a number", code="invalid_header")
            if int(length or 0) > self.body_limit:
                raise self._too_large_error()
        except CnetError as exc:
            self._fail(exc)
            return
        self.connection.set_max_body_size(self.body_limit + (1 << 20))

    def data_received(self, chunk: bytes) -> None:
        if self._status:
            return   # answered already (the rest of the body is not wanted)
        self._pieces.append(chunk)
        self._size += len(chunk)
        if self._size > self.body_limit:
            # Answer now (a chunked body has no length to refuse it by up front).
            self._pieces = []
            self._fail(self._too_large_error())

    def finish(self) -> None:
        if not self._status:
            self.router.spawn(self._answer())

    def on_connection_close(self) -> None:
        self._pieces = []   # the client left before its request was whole: nothing forwarded

    # -- the answer ------------------------------------------------------------------------

    async def _answer(self) -> None:
        try:
            await self._forward()
        except CnetError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self.connection.close()   # the agent is stopping
            raise
        except Exception:
            log.exception("svc: %s failed", self._summary())
            self._fail(CnetError("internal error; see the agent log"))

    async def _forward(self) -> None:
        set_id, target, svc = self._set_id, self._target, self._lookup()
        method = self.request.method
        headers = self._upstream_headers()
        retryable = method in IDEMPOTENT or (method == "POST" and svc.retry_post)
        chooser, body = self.router.chooser, b"".join(self._pieces)
        self._pieces = []
        tried: list[str] = []
        failure: UpstreamError | None = None
        while True:
            replica = chooser.pick(svc.replicas, exclude=tried)
            if replica is None:
                if failure is None:
                    raise Unavailable(f"no usable replica in set {set_id!r}", code="no_replica")
                raise _gateway_error(failure, tried)
            tried.append(replica.id)
            chooser.started(replica.id)
            attempt = self.router.begin(set_id, replica.id)
            try:
                await self._relay(replica.id, replica.endpoint, method, target, headers, body,
                                  retryable, attempt)
                return
            except UpstreamError as exc:
                chooser.unreachable(replica.id)
                log.info("svc %s: replica %s (%s) failed: %s", set_id, replica.id,
                         replica.endpoint, exc)
                failure = exc
                if len(tried) > 1 or (exc.sent and not retryable):
                    raise _gateway_error(exc, tried) from None
            finally:
                self.router.end(set_id, replica.id, attempt)
                chooser.finished(replica.id)

    def _lookup(self) -> ServiceSet:
        source = self.router.source
        svc = source.service_set(self._set_id) if source is not None else None
        if svc is None:
            raise NotFound(f"no replica set {self._set_id!r} on this node")
        return svc

    def _too_large_error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the {self.body_limit}-byte limit "
                               "of the /svc/ endpoint")

    async def _relay(self, replica_id: str, endpoint: str, method: str, target: str,
                     headers: list[tuple[str, str]], body: bytes, retryable: bool,
                     attempt: Attempt) -> None:
        """One attempt. Raises UpstreamError only while nothing has gone to the client."""
        pool = self.router.pool
        response = await pool.request(endpoint, method, target, headers, body,
                                      retry_stale=retryable, attempt=attempt)
        self.router.chooser.reached(replica_id)
        pieces = response.chunks()
        held, size = [], 0
        try:
            async for piece in pieces:
                held.append(piece)
                size += len(piece)
                if size >= COMMIT_AFTER:
                    break
            else:
                self._reply(response, replica_id, b"".join(held), whole=True)
                self._done()
                return
        except BaseException:
            response.close()
            raise
        try:
            await self._reply(response, replica_id, b"".join(held), whole=False)
            async for piece in pieces:
                await self.connection.write(piece)
        except (UpstreamError, tornado.iostream.StreamClosedError) as exc:
            # Too late to answer otherwise: cut the connection so the client sees the break.
            response.close()
            log.info("svc: answer from %s broke off after it began: %s", replica_id, exc)
            self.connection.close()
            self._done()
            return
        self.connection.finish()
        self._done()

    def _reply(self, response: Response, replica_id: str, chunk: bytes, *, whole: bool):
        """The service's status, headers and first bytes to the client (all of the answer
        when ``whole``, then finished); the write's future."""
        self._status, self._relayed = response.status, True
        headers = self._reply_headers(response, replica_id, len(chunk) if whole else None)
        line = tornado.httputil.ResponseStartLine("HTTP/1.1", response.status, _reason(response))
        written = self.connection.write_headers(line, headers, None if self._head else chunk)
        if whole:
            self.connection.finish()
        return written

    def _reply_headers(self, response: Response, replica_id: str,
                       whole: int | None) -> tornado.httputil.HTTPHeaders:
        out = tornado.httputil.HTTPHeaders()
        named = connection_tokens(response.headers)
        for name, value in response.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named or lower == REPLICA_HEADER.lower():
                continue
            if lower == "content-length" and whole is not None and not self._head:
                continue   # set below from what arrived
            if CONTROL.search(name) or CONTROL.search(value):
                log.info("svc: dropped header %r from %s: control characters", name, replica_id)
                continue
            out.add(name, value)
        if whole is not None and not self._head and response.status not in (204, 304):
            out["Content-Length"] = str(whole)
        out[REPLICA_HEADER] = replica_id
        return out

    def _upstream_headers(self) -> list[tuple[str, str]]:
        named = connection_tokens(self.request.headers.get_all())
        out, forwarded_for = [], []
        for name, value in self.request.headers.get_all():
            if BREAKS.search(name) or BREAKS.search(value):
                raise BadRequest(f"header {name[:60]!r}: control characters", code="invalid_header")
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named or lower in OWN_REQUEST:
                continue
            if lower == "x-forwarded-for":
                forwarded_for.append(value)
                continue
            out.append((name, value))
        forwarded_for.append(self.request.remote_ip or "unknown")
        out += [("X-Forwarded-For", ", ".join(forwarded_for)),
                ("X-Forwarded-Proto", self.request.protocol),
                ("X-Forwarded-Host", self.request.host)]
        return out

    def _fail(self, exc: CnetError) -> None:
        """The agent's own answer: ``{"error": {"code", "message"}}``; if the service's answer
        has begun already, only the cut connection tells the client."""
        if self._status:
            self.connection.close()
        else:
            self._status, self._relayed = exc.status, False
            body = json.dumps({"error": exc.to_dict()}).encode()
            headers = tornado.httputil.HTTPHeaders({
                "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store",
                "Content-Length": str(len(body))})
            if exc.status == 405:
                headers["Allow"] = ", ".join(SUPPORTED_METHODS)
            line = tornado.httputil.ResponseStartLine(
                "HTTP/1.1", exc.status, tornado.httputil.responses.get(exc.status, "Unknown"))
            self.connection.write_headers(line, headers, None if self._head else body)
            self.connection.finish()
        self._done()

    def _done(self) -> None:
        """Counted and logged once the answer has gone (or broken off)."""
        elapsed = time.perf_counter() - self._started
        status = self._status or 500
        if self.metrics is not None:
            self.metrics.observe_request(self.request.method, "/svc/{id}", status, elapsed)
        level = logging.WARNING if status >= 500 and not self._relayed else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%d %s %.1fms", status, self._summary(), 1000.0 * elapsed)

    def _summary(self) -> str:
        return f"{self.request.method} {self.request.uri} ({self.request.remote_ip})"


def split_target(uri: str) -> tuple[str, str]:
    """(set id, target to send the replica) of ``/svc/<id>/<rest>[?query]``; NotFound or
    BadRequest for a path that names no set or would step outside it."""
    path, sep, query = uri.partition("?")
    _, _, after = path.partition("/svc/")
    set_id, slash, rest = after.partition("/")
    if not path.startswith("/svc/") or not ID_RE.match(unquote(set_id)) or "%" in set_id:
        raise NotFound(f"no such replica set: {path[:200]!r}")
    for segment in rest.split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or "\\" in decoded or "\x00" in decoded:
            raise BadRequest(f"path segment {segment[:60]!r} is not allowed under /svc/",
                             code="bad_path")
    if any(c <= " " or c == "\x7f" for c in uri):
        raise BadRequest("the request target holds control characters or spaces",
                         code="bad_path")
    return set_id, "/" + rest + (sep + query if sep else "")


def _gateway_error(exc: UpstreamError, tried: list[str]) -> CnetError:
    details = {"replicas_tried": list(tried)}
    if isinstance(exc, TimedOut):
        return GatewayTimeout(f"the replica did not answer in time: {exc}", details=details)
    if isinstance(exc, Aborted):
        return BadGateway("the replica became unusable (its node lost, or it stopped) while "
                          "answering", details=details)
    if isinstance(exc, ConnectFailed):
        return Unavailable(f"no replica could be reached: {exc}", code="no_replica",
                           details=details)
    return BadGateway(f"the replica broke off its answer: {exc}", details=details)


def _reason(response: Response) -> str:
    reason = "".join(c for c in response.reason if " " <= c <= "~")
    return reason or "Unknown"
