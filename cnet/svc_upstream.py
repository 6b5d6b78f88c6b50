"""A small HTTP/1.1 client with kept-alive connections, for the router's requests to replicas.

Tornado's own client opens (and closes) a connection per request, which costs more than the
router's whole budget; this one keeps a bounded pool of idle connections per endpoint and
reads Content-Length, chunked and until-close bodies. It speaks only what the router needs:
``http://`` endpoints, a body sent whole, a response read as a stream of chunks.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024       # status line and headers of one response
ONE_WRITE = 1 << 20        # a request body up to this is sent in one write with its head
NO_BODY = {204, 304}
_LONE_BREAK = re.compile(r"\r(?!\n)|(?<!\r)\n")


class UpstreamError(Exception):
    """The replica did not give a whole answer; ``sent``: the request may have reached it."""

    sent = True


class ConnectFailed(UpstreamError):
    """No connection (refused, unreachable, no answer to the connect): nothing was sent."""

    sent = False


class Broken(UpstreamError):
    """The connection was reset or closed before the whole response, or it was malformed;
    ``nothing_read``: not one byte of an answer came (a kept-alive connection the replica had
    closed looks so)."""

    def __init__(self, message: str, *, nothing_read: bool = False) -> None:
        super().__init__(message)
        self.nothing_read = nothing_read


class TimedOut(UpstreamError):
    """No (more of the) response within the time allowed."""


class Aborted(UpstreamError):
    """The caller cut the request short (:meth:`Attempt.abort`: its replica became unusable)."""


class Attempt:
    """One request's hold on the connection it uses, so that it can be cut short from outside
    (the router, when the replica's node is lost): :meth:`abort` drops the connection at once,
    without waiting for the peer, and the request raises :class:`Aborted`. A connect already
    under way is not interrupted; it raises Aborted once it completes or fails."""

    __slots__ = ("aborted", "_conn")

    def __init__(self) -> None:
        self.aborted = False
        self._conn: _Conn | None = None

    def abort(self) -> None:
        self.aborted = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.writer.transport.abort()   # no FIN, no wait for unsent data: the peer is gone

    def _hold(self, conn: _Conn | None) -> None:
        if conn is not None and self.aborted:
            conn.writer.transport.abort()
            raise Aborted("the request was cut short")
        self._conn = conn

    def _check(self, exc: UpstreamError | None = None) -> None:
        if self.aborted:
            raise Aborted(f"the request was cut short{f' ({exc})' if exc else ''}") from None


@functools.lru_cache(maxsize=1024)   # the same few endpoints, asked once a request
def endpoint_address(endpoint: str) -> tuple[str, int]:
    """(host, port) of an ``http://host:port`` endpoint; ValueError for anything else."""
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// endpoint: {endpoint!r}")
    return parts.hostname, parts.port or 80


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def stale(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Response:
    """Status and headers of an answer; its body is read with :meth:`chunks` (once)."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Conn, status: int,
                 reason: str, headers: list[tuple[str, str]], framing: str, length: int,
                 keep: bool, attempt: Attempt) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self._pool, self._key, self._conn = pool, key, conn
        self._framing, self._length, self._keep = framing, length, keep
        self._attempt = attempt

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece; Broken or TimedOut if it does not arrive whole. The time
        limit applies to each read, not to the time the caller takes between pieces."""
        try:
            if self._framing == "length":
                left = self._length
                while left:
                    piece = await self._read(self._conn.reader.read(min(left, CHUNK)))
                    if not piece:
                        raise Broken(f"the response ended {left} bytes short")
                    left -= len(piece)
                    yield piece
            elif self._framing == "chunked":
                async for piece in _dechunk(self._conn.reader, self._read):
                    yield piece
            elif self._framing == "close":
                while piece := await self._read(self._conn.reader.read(CHUNK)):
                    yield piece
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            self._attempt._check()
            raise Broken(f"the response broke off: {exc or type(exc).__name__}") from None
        except UpstreamError as exc:
            self.close()
            self._attempt._check(exc)
            raise
        except BaseException:
            self.close()
            raise
        self._attempt._check()   # an until-close body cut short looks ended
        self._release()

    async def _read(self, reading):
        try:
            async with asyncio.timeout(self._pool.read_timeout):
                return await reading
        except TimeoutError:
            raise TimedOut(f"no more of the response within {self._pool.read_timeout:g} s") from None

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        self._attempt._hold(None)
        if conn is not None:
            if self._keep:
                self._pool._put(self._key, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Give up on the rest of the body (the connection is closed, not reused)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


async def _dechunk(reader: asyncio.StreamReader, timed) -> AsyncIterator[bytes]:
    while True:
        line = await timed(reader.readuntil(b"\r\n"))
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)   # ValueError: malformed
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            while await timed(reader.readuntil(b"\r\n")) != b"\r\n":
                pass   # trailers: dropped
            return
        left = size
        while left:
            piece = await timed(reader.read(min(left, CHUNK)))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            yield piece
        if await timed(reader.readexactly(2)) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")


class UpstreamPool:
    """Kept-alive connections per endpoint (at most ``max_idle`` idle each, closed after
    ``idle_timeout`` s unused)."""

    def __init__(self, *, max_idle: int = 32, idle_timeout: float = 30.0,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0) -> None:
        self.max_idle, self.idle_timeout = max_idle, idle_timeout
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._swept = time.monotonic()

    async def request(self, endpoint: str, method: str, target: str,
                      headers: list[tuple[str, str]], body: bytes, *,
                      retry_stale: bool, attempt: Attempt | None = None) -> Response:
        """Send one request and read the answer's head. ``headers`` must already be safe to
        write (no CR, LF or NUL). A kept-alive connection that turns out closed before any
        byte of the answer is replaced by a fresh one when ``retry_stale`` (the request is
        safe to send twice); otherwise that is Broken. ``attempt``: a hold by which the caller
        may cut the request short (then it raises Aborted)."""
        key = endpoint_address(endpoint)
        host = key[0] if ":" not in key[0] else f"[{key[0]}]"
        head = [f"{method} {target} HTTP/1.1\r\nHost: {host}:{key[1]}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}\r\n")
        data = ("".join(head) + "\r\n").encode("latin-1")
        attempt = attempt or Attempt()
        attempt._check()
        conn = self._take(key)
        try:
            if conn is not None:
                try:
                    return await self._exchange(key, conn, method, data, body, attempt)
                except Broken as exc:
                    if not (retry_stale and exc.nothing_read) or attempt.aborted:
                        raise
            attempt._check()
            return await self._exchange(key, await self._connect(key), method, data, body,
                                        attempt)
        except UpstreamError as exc:
            attempt._check(exc)
            raise

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*key, limit=MAX_HEAD)
        except TimeoutError:
            raise ConnectFailed(f"no connection to {key[0]}:{key[1]} within "
                                f"{self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {key[0]}:{key[1]}: "
                                f"{exc.strerror or exc}") from None
        return _Conn(reader, writer)

    async def _exchange(self, key: tuple[str, int], conn: _Conn, method: str, head: bytes,
                        body: bytes, attempt: Attempt) -> Response:
        attempt._hold(conn)
        read_any = False
        try:
            async with asyncio.timeout(self.read_timeout):
                if len(body) <= ONE_WRITE:
                    conn.writer.write(head + body)   # one send: cheaper than the copy
                else:
                    conn.writer.write(head)
                    conn.writer.write(body)
                await conn.writer.drain()
                while True:
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                    read_any = True
                    status, reason, headers, version = _parse_head(raw)
                    if status >= 200 or status == 101:
                        break   # 1xx interim answers (100 Continue, 103) are skipped
        except TimeoutError:
            conn.close()
            raise TimedOut(f"no answer within {self.read_timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            conn.close()
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                read_any = True
            raise Broken(f"no whole answer: {exc or type(exc).__name__}",
                         nothing_read=not read_any) from None
        return self._response(key, conn, method, status, reason, headers, version, attempt)

    def _response(self, key, conn, method, status, reason, headers, version,
                  attempt) -> Response:
        tokens = connection_tokens(headers)
        keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
        encodings = [v.strip().lower() for k, v in headers if k.lower() == "transfer-encoding"]
        lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
        if method == "HEAD" or status in NO_BODY or status < 200:
            framing, length = "none", 0
        elif encodings:
            if encodings != ["chunked"]:
                conn.close()
                raise Broken(f"unsupported Transfer-Encoding: {', '.join(encodings)}")
            framing, length = "chunked", 0
        elif lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                conn.close()
                raise Broken(f"malformed Content-Length: {', '.join(sorted(lengths))}")
            framing, length = "length", int(next(iter(lengths)))
        else:
            framing, length, keep = "close", 0, False
        return Response(self, key, conn, status, reason, headers, framing, length, keep, attempt)

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        now = time.monotonic()
        if now - self._swept > 1.0:
            self._sweep(now)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.stale() and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    def _put(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self.max_idle or conn.stale():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (now - idle[0].idle_since >= self.idle_timeout or idle[0].stale()):
                idle.popleft().close()
            if not idle:
                del self._idle[key]

    def idle_count(self, endpoint: str | None = None) -> int:
        if endpoint is None:
            return sum(len(d) for d in self._idle.values())
        return len(self._idle.get(endpoint_address(endpoint), ()))

    def close(self) -> None:
        """Close every idle connection (the agent is stopping)."""
        for idle in self._idle.values():
            while idle:
                idle.popleft().close()
        self._idle.clear()


def connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    """What the Connection headers list (options, and header names that are hop-by-hop too),
    lower-cased."""
    return {token.strip().lower() for name, value in headers if name.lower() == "connection"
            for token in value.split(",")}


def _parse_head(raw: bytes) -> tuple[int, str, list[tuple[str, str]], str]:
    """Status, reason, headers and version of a response head; ValueError if malformed."""
    text = raw[:-4].decode("latin-1")
    if "\x00" in text or _LONE_BREAK.search(text):
        raise ValueError("a NUL, or a CR or LF not ending a line, in the response head")
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    return int(code), reason, headers, version
