"""Socket plumbing shared by the bus transports: creating, sending without blocking, closing,
and logging dropped frames without flooding the log.

Sending and receiving go through the socket's plain (synchronous) view with ``NOBLOCK``, and a
receiver waits on the socket's file descriptor with the loop's own reader callback: a message
costs the loop one turn to reach its reader, and no future, callback list or option read of
``zmq.asyncio``'s per-call machinery. libzmq's descriptor is edge-like (any call on the socket
may consume the signal that a message arrived), so after each send on a socket that someone
reads, ``send_now`` looks for a message waiting and wakes the reader itself, as
``zmq.asyncio`` does.

Bulk bytes are not copied in Python: a frame of ``ZERO_COPY_MIN`` bytes or more is sent
without a copy (libzmq sends from the Python object's buffer), and a frame after a message's
body (a reply's blob) is received as a ``zmq.Frame`` (libzmq's buffer, which the kernel wrote
into), where the small frames before it keep the fast copying path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import zmq
import zmq.asyncio

from bus.protocol import MAX_FRAME_SIZE, ProtocolError

__all__ = ["BYE_LINGER_MS", "DropLog", "close_socket", "new_socket", "receive", "send_now"]

T = TypeVar("T")

HWM = 10_000
YIELD_EVERY = 64           # messages taken in a row before other tasks get a turn
BYE_LINGER_MS = 200        # a socket that just queued a Bye gets this long to deliver it
ZERO_COPY_MIN = 64 << 10   # a frame this large is sent without a copy (pyzmq's threshold)


def new_socket(context: zmq.asyncio.Context, kind: int) -> zmq.asyncio.Socket:
    """A socket with the bus's defaults: linger 0, bounded queues, oversized frames refused."""
    sock = context.socket(kind)
    sock.linger = 0
    sock.sndhwm = HWM
    sock.rcvhwm = HWM
    # libzmq drops the connection of a peer that sends a larger frame: memory stays bounded.
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_SIZE + 1024)
    return sock


def send_now(sock: zmq.asyncio.Socket | None, frames: list[bytes]) -> bool:
    """Queue ``frames`` without waiting; False when the queue is full or the peer is unknown."""
    if sock is None or sock.closed:
        return False
    plain = _plain(sock)
    try:
        plain.send_multipart(frames, flags=zmq.NOBLOCK,
                             copy=len(frames[-1]) < ZERO_COPY_MIN)
    except zmq.ZMQError:
        return False
    reader = _readers.get(sock)
    if reader is not None:
        reader.check()
    return True


def close_socket(sock: zmq.asyncio.Socket | None, linger_ms: int = 0) -> None:
    """Close ``sock``; pending messages are dropped (or get ``linger_ms`` to go, for a bye)."""
    if sock is not None and not sock.closed:
        reader = _readers.pop(sock, None)
        if reader is not None:     # before the descriptor closes (its number may be reused)
            reader.stop()
        sock.close(linger=linger_ms)


_plains: weakref.WeakKeyDictionary[zmq.Socket, zmq.Socket] = weakref.WeakKeyDictionary()


def _plain(sock: zmq.Socket) -> zmq.Socket:
    """The synchronous view of ``sock`` (the same libzmq socket), made once."""
    plain = _plains.get(sock)
    if plain is None:
        plain = _plains[sock] = zmq.Socket.shadow(sock.underlying)
    return plain


class _Reader:
    """The wait of one ``receive`` on its socket's descriptor."""

    def __init__(self, plain: zmq.Socket, loop: asyncio.AbstractEventLoop):
        self.plain = plain
        self.fd = plain.FD
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.stopped = False
        loop.add_reader(self.fd, self.check)

    def check(self) -> None:
        """Read the socket's events (which also re-arms its descriptor); wake the reader when a
        message waits."""
        if self.stopped or self.plain.closed:
            return
        if self.plain.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            future = self.future
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        self.future = self.loop.create_future()
        try:
            self.check()            # what came after the last read
            await self.future
        finally:
            self.future = None

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.loop.remove_reader(self.fd)
            if self.future is not None and not self.future.done():
                self.future.cancel()


_readers: weakref.WeakKeyDictionary[zmq.Socket, _Reader] = weakref.WeakKeyDictionary()


class DropLog:
    """Logs dropped frames: the first at once, then at most one summary line per ``every`` s."""

    def __init__(self, logger: logging.Logger, where: str, every: float = 5.0):
        self._log = logger
        self._where = where
        self._every = every
        self._since = 0
        self._last = -every
        self.total = 0

    def drop(self, err: ProtocolError | str) -> None:
        self.total += 1
        self._since += 1
        now = time.monotonic()
        if now - self._last < self._every:
            return
        reason = f"{err.code}: {err.message}" if isinstance(err, ProtocolError) else err
        if self._since > 1:
            self._log.warning("%s: dropped %d bad frames (last: %s)", self._where, self._since, reason)
        else:
            self._log.warning("%s: dropped a bad frame (%s)", self._where, reason)
        self._since, self._last = 0, now


def _recv(plain: zmq.Socket, bulk_at: int) -> list:
    """One multipart message: its first ``bulk_at`` frames as bytes, any after as Frames."""
    frames: list = [plain.recv(zmq.NOBLOCK)]
    while plain.getsockopt(zmq.RCVMORE):
        frames.append(plain.recv(zmq.NOBLOCK, copy=len(frames) < bulk_at))
    return frames


async def receive(sock: zmq.asyncio.Socket, decoder: Callable[[list[bytes]], T], drops: DropLog,
                  on_error: Callable[[list[bytes], ProtocolError], None] | None = None,
                  ) -> AsyncIterator[T]:
    """Decoded messages from ``sock`` forever; bad frames go to ``drops`` (and ``on_error``).

    A flood of ready messages does not starve the loop: every ``YIELD_EVERY`` messages the
    generator lets other tasks (the tick, other sockets) run. One reader per socket.
    """
    if sock in _readers:
        raise RuntimeError("this socket already has a reader")
    plain = _plain(sock)
    reader = _readers[sock] = _Reader(plain, asyncio.get_running_loop())
    # Frames before this index are the message's own (a ROUTER's or SUB's first is the peer's
    # identity or the topic); those after it are bulk (a reply's blob), taken without a copy.
    bulk_at = 3 if plain.type in (zmq.DEALER, zmq.REQ) else 4
    count = 0
    try:
        while True:
            try:
                frames = _recv(plain, bulk_at)
            except zmq.Again:
                await reader.wait()
                continue
            except zmq.ZMQError:
                if reader.stopped or plain.closed:    # closed under us: the end
                    return
                raise
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                msg = decoder(frames)
            except ProtocolError as err:
                drops.drop(err)
                if on_error is not None:
                    on_error(frames, err)
                continue
            yield msg
    finally:
        if _readers.get(sock) is reader:
            del _readers[sock]
            reader.stop()
