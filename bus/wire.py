"""Socket plumbing shared by the bus transports: creating, sending without blocking, closing,
and logging dropped frames without flooding the log."""

from __future__ import annotations

import asyncio
import logging
import time
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
    try:
        future = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.ZMQError:
        return False
    # zmq.asyncio reports EAGAIN/EHOSTUNREACH through an already-finished future.
    if future.done():
        return future.exception() is None
    return True


def close_socket(sock: zmq.asyncio.Socket | None, linger_ms: int = 0) -> None:
    """Close ``sock``; pending messages are dropped (or get ``linger_ms`` to go, for a bye)."""
    if sock is not None and not sock.closed:
        sock.close(linger=linger_ms)


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


async def receive(sock: zmq.asyncio.Socket, decoder: Callable[[list[bytes]], T], drops: DropLog,
                  on_error: Callable[[list[bytes], ProtocolError], None] | None = None,
                  ) -> AsyncIterator[T]:
    """Decoded messages from ``sock`` forever; bad frames go to ``drops`` (and ``on_error``).

    A flood of ready messages does not starve the loop: every ``YIELD_EVERY`` messages the
    generator lets other tasks (the tick, other sockets) run.
    """
    count = 0
    while True:
        frames = await sock.recv_multipart()
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
