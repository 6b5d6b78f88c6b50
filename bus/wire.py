"""Socket plumbing shared by the bus transports: creating, sending without blocking, closing,
and logging dropped frames without flooding the log.

Sending and receiving go through the socket's plain (synchronous) view with ``NOBLOCK``, and a
receiver is the loop's own reader callback on the socket's file descriptor, which reads and
handles what arrived there and then (``serve``): a message reaches its handler in the loop turn
it is read in, with no task woken and no future, callback list or option read of
``zmq.asyncio``'s per-call machinery. libzmq's descriptor is edge-like (any call on the socket
may consume the signal that a message arrived), so after each send on a socket that someone
reads, ``send_now`` has the reader look again on the loop's next turn, as ``zmq.asyncio``
does.

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
from collections.abc import Callable
from typing import TypeVar

import zmq
import zmq.asyncio

from bus.protocol import MAX_FRAME_SIZE, ProtocolError

__all__ = ["BYE_LINGER_MS", "DropLog", "close_socket", "new_socket", "send_now", "serve"]

T = TypeVar("T")

log = logging.getLogger("bus.wire")

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
        reader.poke()
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
    """The messages of one socket, handed to ``handle`` from the loop's reader callback as
    they arrive: no task wakes up per message."""

    def __init__(self, plain: zmq.Socket, loop: asyncio.AbstractEventLoop,
                 take: Callable[[list[bytes]], None]):
        self.plain = plain
        self.fd = plain.FD
        self.loop = loop
        self.take = take
        self.done: asyncio.Future[None] = loop.create_future()
        self.stopped = False
        # Frames before this index are the message's own (a ROUTER's or SUB's first is the
        # peer's identity or the topic); those after it are bulk (a reply's blob), not copied.
        self.bulk_at = 3 if plain.type in (zmq.DEALER, zmq.REQ) else 4
        self._draining = False
        self._poked = False
        loop.add_reader(self.fd, self.check)

    def check(self) -> None:
        """Take what waits (reading the socket's events also re-arms its descriptor)."""
        self._poked = False
        if self.stopped or self._draining:
            return
        self._draining = True
        try:
            for _ in range(YIELD_EVERY):
                if self.stopped or self.plain.closed:
                    return
                try:
                    # Asked before each read: an empty socket says so without the exception
                    # a read would raise (the costly part of a lone message's turn).
                    if not self.plain.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        return
                    frames = _recv(self.plain, self.bulk_at)
                except zmq.Again:
                    return
                except zmq.ZMQError:
                    if not (self.stopped or self.plain.closed):
                        raise
                    return
                self.take(frames)
            # A flood: let the tick and the other sockets have a turn, then go on.
            self.poke()
        finally:
            self._draining = False

    def poke(self) -> None:
        """Look at the socket again on the loop's next turn (after a send on it, which may
        have consumed the descriptor's signal that a message arrived)."""
        if not self._poked and not self.stopped:
            self._poked = True
            self.loop.call_soon(self.check)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.loop.remove_reader(self.fd)
            if not self.done.done():
                self.done.set_result(None)


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


async def serve(sock: zmq.asyncio.Socket, decoder: Callable[[list[bytes]], T],
                handle: Callable[[T], None], drops: DropLog,
                on_error: Callable[[list[bytes], ProtocolError], None] | None = None, *,
                after_replies: bool = False) -> None:
    """Decode each message from ``sock`` and call ``handle`` with it, until the socket is
    closed (``close_socket``) or this is cancelled; bad frames go to ``drops`` (and
    ``on_error``). One reader per socket.

    ``handle`` runs in the loop's reader callback, as the message is read: it must not block,
    and what it raises is logged, not let out. A flood of ready messages does not starve the
    loop: after ``YIELD_EVERY`` messages in a row the rest waits for the loop's next turn.

    ``after_replies`` (broadcasts): each message is decoded and handled two loop turns after
    it is read, in order, so a reply read in the same turn, and the task it wakes, go first
    (a delegation's answer often comes with the broadcasts it caused).
    """
    if sock in _readers:
        raise RuntimeError("this socket already has a reader")

    def take(frames: list[bytes]) -> None:
        try:
            msg = decoder(frames)
        except ProtocolError as err:
            drops.drop(err)
            if on_error is not None:
                on_error(frames, err)
            return
        try:
            handle(msg)
        except Exception:
            log.exception("handling a %s failed", type(msg).__name__)

    loop = asyncio.get_running_loop()
    if after_replies:
        take_now = take

        def take(frames: list[bytes]) -> None:
            loop.call_soon(loop.call_soon, take_now, frames)

    reader = _readers[sock] = _Reader(_plain(sock), loop, take)
    try:
        reader.check()                # what came before the reader was there
        await asyncio.shield(reader.done)
    finally:
        if _readers.get(sock) is reader:
            del _readers[sock]
            reader.stop()
