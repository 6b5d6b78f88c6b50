"""BusNode: one agent's place on the bus — its ROUTER and PUB, its links, its neighbour view.

The node binds a ROUTER (hellos, heartbeats and requests from children, peers and clients) and
a PUB (its resource updates and events), keeps a :class:`~bus.link.Link` to its parent and to
each peer, and one SUB connected to the PUB of every neighbour it has shaken hands with. One
tick task sends heartbeats, runs link liveness and marks silent neighbours lost. The agent sees
only callbacks (``snapshot``, ``summary``, ``handler``, ``on_neighbour``, ``on_event``) and the
methods ``publish``, ``publish_event``, ``request``/``call``, ``neighbours`` and ``describe``.

BusNode is the facade: it owns the sockets' lives, sends requests and broadcasts, and wires the
parts that live beside it, one role each: ``router`` (what comes in on the ROUTER),
``admission`` (hellos, and who is joined on which ROUTER connection), ``links`` (the links and
the neighbour each joined; ``link``: one DEALER's life; their messages are taken here),
``heartbeats`` (what this node beats, when, and on which connection), ``subscriptions`` (the
SUBs following neighbours' PUBs), ``view`` (what neighbours send, taken into the neighbour
table: ``liveness``), ``dispatch`` (running requests), ``pending`` (awaiting replies).

Nothing a neighbour sends is taken on its word: ``decode`` checks every payload against its
schema, a message counts only on the connection (ROUTER identity, link, or that neighbour's own
PUB, one SUB each) the neighbour joined on, and a refused one is logged and noted on that
neighbour's entry (``NeighbourState.rejected``) only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import zmq
import zmq.asyncio

from bus.admission import Admission
from bus.discovery import Discover, Endpoints, discover_http
from bus.dispatch import Dispatcher, Handler, Sender
from bus.errors import BusError, RemoteError, Unreachable
from bus.heartbeats import Heartbeats
from bus.link import Link
from bus.links import Links
from bus.liveness import LOST, Neighbours, NeighbourState
from bus.payloads import check_result
from bus.pending import PendingReplies
from bus.protocol import (
    PROTOCOL,
    TO_ANY,
    TOPIC_UPDATE,
    VERSION,
    Bye,
    Event,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Reply,
    Request,
    Update,
    Welcome,
    encode,
    event_topic,
    new_corr_id,
    new_epoch,
)
from bus.router import RouterSide
from bus.security import CurveKeys, start_authenticator
from bus.subscriptions import Subscriptions
from bus.view import NeighbourView
from bus.wire import BYE_LINGER_MS, DropLog, close_socket, new_socket, send_now

__all__ = ["BusNode"]

log = logging.getLogger("bus.node")

_WILDCARD_HOSTS = ("0.0.0.0", "*", "::")
_TICK_SLACK = 0.001   # seconds the tick sleeps past a deadline


class BusNode:
    """The bus side of one agent. ``await start()``, then use it; ``await close()`` at the end.

    ``parent`` and ``peers`` are HTTP ``host:port`` addresses (endpoints discovered with
    ``discover``, default ``GET /api/bus``) or fixed :class:`Endpoints`. With a ``token``, this
    node sends it in its hellos and refuses a child's or peer's hello without the same one
    (clients are checked per request by the handler instead). With ``events`` (kinds), the only
    events it takes from its children and peers are those of these kinds addressed to it or to
    any neighbour (``publish_event(..., to=)``); without, every event they publish.
    """

    def __init__(self, node_id: str, *, http: str = "",
                 router: str = "tcp://127.0.0.1:0", pub: str = "tcp://127.0.0.1:0",
                 parent: str | Endpoints | None = None, peers: Sequence[str | Endpoints] = (),
                 snapshot: Callable[[], dict[str, Any]] = dict,
                 summary: Callable[[], dict[str, Any] | None] | None = None,
                 handler: Handler | None = None,
                 on_neighbour: Callable[[NeighbourState], None] | None = None,
                 on_event: Callable[[NeighbourState, Event], None] | None = None,
                 events: Sequence[str] | None = None,
                 heartbeat_interval: float = 1.0, heartbeat_misses: int = 3,
                 request_timeout: float = 5.0, retry_max: float = 5.0,
                 curve: CurveKeys | None = None, discover: Discover | None = None,
                 advertise_host: str | None = None, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        Hello(node_id=node_id, role="child").validate()   # a bad id fails here, not on the wire
        if not 0 < heartbeat_interval <= 3600 or heartbeat_misses < 1:
            raise ValueError("heartbeat_interval must be in (0, 3600] s and heartbeat_misses >= 1")
        self.node_id = node_id
        self.http = http
        self.epoch = new_epoch()
        self._bind = (router, pub)
        self._targets: list[tuple[str, str | Endpoints]] = (
            ([("parent", parent)] if parent else []) + [("peer", p) for p in peers])
        # What this node's SUB takes from a child's or a peer's PUB: everything, or (``events``
        # given) their updates and the events of those kinds addressed to this node (or to any
        # neighbour); from its parent only updates. Nothing else wakes it.
        self._neighbour_topics: tuple[bytes, ...] = (b"",) if events is None else (
            TOPIC_UPDATE, *(event_topic(kind, to) for kind in events for to in (node_id, TO_ANY)))
        self.interval = heartbeat_interval
        self.misses = heartbeat_misses
        self.request_timeout = request_timeout
        self._retry_max = retry_max
        self._curve = curve
        self._token = token
        self._discover = discover or (lambda address: discover_http(address, timeout=2.0))
        self._advertise = advertise_host
        self._clock = clock
        self._neighbours = Neighbours(heartbeat_misses)
        self._view = NeighbourView(self._neighbours, clock, on_neighbour, on_event)
        self._pending = PendingReplies()
        self._dispatcher = Dispatcher(node_id, handler)
        self._admission = Admission(node_id, self._neighbours, interval=heartbeat_interval,
                                    token=token, curve=curve)
        # What is read on every request and link message, held here too (the same dicts and
        # methods): no lookup through the object that keeps them on those paths.
        self._heard = self._view.heard
        self._take_snapshot = self._view.take_snapshot
        self._identity_of = self._admission.identity_of    # node id -> ROUTER identity
        self._links = Links(node_id, self._neighbours, self._identity_of,
                            interval=heartbeat_interval, misses=heartbeat_misses, clock=clock)
        self._link_of = self._links.of                     # node id -> the link that joined it
        self._quiet = self._links.quiet
        self._beats = Heartbeats(node_id, self.epoch, interval=heartbeat_interval,
                                 snapshot=snapshot, summary=summary, neighbours=self._neighbours,
                                 links=self._links, identity_of=self._identity_of,
                                 send_router=self._send_router, clock=clock)
        self._snapshot = snapshot
        self._summary = summary
        self._subs = Subscriptions(node_id, curve=curve, on_update=self._view.take_snapshot,
                                   on_event=self._view.take_event, on_refused=self._view.refused,
                                   on_bad=self._view.reject_frame)
        self._router_side = RouterSide(node_id, admission=self._admission,
                                       neighbours=self._neighbours, view=self._view,
                                       links=self._links, beats=self._beats, subs=self._subs,
                                       pending=self._pending, dispatcher=self._dispatcher,
                                       welcome=self._welcome, interval=heartbeat_interval,
                                       clock=clock, topics=self._neighbour_topics)
        self._context: zmq.asyncio.Context | None = None
        self._auth: Any = None
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.router_endpoint = ""
        self.pub_endpoint = ""
        self._link_drops = DropLog(log, f"{node_id} links")

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind, connect the links and start the tick; endpoints are known when it returns."""
        self._context = zmq.asyncio.Context()
        if self._curve is not None:
            self._auth = start_authenticator(self._context, self._curve, owner=self.node_id)
        self._router = new_socket(self._context, zmq.ROUTER)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._pub = new_socket(self._context, zmq.PUB)
        for sock in (self._router, self._pub):
            if self._curve is not None:
                self._curve.make_server(sock)
        self._router_side.sock = self._router
        self.router_endpoint = self._bind_to(self._router, self._bind[0])
        self.pub_endpoint = self._bind_to(self._pub, self._bind[1])
        log.info("bus node %s: router %s, pub %s%s", self.node_id, self.router_endpoint,
                 self.pub_endpoint, ", curve on" if self._curve else "")
        self._beats.next_beat = self._clock()
        self._subs.open(self._context)
        self._tasks = [asyncio.create_task(self._router_side.run(), name="bus-router"),
                       asyncio.create_task(self._tick_loop(), name="bus-tick")]
        for kind, target in self._targets:
            link = Link(kind, target, context=self._context, make_hello=lambda k=kind: self._hello(k),
                        on_message=self._on_link_message, on_joined=self._on_link_joined,
                        on_down=self._on_link_down, on_bad=self._on_link_bad,
                        discover=self._discover,
                        interval=self.interval, misses=self.misses, retry_max=self._retry_max,
                        curve=self._curve, clock=self._clock)
            self._links.add(link)

    async def close(self) -> None:
        """Say bye to every neighbour, stop all tasks and close every socket (linger 0)."""
        if self._context is None:
            return
        await self._links.close("node shutting down")
        bye = encode(Bye(node_id=self.node_id, reason="node shutting down"))
        byes = sum(send_now(self._router, [identity, *bye]) for identity in self._identity_of.values())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self._subs.close(), return_exceptions=True)
        self._tasks.clear()
        await self._dispatcher.close()
        self._pending.fail_all(BusError("bus node closed", code="closed"))
        close_socket(self._router, BYE_LINGER_MS if byes else 0)
        close_socket(self._pub)
        if self._auth is not None:
            self._auth.stop()
        if self._context is not None:
            self._context.term()
        self._context = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _bind_to(self, sock: zmq.asyncio.Socket, endpoint: str) -> str:
        sock.bind(endpoint)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        parts = urlsplit(bound)
        host = self._advertise or ("127.0.0.1" if parts.hostname in _WILDCARD_HOSTS else None)
        if host:
            return urlunsplit((parts.scheme, f"{host}:{parts.port}", "", "", ""))
        return bound

    # ----------------------------------------------------------------- what the agent uses

    def describe(self) -> dict[str, Any]:
        """The JSON document the agent serves at ``GET /api/bus``."""
        doc: dict[str, Any] = {"node_id": self.node_id, "router": self.router_endpoint,
                               "pub": self.pub_endpoint, "protocol": VERSION.decode()}
        if self._curve is not None:
            doc["curve_key"] = self._curve.public_text
        return doc

    def neighbours(self) -> list[NeighbourState]:
        """Copies of every neighbour's state (parent, children, peers; alive and lost)."""
        return [state.copy() for state in self._neighbours.all()]

    @property
    def view_version(self) -> int:
        """+1 whenever what ``neighbours()`` shows changes (a join, a new snapshot or summary, a
        loss, a refusal): what was made from one reading of it holds while this stands."""
        return self._view.version

    def neighbour(self, node_id: str) -> NeighbourState | None:
        state = self._neighbours.get(node_id)
        return state.copy() if state is not None else None

    @property
    def bad_frames(self) -> int:
        """Messages dropped or answered with an error since start (ROUTER, SUBs and links)."""
        return self._router_side.drops.total + self._subs.drops.total + self._link_drops.total

    def publish(self, snapshot: dict[str, Any] | None = None) -> None:
        """Broadcast the current snapshot on PUB now (``snapshot()`` is called when not given)."""
        msg = Update(node_id=self.node_id, epoch=self.epoch, seq=self._beats.next_seq(),
                     snapshot=self._snapshot() if snapshot is None else snapshot,
                     sent_at=time.time(), summary=self._summary() if self._summary else None)
        send_now(self._pub, encode(msg, topic=TOPIC_UPDATE))

    def beat_up(self) -> bool:
        """Tell the parent alone what changed below this node, now (a beat out of turn, see
        :meth:`Heartbeats.beat_up`); False without a joined parent link."""
        return self._beats.beat_up(self._clock())

    def publish_event(self, kind: str, data: dict[str, Any], to: str | None = None) -> None:
        """Broadcast an event (``kind`` a short lower-case name) on PUB under ``event.<kind>``,
        or under ``event.<kind>@<to>/`` for neighbour ``to`` alone (:func:`event_topic`)."""
        msg = Event(node_id=self.node_id, epoch=self.epoch, seq=self._beats.next_seq(), kind=kind,
                    data=data, sent_at=time.time())
        msg.validate()
        send_now(self._pub, encode(msg, topic=event_topic(kind, to)))

    async def request(self, node_id: str, op: str, args: dict[str, Any] | None = None, *,
                      timeout: float | None = None, token: str | None = None, hops: int = 0,
                      visited: Sequence[str] = ()) -> Reply:
        """Send ``op`` to neighbour ``node_id`` and return its :class:`Reply` (ok or error).

        Raises :class:`Unreachable` when it is not a joined, alive neighbour and
        :class:`RequestTimeout` when no reply comes within ``timeout`` (default
        ``request_timeout``); ``ValueError`` for a malformed op or args.
        """
        req = Request(corr_id=new_corr_id(), op=op, args=args or {}, token=token, hops=hops,
                      visited=list(visited), blobs=True)
        req.validate()
        send, via = self._route(node_id)
        frames = encode(req)
        future = self._pending.expect(req.corr_id, node_id, via)
        if not send(frames):
            self._pending.discard(req.corr_id)
            raise Unreachable(f"cannot send {op!r} to {node_id}: link down or queue full")
        wait = self.request_timeout if timeout is None else timeout
        reply = await self._pending.wait(req.corr_id, future, wait, f"{op!r} sent to {node_id}")
        if reply.ok:
            try:
                reply.result = check_result(op, reply.result, reply.blob)
            except ValueError as exc:
                self._view.refused(node_id, f"reply to {op}: {exc}", self._link_drops)
                return Reply(corr_id=reply.corr_id, ok=False, node_id=reply.node_id, error={
                    "code": "bad_reply", "message": f"{node_id} answered {op!r} with a "
                                                    f"malformed result: {exc}"[:500],
                    "details": {"status": 502, "node_id": node_id}})
        return reply

    async def call(self, node_id: str, op: str, args: dict[str, Any] | None = None,
                   **kwargs: Any) -> dict[str, Any]:
        """Like :meth:`request` but return the result, raising :class:`RemoteError` on an error reply."""
        reply = await self.request(node_id, op, args, **kwargs)
        if not reply.ok:
            err = reply.error or {}
            raise RemoteError(str(err.get("code", "error")), str(err.get("message", "")),
                              err.get("details") if isinstance(err.get("details"), dict) else None)
        return reply.result or {}

    def _route(self, node_id: str) -> tuple[Callable[[list[bytes]], bool], str]:
        """How to send to ``node_id``, and on which connection: our ``link`` to it when it is
        joined, else the ``router`` connection it joined us on."""
        state = self._neighbours.get(node_id)
        if state is None:
            raise Unreachable(f"{node_id} is not a neighbour of {self.node_id}")
        if state.status == LOST:
            raise Unreachable(f"{node_id} is lost (silent for {state.age(self._clock()):.1f} s)")
        link = self._link_of.get(node_id)
        if link is not None and link.joined and not self._quiet(link, self._clock()):
            return link.send_frames, "link"
        identity = self._identity_of.get(node_id)
        if identity is not None:     # a child, a client-side peer, or a peer's beating link
            return (lambda frames: send_now(self._router, [identity, *frames])), "router"
        if link is not None and link.joined:
            return link.send_frames, "link"
        raise Unreachable(f"no open link to {node_id}")

    def _send_router(self, identity: bytes, frames: list[bytes]) -> bool:
        return send_now(self._router, [identity, *frames])

    # ----------------------------------------------------------------- ticking

    def tick(self) -> None:
        """One round of timers: heartbeats when due, link liveness, neighbour expiry."""
        now = self._clock()
        self._beats.tick(now)
        self._links.tick(now)
        for state in self._neighbours.expire(now):
            log.warning("%s %s lost: silent for %.1f s", state.role, state.node_id, state.age(now))
            self._pending.fail_to(state.node_id, "was lost")
            self._view.fire(state)

    async def _tick_loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("bus tick failed")
            await asyncio.sleep(self._until_due())

    def _until_due(self) -> float:
        """Seconds until the tick has work: the next heartbeat, or the moment a neighbour or a
        joined link will have been silent too long; never more than one interval. So an idle
        node wakes once a heartbeat, and a silent neighbour is marked lost on time."""
        now = self._clock()
        due = self._beats.next_beat
        for state in self._neighbours.all():
            if state.status != LOST:
                expires = state.last_seen + self.misses * state.interval
                if now < expires < due:
                    due = expires
        due = self._links.due(now, due)
        # Just past it: "silent for more than the window" then holds, and a timer that fires a
        # hair early costs no second wake-up.
        return min(self.interval, max(due - now, 0.0)) + _TICK_SLACK

    def _hello(self, kind: str) -> Hello:
        return Hello(node_id=self.node_id, role="child" if kind == "parent" else "peer",
                     protocol=PROTOCOL, epoch=self.epoch, router=self.router_endpoint,
                     pub=self.pub_endpoint, http=self.http, interval=self.interval,
                     curve_key=self._curve.public_text if self._curve else None,
                     token=self._token)

    def _welcome(self, role: str, session: str = "") -> Welcome:
        return Welcome(node_id=self.node_id, role=role, protocol=PROTOCOL, epoch=self.epoch,
                       router=self.router_endpoint, pub=self.pub_endpoint, http=self.http,
                       interval=self.interval, session=session,
                       curve_key=self._curve.public_text if self._curve else None)

    # ----------------------------------------------------------------- link callbacks

    def _on_link_joined(self, link: Link, welcome: Welcome) -> None:
        state = self._links.joined(link, welcome)
        if state is None:
            return
        # What went out on this link's last socket is lost; what went through the connection
        # the neighbour joined us on (a peer's own link) is not.
        self._pending.fail_to(welcome.node_id, "joined again (a new session)", via="link")
        # From a parent only its snapshots: its events are of workloads it placed below it or
        # on its peers, never through this node (a child mirrors nothing through its parent),
        # and each one would wake every child of it for nothing.
        self._subs.follow(welcome.node_id, welcome.pub, welcome.curve_key,
                          (TOPIC_UPDATE,) if link.kind == "parent" else self._neighbour_topics)
        self._view.fire(state)
        # The first heartbeat at once: the parent sees us now.
        frames = self._beats.frames(upward=link.kind == "parent")
        if frames is not None:
            link.send_frames(frames)

    def _on_link_down(self, link: Link, reason: str) -> None:
        state = self._links.down(link, reason)
        if state is not None:
            self._pending.fail_to(state.node_id, "was lost")
            self._view.fire(state)

    def _on_link_message(self, link: Link, msg: Message) -> None:
        if link.node_id is not None and self._neighbours.is_lost(link.node_id):
            # We gave up on it while this link still stood: shake hands again first.
            link.restart(f"{link.node_id} was marked lost; a new handshake")
            return
        if isinstance(msg, Heartbeat):
            if msg.node_id == link.node_id:
                self._take_snapshot(msg, self._link_drops)
        elif isinstance(msg, Request):
            if link.node_id is not None:
                self._heard(link.node_id)
            self._dispatcher.dispatch(msg, Sender(link.node_id, link.kind), link.send_frames)
        elif isinstance(msg, Reply):
            self._pending.resolve(msg)

    def _on_link_bad(self, link: Link, err: ProtocolError) -> None:
        if link.node_id is not None:
            self._view.reject_frame(link.node_id, err)
