"""The node's ROUTER side: what comes in on the connections children, peers and clients open
to it (hellos, requests, replies, heartbeats, byes), and the answers that go back on them.

A hello goes to ``admission``; a heartbeat counts only from the connection its node id joined
on (else the sender is asked for a new hello), and the first one after a handshake is answered
with this node's beat; a frame that does not decode is answered (a Refuse to a hello, else an
error reply) and noted on the entry of the neighbour whose connection sent it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import zmq.asyncio

from bus.admission import Admission
from bus.dispatch import Dispatcher, Sender, error_reply
from bus.heartbeats import Heartbeats
from bus.links import Links
from bus.liveness import Neighbours
from bus.pending import PendingReplies
from bus.protocol import (
    Bye,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Refuse,
    Reply,
    Request,
    Welcome,
    decode,
    encode,
)
from bus.refusals import RefusalLog
from bus.subscriptions import Subscriptions
from bus.view import NeighbourView
from bus.wire import DropLog, send_now, serve

__all__ = ["RouterSide"]

log = logging.getLogger("bus.node")


def _split_identity(frames: list[bytes]) -> tuple[bytes, Message]:
    """ROUTER frames are [identity, VERSION, TYPE, BODY]."""
    if len(frames) < 2:
        raise ProtocolError("bad_frame", "frame without a body")
    return frames[0], decode(frames[1:])


class RouterSide:
    """Reads node ``node_id``'s ROUTER (``sock``, set once it is bound) and answers on it.

    ``welcome(role, session)`` is this node's Welcome; the other parts are the node's own.
    """

    def __init__(self, node_id: str, *, admission: Admission, neighbours: Neighbours,
                 view: NeighbourView, links: Links, beats: Heartbeats, subs: Subscriptions,
                 pending: PendingReplies, dispatcher: Dispatcher,
                 welcome: Callable[..., Welcome], interval: float,
                 clock: Callable[[], float], topics: Sequence[bytes] = (b"",)):
        self.node_id = node_id
        self.sock: zmq.asyncio.Socket | None = None
        self.drops = DropLog(log, f"{node_id} ROUTER")
        self._admission = admission
        self._routes = admission.routes
        self._neighbours = neighbours
        self._view = view
        self._heard = view.heard
        self._take_snapshot = view.take_snapshot
        self._link_of = links.of
        self._quiet = links.quiet
        self._beats = beats
        self._subs = subs
        self._pending = pending
        self._dispatcher = dispatcher
        self._welcome = welcome
        self._interval = interval
        self._clock = clock
        self._refusals = RefusalLog(log, clock)
        self._topics = tuple(topics)   # what to follow of a child's or peer's PUB

    async def run(self) -> None:
        if self.sock is None:
            return
        await serve(self.sock, _split_identity, lambda found: self.on_message(*found),
                    self.drops, self._answer_bad_frame)

    def _reply_to(self, identity: bytes) -> Callable[[list[bytes]], bool]:
        return lambda frames: send_now(self.sock, [identity, *frames])

    def _answer_bad_frame(self, frames: list[bytes], err: ProtocolError) -> None:
        if len(frames) < 2:
            return
        identity = frames[0]
        node_id = self._routes.get(identity)
        if node_id is not None:     # a joined neighbour's connection: only its entry says so
            self._view.reject_frame(node_id, err)
        if err.msg_type == "hello":
            log.error("%s refused hello from %s: %s", self.node_id, err.node_id or "an unknown node",
                      err.message)
            reply: Message = Refuse(node_id=self.node_id, code=err.code, reason=err.message)
        else:
            reply = error_reply(err.corr_id, err.code, err.message, self.node_id)
        send_now(self.sock, [identity, *encode(reply)])

    def on_message(self, identity: bytes, msg: Message) -> None:
        """Take one message from connection ``identity``."""
        if isinstance(msg, Hello):
            self._on_hello(identity, msg)
        elif isinstance(msg, Request):
            node_id = self._routes.get(identity)
            state = self._neighbours.get(node_id) if node_id else None
            if state is not None:
                self._heard(state.node_id)
            sender = Sender(node_id, state.role) if state else Sender(None, "client")
            self._dispatcher.dispatch(msg, sender, self._reply_to(identity))
        elif isinstance(msg, Reply):
            self._pending.resolve(msg)
        elif isinstance(msg, Heartbeat):
            if self._routes.get(identity) != msg.node_id or self._neighbours.is_lost(msg.node_id):
                # Unknown here, or given up on: only a new handshake makes it alive again.
                send_now(self.sock, [identity, *encode(Refuse(
                    node_id=self.node_id, code="hello_required", reason="say hello first"))])
                return
            if self._take_snapshot(msg, self.drops):
                # The first beat after a handshake is answered (it asks for our snapshot); later
                # ones are not while our link to it is quiet: our tick beats back instead.
                now = self._clock()
                link = self._link_of.get(msg.node_id)
                beaten_back = (self._quiet(link, now) if link is not None and link.joined
                               else self._neighbours.beating_to_us(msg.node_id, self._interval, now))
                if not beaten_back:
                    answer = self._beats.frames()
                    if answer is not None:
                        send_now(self.sock, [identity, *answer])
                self._neighbours.beat_in(msg.node_id, msg.epoch, now)
        elif isinstance(msg, Bye):
            node_id = self._admission.leave(identity)
            if node_id is not None and self._neighbours.lose(node_id):
                log.info("%s said bye (%s)", node_id, msg.reason or "no reason")
                self._pending.fail_to(node_id, "was lost")
                state = self._neighbours.get(node_id)
                if state is not None:
                    self._view.fire(state)
        else:
            self.drops.drop(f"unexpected {msg.TYPE.decode()} on ROUTER")

    def _refuse(self, identity: bytes, hello: Hello, code: str, reason: str) -> None:
        self._refusals.refused(self.node_id, f"hello from {hello.node_id} ({hello.role})",
                               f"{reason} ({code})", address=hello.router or hello.http or "?",
                               key=hello.curve_key)
        send_now(self.sock, [identity, *encode(Refuse(node_id=self.node_id, code=code,
                                                      reason=reason))])

    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        if hello.role == "client":
            send_now(self.sock, [identity, *encode(self._welcome("server"))])
            return
        refused = self._admission.admit(identity, hello, self._clock())
        if refused is not None:
            return self._refuse(identity, hello, *refused)
        # What went out on its old connection to us is lost; what went on our link to it is not.
        self._pending.fail_to(hello.node_id, "joined again (a new session)", via="router")
        self._subs.follow(hello.node_id, hello.pub, hello.curve_key, self._topics)
        state = self._neighbours.get(hello.node_id)
        send_now(self.sock, [identity, *encode(self._welcome(
            "parent" if state.role == "child" else "peer",
            self._admission.session_of[hello.node_id]))])
        log.info("%s joined %s as %s (router %s)", hello.node_id, self.node_id, state.role,
                 hello.router)
        self._view.fire(state)
