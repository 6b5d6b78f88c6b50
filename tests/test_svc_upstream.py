"""The router's kept-alive HTTP/1.1 client (cnet/svc_upstream.py) against hand-written answers
from a real socket server: body framings, broken and malformed answers, closed connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from cnet.svc_upstream import (
    Aborted,
    Attempt,
    Broken,
    ConnectFailed,
    TimedOut,
    UpstreamPool,
    endpoint_address,
)

from .bus.harness import until
from .ports import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@contextlib.asynccontextmanager
async def server(answer: Callable[[int, int], bytes | None]) -> AsyncIterator[str]:
    """A server that reads each request and writes ``answer(connection no, request no on it)``:
    bytes; a 1-tuple of bytes (then it closes, unannounced); None (it closes without a word)."""
    count = 0
    tasks, writers = set(), set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        conn, n = count, 0
        tasks.add(asyncio.current_task())
        writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                n += 1
                data = answer(conn, n)
                if data is None:
                    break
                close = isinstance(data, tuple)     # (answer,): close after it, unannounced
                data = data[0] if close else data
                writer.write(data)
                await writer.drain()
                if close or data.startswith(b"HTTP/1.0") or b"Connection: close" in data:
                    break   # the connection ends here
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            writers.discard(writer)
            tasks.discard(asyncio.current_task())

    port = free_port()
    srv = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.close()
        for writer in list(writers):
            writer.transport.abort()     # its handler then ends reading
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


async def body(pool: UpstreamPool, endpoint: str, method: str = "GET", *,
               retry_stale: bool = True) -> tuple[int, bytes]:
    resp = await pool.request(endpoint, method, "/x", [("X-A", "1")], b"", retry_stale=retry_stale)
    return resp.status, b"".join([piece async for piece in resp.chunks()])


async def test_framings_and_reuse():
    answers = [OK, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
               b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz",
               b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]
    async with server(lambda conn, n: answers[n - 1]) as endpoint:
        pool = UpstreamPool()
        assert await body(pool, endpoint) == (200, b"ok")
        assert await body(pool, endpoint) == (201, b"abcde")
        assert await body(pool, endpoint) == (200, b"z")
        assert pool.idle_count(endpoint) == 1          # one connection, kept for all three
        assert await body(pool, endpoint) == (200, b"until the end")
        assert pool.idle_count(endpoint) == 0          # read to its close: not kept
        pool.close()


async def test_a_head_answer_has_no_body():
    async with server(lambda conn, n: b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n") as ep:
        pool = UpstreamPool()
        assert await body(pool, ep, "HEAD") == (200, b"")
        assert await body(pool, ep, "HEAD") == (200, b"")
        assert pool.idle_count(ep) == 1
        pool.close()


@pytest.mark.parametrize("answer", [
    b"SPDY/9 200 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
])
async def test_malformed_answers_are_broken(answer):
    async with server(lambda conn, n: answer) as endpoint:
        pool = UpstreamPool()
        with pytest.raises(Broken):
            await body(pool, endpoint)
        assert pool.idle_count() == 0
        pool.close()


async def test_an_answer_short_of_its_length_is_broken():
    async with server(lambda conn, n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"
                                      b"Connection: close\r\n\r\nshort") as endpoint:
        pool = UpstreamPool()
        resp = await pool.request(endpoint, "GET", "/", [], b"", retry_stale=True)
        with pytest.raises(Broken, match="5 bytes short"):
            _ = [piece async for piece in resp.chunks()]
        pool.close()


async def test_a_kept_connection_the_server_closed_is_replaced_only_when_safe():
    # Each connection answers its first request and silently drops the second.
    async with server(lambda conn, n: OK if n == 1 else None) as endpoint:
        pool = UpstreamPool()
        assert await body(pool, endpoint) == (200, b"ok")
        assert await body(pool, endpoint) == (200, b"ok")       # fresh connection, same replica
        with pytest.raises(Broken) as caught:
            await body(pool, endpoint, "POST", retry_stale=False)
        assert caught.value.nothing_read
        pool.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async with server(lambda conn, n: (OK,)) as endpoint:        # answers, then closes
        pool = UpstreamPool()
        assert await body(pool, endpoint) == (200, b"ok")
        conn = pool._idle[endpoint_address(endpoint)][0]
        await until(conn.reader.at_eof, 5, "the server's FIN")
        assert await body(pool, endpoint, "POST", retry_stale=False) == (200, b"ok")
        pool.close()


async def test_refused_and_silent_servers():
    pool = UpstreamPool(read_timeout=0.2)
    with pytest.raises(ConnectFailed) as caught:
        await body(pool, f"http://127.0.0.1:{free_port()}")
    assert not caught.value.sent
    with pytest.raises(ValueError):
        await body(pool, "https://127.0.0.1:1")
    async with server(lambda conn, n: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab") as ep:
        resp = await pool.request(ep, "GET", "/", [], b"", retry_stale=True)
        with pytest.raises(TimedOut):
            _ = [piece async for piece in resp.chunks()]
    async with server(lambda conn, n: b"") as endpoint:          # never answers
        with pytest.raises(TimedOut):
            await body(pool, endpoint)
    pool.close()


async def test_an_attempt_cut_short_raises_aborted_at_every_stage():
    pool = UpstreamPool(read_timeout=30)
    silent = asyncio.Event()
    async with server(lambda conn, n: OK) as url:
        await body(pool, url)                          # a kept-alive connection to reuse
        # Waiting for the head, on a kept connection: not replaced by a fresh one once cut.
        conns = set()

        def quiet_answer(conn: int, n: int) -> bytes:
            conns.add(conn)
            if n == 1:
                return OK
            silent.set()
            return b""
        async with server(quiet_answer) as quiet:
            await body(pool, quiet)
            attempt = Attempt()
            pending = asyncio.ensure_future(pool.request(quiet, "GET", "/x", [], b"",
                                                         retry_stale=True, attempt=attempt))
            await asyncio.wait_for(silent.wait(), 10)
            attempt.abort()
            with pytest.raises(Aborted):
                await asyncio.wait_for(pending, 10)
            assert conns == {1} and pool.idle_count(quiet) == 0
        # Reading an until-close body: cut short, it is Aborted, not a short answer.
        async with server(lambda conn, n: b"HTTP/1.1 200 OK\r\n\r\npart") as endless:
            attempt = Attempt()
            resp = await pool.request(endless, "GET", "/x", [], b"", retry_stale=False,
                                      attempt=attempt)
            pieces = resp.chunks()
            assert await pieces.__anext__() == b"part"
            attempt.abort()
            with pytest.raises(Aborted):
                await asyncio.wait_for(pieces.__anext__(), 10)
        # Already cut short: nothing is sent.
        attempt = Attempt()
        attempt.abort()
        with pytest.raises(Aborted):
            await pool.request(url, "GET", "/x", [], b"", retry_stale=True, attempt=attempt)
        assert pool.idle_count(url) == 1               # the first connection, still reusable
    pool.close()
