"""``/svc/<set id>/<rest>`` on the agent's HTTP port: each request forwarded to one replica of
the set (chosen by :class:`cnet.svc_router.Chooser`), retried once on another where that is
safe, the answer passed back as it came with ``X-CNET-Replica`` naming who gave it.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

import tornado.iostream
import tornado.web

from .errors import (
    BadGateway,
    BadRequest,
    CnetError,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from .http_errors import JsonErrors
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
        watch = getattr(source, "watch", None)
        self._unwatch = watch(self.changed) if callable(watch) else None

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
        self.pool.close()


@tornado.web.stream_request_body
class SvcHandler(JsonErrors):
    """One request to a set: checked here, forwarded to a replica, its answer relayed.

    No agent token: this is the services' own data plane, which answers without one on the
    services' ports too (README, "Replicas behind one endpoint")."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, router: ServiceRouter, metrics: Any, body_limit: int) -> None:
        self.router, self.metrics, self.body_limit = router, metrics, body_limit
        self._started = time.perf_counter()
        self._pieces: list[bytes] = []   # the body as it came, joined once when whole
        self._size = 0
        self._too_large = False
        self.relayed = False

    def compute_etag(self) -> None:
        return None   # the service's answer goes back as it came, never turned into a 304

    def prepare(self) -> None:
        self._set_id, self._target = split_target(self.request.uri or "")
        self._lookup()   # an unknown set is answered before its body is read
        length = self.request.headers.get("Content-Length")
        if length is not None and not length.strip().isdigit():
            raise BadRequest("Content-Length: not a number", code="invalid_header")
        if int(length or 0) > self.body_limit:
            raise self._too_large_error()
        self.request.connection.set_max_body_size(self.body_limit + (1 << 20))

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._pieces.append(chunk)
        self._size += len(chunk)
        if self._size > self.body_limit:
            # Answer now (a chunked body has no length to refuse it by up front).
            self._too_large = True
            self._pieces = []
            self._handle_request_exception(self._too_large_error())

    def _too_large_error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the {self.body_limit}-byte limit "
                               "of the /svc/ endpoint")

    async def _forward(self, *_args) -> None:
        if self._too_large:
            raise self._too_large_error()
        set_id, target, svc = self._set_id, self._target, self._lookup()
        method = self.request.method
        headers = self._upstream_headers()
        retryable = method in IDEMPOTENT or (method == "POST" and svc.retry_post)
        chooser, body = self.router.chooser, b"".join(self._pieces)
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

    get = head = post = delete = patch = put = options = _forward

    def _lookup(self) -> ServiceSet:
        source = self.router.source
        svc = source.service_set(self._set_id) if source is not None else None
        if svc is None:
            raise NotFound(f"no replica set {self._set_id!r} on this node")
        return svc

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
                self._start_reply(response, replica_id, whole=size)
                if held:
                    self.write(b"".join(held))
                self.finish()
                return
        except BaseException:
            response.close()
            raise
        self._start_reply(response, replica_id, whole=None)
        try:
            self.write(b"".join(held))
            await self.flush()
            async for piece in pieces:
                self.write(piece)
                await self.flush()
        except (UpstreamError, tornado.iostream.StreamClosedError) as exc:
            # Too late to answer otherwise: cut the connection so the client sees the break.
            response.close()
            log.info("svc: answer from %s broke off after it began: %s", replica_id, exc)
            self.detach().close()
            self.on_finish()
            return
        self.finish()

    def _upstream_headers(self) -> list[tuple[str, str]]:
        named = connection_tokens(self.request.headers.get_all())
        out, forwarded_for = [], []
        for name, value in self.request.headers.get_all():
            if any(c in name or c in value for c in "\r\n\x00"):
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

    def _start_reply(self, response: Response, replica_id: str, whole: int | None) -> None:
        head = self.request.method == "HEAD"
        self.relayed = True   # the service's own status: not logged as the agent's error
        self.set_status(response.status, _reason(response))
        for name in ("Content-Type", "Cache-Control", "Server", "Date"):
            self.clear_header(name)
        named = connection_tokens(response.headers)
        for name, value in response.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named or lower == REPLICA_HEADER.lower():
                continue
            if lower == "content-length" and whole is not None and not head:
                continue   # set below from what arrived
            try:
                self.add_header(name, value)
            except ValueError:
                log.info("svc: dropped header %r from %s: control characters", name, replica_id)
        if whole is not None and not head and response.status not in (204, 304):
            self.set_header("Content-Length", whole)
        self.set_header(REPLICA_HEADER, replica_id)

    def on_finish(self) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(self.request.method, "/svc/{id}",
                                         str(self.get_status())).observe(
                time.perf_counter() - self._started)


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
