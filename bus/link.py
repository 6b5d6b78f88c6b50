"""One outgoing link: a DEALER to a parent or a peer, its handshake and its liveness.

The link discovers the neighbour's endpoints, connects, says hello and waits for a welcome.
Once joined, the node sends heartbeats through it and the neighbour beats back over it (or
answers each beat, see ``Neighbours.beating_to_us``); a peer's link may stay quiet while the
peer's own link carries the pair (``heard_elsewhere``). If nothing comes back for ``misses``
intervals (or the welcome never comes) the link throws the DEALER away, rediscovers and says
hello again (the zguide's paranoid-pirate liveness). A refusal
is logged and retried with backoff. Everything other than the handshake goes to ``on_message``,
and a frame that does not decode to ``on_bad``. A hello again to the same neighbour (after a
reconnect) shows the session of its last welcome, so it is known for the same party.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from bus.discovery import Discover, Endpoints, discover_until
from bus.protocol import (
    Bye,
    Hello,
    Message,
    ProtocolError,
    Refuse,
    Welcome,
    decode,
    encode,
)
from bus.security import CurveKeys
from bus.tasks import cancel_and_wait
from bus.wire import BYE_LINGER_MS, DropLog, close_socket, new_socket, send_now, serve

__all__ = ["Link"]

log = logging.getLogger("bus.link")


class Link:
    """A DEALER link to the neighbour at ``target`` (HTTP ``host:port`` or fixed endpoints).

    ``kind`` is what the neighbour is to us: ``parent`` or ``peer``.
    """

    def __init__(self, kind: str, target: str | Endpoints, *, context: zmq.asyncio.Context,
                 make_hello: Callable[[], Hello], on_message: Callable[[Link, Message], None],
                 on_joined: Callable[[Link, Welcome], None], on_down: Callable[[Link, str], None],
                 discover: Discover, interval: float, misses: int, retry_max: float,
                 on_bad: Callable[[Link, ProtocolError], None] | None = None,
                 curve: CurveKeys | None = None, clock: Callable[[], float] = time.monotonic):
        self.kind = kind
        self.target = target
        self.address = target.http if isinstance(target, Endpoints) else target
        self.endpoints: Endpoints | None = target if isinstance(target, Endpoints) else None
        self.remote: Welcome | None = None
        self._context = context
        self._make_hello = make_hello
        self._on_message = on_message
        self._on_joined = on_joined
        self._on_down = on_down
        self._on_bad = on_bad
        self._discover = discover
        self._interval = interval
        self._misses = misses
        self._retry_max = retry_max
        self._curve = curve
        self._clock = clock
        self._sock: zmq.asyncio.Socket | None = None
        self._joined = False
        self._hello_at = 0.0
        self.last_heard = 0.0
        self._restart = asyncio.Event()
        self._delay = 0.0
        self._reason = ""
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._drops = DropLog(log, f"{kind} link {self.describe()}")

    def describe(self) -> str:
        if self.remote is not None:
            return self.remote.node_id
        return self.address or (self.endpoints.router if self.endpoints else "?")

    @property
    def joined(self) -> bool:
        return self._joined

    @property
    def node_id(self) -> str | None:
        """The neighbour's node id once a welcome named it."""
        return self.remote.node_id if self.remote is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"bus-link-{self.describe()}")

    async def close(self, reason: str = "closing") -> None:
        """Say bye (when joined), stop the task and close the socket."""
        said_bye = self._joined and self.send(Bye(node_id=self._make_hello().node_id, reason=reason))
        await cancel_and_wait(self._task)
        self._task = None
        close_socket(self._sock, BYE_LINGER_MS if said_bye else 0)
        self._sock = None
        self._joined = False

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` on the DEALER; False when the link has no socket or its queue is full."""
        try:
            frames = encode(msg)
        except (TypeError, ValueError) as exc:
            log.error("%s link %s: cannot encode %s: %s", self.kind, self.describe(),
                      msg.TYPE.decode(), exc)
            return False
        return send_now(self._sock, frames)

    def send_frames(self, frames: list[bytes]) -> bool:
        """Queue already-encoded frames (a reply) on the DEALER."""
        return send_now(self._sock, frames)

    def restart(self, reason: str, delay: float = 0.0) -> None:
        """Drop the DEALER and start over (discovery, hello) after ``delay`` seconds."""
        if not self._restart.is_set():
            log.info("%s link %s: reconnecting (%s)", self.kind, self.describe(), reason)
            self._delay = delay
            self._reason = reason
            self._restart.set()

    def heard_elsewhere(self, at: float) -> None:
        """The neighbour was heard at ``at`` on another connection that stands for this one
        (a peer's own link beating on our ROUTER while this one is quiet): count it here."""
        if at > self.last_heard:
            self.last_heard = at

    def tick(self, now: float) -> None:
        """Liveness: restart a link whose neighbour stayed silent for ``misses`` intervals."""
        if self._sock is None or self._restart.is_set():
            return
        window = self._misses * self._interval
        if self._joined and now - self.last_heard > window:
            self.restart(f"no heartbeat reply for {now - self.last_heard:.1f} s")
        elif not self._joined and now - self._hello_at > window:
            where = self.endpoints.router if self.endpoints else self.describe()
            hint = ("is it up, and is this node's Curve key among those it accepts?"
                    if self._curve is not None else "is it up?")
            self.restart(f"no welcome within {window:.1f} s from {where}: {hint}",
                         delay=self._backoff())

    def _backoff(self) -> float:
        """Delay before the next attempt: doubles with each failure in a row, up to retry_max."""
        self._failures += 1
        return min(self._retry_max, self._interval * 2 ** min(self._failures - 1, 10))

    async def _run(self) -> None:
        while True:
            self._restart.clear()
            endpoints = self.endpoints if isinstance(self.target, Endpoints) else \
                await discover_until(self.address, self._discover, first_delay=min(0.1, self._interval),
                                     max_delay=self._retry_max)
            self.endpoints = endpoints
            if self._open(endpoints):
                recv = asyncio.create_task(self._recv_loop(self._sock), name="bus-link-recv")
                self._send_hello()
                await self._restart.wait()
                await cancel_and_wait(recv)
            else:
                self._delay = self._retry_max
                self._reason = "cannot connect"
            close_socket(self._sock)
            self._sock = None
            if self._joined:
                self._joined = False
                self._on_down(self, self._reason)
            await asyncio.sleep(self._delay)

    def _open(self, endpoints: Endpoints) -> bool:
        sock = new_socket(self._context, zmq.DEALER)
        if self._curve is not None:
            if not self._curve.trusts(endpoints.curve_key):
                log.error("%s link %s: server key %r is not among the accepted keys in %s; "
                          "not connecting", self.kind, self.describe(), endpoints.curve_key,
                          self._curve.authorized_dir)
                sock.close(linger=0)
                return False
            self._curve.make_client(sock, endpoints.curve_key or "")
        try:
            sock.connect(endpoints.router)
        except zmq.ZMQError as exc:
            log.error("%s link %s: cannot connect to %r: %s", self.kind, self.describe(),
                      endpoints.router, exc)
            sock.close(linger=0)
            return False
        self._sock = sock
        return True

    def _send_hello(self) -> None:
        self._joined = False
        self._hello_at = self._clock()
        hello = self._make_hello()
        remote = self.remote
        if remote is not None and self.endpoints is not None and self.endpoints.router == remote.router:
            hello.session = remote.session or None     # the same neighbour: we are who it knew
        self.send(hello)

    def _bad_frame(self, frames: list[bytes], err: ProtocolError) -> None:
        if self._on_bad is not None:
            self._on_bad(self, err)

    async def _recv_loop(self, sock: zmq.asyncio.Socket) -> None:
        await serve(sock, decode, self._take, self._drops, self._bad_frame)

    def _take(self, msg: Message) -> None:
        self.last_heard = self._clock()
        if isinstance(msg, Welcome):
            self._welcomed(msg)
        elif isinstance(msg, Refuse):
            self._refused(msg)
        elif isinstance(msg, Bye):
            self.restart(f"{msg.node_id} said bye ({msg.reason})", delay=min(0.1, self._interval))
        elif self._joined:
            self._on_message(self, msg)

    def _welcomed(self, msg: Welcome) -> None:
        expected = self.endpoints.node_id if self.endpoints else ""
        if expected and msg.node_id != expected:
            log.error("%s link %s: welcome from %r, expected %r", self.kind, self.address,
                      msg.node_id, expected)
        was_joined, self._joined, self.remote, self._failures = self._joined, True, msg, 0
        if not was_joined:
            log.info("%s link %s: joined (%s, router %s)", self.kind, msg.node_id,
                     self.address or "fixed endpoints", msg.router)
            self._on_joined(self, msg)

    def _refused(self, msg: Refuse) -> None:
        if msg.code == "hello_required":
            # The neighbour restarted and forgot us; it is alive, so just say hello again.
            log.info("%s link %s: neighbour asks for a new hello", self.kind, self.describe())
            self._send_hello()
            return
        delay = self._backoff()
        log.error("%s link %s: %s refused our hello: %s (%s); retrying in %.1f s", self.kind,
                  self.address or self.describe(), msg.node_id, msg.reason, msg.code, delay)
        self.restart(f"refused: {msg.code}", delay=delay)
