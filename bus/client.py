"""Client side of the bus: requests to one agent's ROUTER, and watching its PUB.

``cnet/client.py`` wraps these. A client needs no handshake: it sends :class:`Request` frames
from a DEALER and matches replies by correlation id; every wait has a timeout, so a down agent
gives :class:`~bus.errors.RequestTimeout`, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Self

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bus.discovery import Endpoints, discover_http
from bus.errors import BusError, RemoteError, RequestTimeout, Unreachable
from bus.pending import PendingReplies
from bus.protocol import (
    Event,
    Hello,
    Message,
    ProtocolError,
    Reply,
    Request,
    Update,
    Welcome,
    decode,
    decode_published,
    encode,
    new_corr_id,
)
from bus.security import CurveKeys
from bus.tasks import cancel_and_wait
from bus.wire import DropLog, close_socket, new_socket, send_now, serve

__all__ = ["BusClient", "Watcher"]

log = logging.getLogger("bus.client")

_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def _secure(sock: zmq.asyncio.Socket, curve: CurveKeys | None, server_key: str | None) -> None:
    if curve is None:
        return
    if not server_key or not curve.trusts(server_key):
        raise Unreachable(f"server key {server_key!r} is not among the accepted keys in "
                          f"{curve.authorized_dir}")
    curve.make_client(sock, server_key)


class BusClient:
    """Requests to the agent whose ROUTER is at ``router`` (``tcp://host:port``).

    With ``curve`` set, ``server_key`` (the agent's Z85 public key, as ``/api/bus`` gives it)
    must be one of the accepted keys.
    """

    def __init__(self, router: str, *, timeout: float = 5.0, curve: CurveKeys | None = None,
                 server_key: str | None = None, context: zmq.asyncio.Context | None = None):
        self.router = router
        self.timeout = timeout
        self._curve = curve
        self._server_key = server_key
        self._own_context = context is None
        self._context = context
        self._sock: zmq.asyncio.Socket | None = None
        self._recv: asyncio.Task[None] | None = None
        self._pending = PendingReplies()
        self._welcomes: asyncio.Queue[Welcome] = asyncio.Queue()
        self._drops = DropLog(log, f"client of {router}")

    @classmethod
    async def discover(cls, http_address: str, *, timeout: float = 5.0,
                       curve: CurveKeys | None = None) -> BusClient:
        """A client for the agent serving HTTP at ``http_address`` (one ``/api/bus`` lookup)."""
        found: Endpoints = await discover_http(http_address, timeout=timeout)
        return cls(found.router, timeout=timeout, curve=curve, server_key=found.curve_key)

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            if self._context is None:
                self._context = zmq.asyncio.Context()
            sock = new_socket(self._context, zmq.DEALER)
            try:
                _secure(sock, self._curve, self._server_key)
            except BusError:
                sock.close(linger=0)
                raise
            sock.connect(self.router)
            self._sock = sock
            self._recv = asyncio.create_task(self._recv_loop(sock), name="bus-client-recv")
        return self._sock

    async def _recv_loop(self, sock: zmq.asyncio.Socket) -> None:
        await serve(sock, decode, self._take, self._drops)

    def _take(self, msg: Message) -> None:
        if isinstance(msg, Reply):
            self._pending.resolve(msg)
        elif isinstance(msg, Welcome):
            self._welcomes.put_nowait(msg)

    async def hello(self, name: str = "client", timeout: float | None = None) -> Welcome:
        """Optional client handshake: returns the agent's :class:`Welcome` (its id, endpoints)."""
        send_now(self._socket(), encode(Hello(node_id=name, role="client")))
        wait = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._welcomes.get(), wait)
        except TimeoutError:
            raise RequestTimeout(f"no welcome from {self.router} within {wait:g} s "
                                 f"(is the agent up?)") from None

    async def request(self, op: str, args: dict[str, Any] | None = None, *,
                      timeout: float | None = None, token: str | None = None) -> Reply:
        """Send ``op`` and return the :class:`Reply`; :class:`RequestTimeout` if none comes."""
        req = Request(corr_id=new_corr_id(), op=op, args=args or {}, token=token)
        req.validate()
        sock = self._socket()
        future = self._pending.expect(req.corr_id)
        if not send_now(sock, encode(req)):
            self._pending.discard(req.corr_id)
            raise Unreachable(f"cannot queue {op!r} for {self.router}")
        wait = self.timeout if timeout is None else timeout
        return await self._pending.wait(req.corr_id, future, wait,
                                        f"{op!r} sent to {self.router} (is the agent up?)")

    async def call(self, op: str, args: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Like :meth:`request`, returning the result or raising :class:`RemoteError`."""
        reply = await self.request(op, args, **kwargs)
        if not reply.ok:
            err = reply.error or {}
            raise RemoteError(str(err.get("code", "error")), str(err.get("message", "")),
                              err.get("details") if isinstance(err.get("details"), dict) else None)
        return reply.result or {}

    async def close(self) -> None:
        await cancel_and_wait(self._recv)
        self._recv = None
        self._pending.fail_all(BusError("client closed", code="closed"))
        close_socket(self._sock)
        self._sock = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Watcher:
    """Live :class:`Update` and :class:`Event` messages from the agent whose PUB is at ``pub``.

    ``topics`` are prefixes: ``b""`` for everything, ``b"update"``, ``b"event."`` or
    ``b"event.workload"``. Iterate with ``async for``, or ``await next(timeout)``.
    """

    def __init__(self, pub: str, *, topics: Sequence[bytes] = (b"",),
                 curve: CurveKeys | None = None, server_key: str | None = None,
                 context: zmq.asyncio.Context | None = None):
        self.pub = pub
        self._own_context = context is None
        self._context = context or zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = new_socket(self._context, zmq.SUB)
        self._monitor: zmq.asyncio.Socket | None = None
        try:
            _secure(self._sock, curve, server_key)
        except BusError:
            self.close()
            raise
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        # Watched from before connect, so connected() cannot miss the handshake.
        self._monitor = self._sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._sock.connect(pub)
        self._drops = DropLog(log, f"watcher of {pub}")

    async def connected(self, timeout: float) -> None:
        """Wait until the SUB has completed its handshake with the PUB, after which publishes
        reach this watcher (the PUB/SUB slow joiner). :class:`RequestTimeout` when that does not
        happen within ``timeout`` (agent down); :class:`Unreachable` when the PUB refuses us."""
        if self._sock is None or self._monitor is None:
            raise BusError("watcher closed or already connected", code="closed")
        try:
            async with asyncio.timeout(timeout):
                event = parse_monitor_message(await self._monitor.recv_multipart())
        except TimeoutError:
            raise RequestTimeout(f"no handshake with {self.pub} within {timeout:g} s "
                                 f"(is the agent up?)") from None
        finally:
            self._stop_monitor()
        if event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:    # failed auth or protocol
            raise Unreachable(f"{self.pub} refused the handshake (Curve: is our key accepted "
                              f"there, and do both sides use Curve?)")

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            if self._sock is not None and not self._sock.closed:
                self._sock.disable_monitor()
            close_socket(self._monitor)
            self._monitor = None

    async def next(self, timeout: float | None = None) -> Update | Event:
        """The next message; :class:`RequestTimeout` after ``timeout`` seconds without one."""
        if self._sock is None:
            raise BusError("watcher closed", code="closed")
        while True:
            try:
                frames = await asyncio.wait_for(self._sock.recv_multipart(), timeout)
            except TimeoutError:
                raise RequestTimeout(f"nothing published on {self.pub} within {timeout:g} s") from None
            try:
                _topic, msg = decode_published(frames)
            except ProtocolError as err:
                self._drops.drop(err)
                continue
            if isinstance(msg, (Update, Event)):
                return msg

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Update | Event:
        if self._sock is None:
            raise StopAsyncIteration
        return await self.next()

    def close(self) -> None:
        self._stop_monitor()
        close_socket(self._sock)
        self._sock = None
        if self._own_context:
            self._context.term()
