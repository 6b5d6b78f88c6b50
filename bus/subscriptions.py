"""The SUBs that follow neighbours' PUBs: one per PUB endpoint, so a message is known to come
from that PUB (a neighbour cannot publish in another's name), and what each one reads.

A node follows a neighbour once it has shaken hands with it (``follow``); a message published
under another node id than the ones that PUB stands for is refused and counted against them.
Updates and events go to the node's callbacks; frames that do not decode, to ``on_bad``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence

import zmq
import zmq.asyncio

from bus.protocol import Event, Message, ProtocolError, Update, decode_published
from bus.security import CurveKeys
from bus.wire import DropLog, close_socket, new_socket, serve

__all__ = ["Subscriptions"]

log = logging.getLogger("bus.node")


class Subscriptions:
    """The SUB sockets of node ``owner``: ``follow`` a neighbour, ``close`` them all.

    ``on_update(msg, drops)`` and ``on_event(msg, drops)`` take what a followed PUB sends under
    its own node id (``drops`` counts what they refuse); ``on_refused(node_id, reason, drops)``
    hears of a message refused from that neighbour, ``on_bad(node_id, err)`` of a frame that
    did not decode.
    """

    def __init__(self, owner: str, *, curve: CurveKeys | None,
                 on_update: Callable[[Update, DropLog], object],
                 on_event: Callable[[Event, DropLog], None],
                 on_refused: Callable[[str, str, DropLog], None],
                 on_bad: Callable[[str, ProtocolError], None]):
        self._curve = curve
        self._on_update = on_update
        self._on_event = on_event
        self._on_refused = on_refused
        self._on_bad = on_bad
        self._context: zmq.asyncio.Context | None = None
        self._sub_of: dict[str, str] = {}             # node id -> PUB endpoint it publishes on
        # PUB endpoint -> the SUB that follows it and its reader
        self._subs: dict[str, tuple[zmq.asyncio.Socket, asyncio.Task[None]]] = {}
        self.drops = DropLog(log, f"{owner} SUB")

    def open(self, context: zmq.asyncio.Context) -> None:
        self._context = context

    async def close(self) -> None:
        """Stop every reader and close every SUB (linger 0)."""
        subs = list(self._subs.values())
        self._subs.clear()
        self._context = None
        for _sock, task in subs:
            task.cancel()
        await asyncio.gather(*(task for _sock, task in subs), return_exceptions=True)
        for sock, _task in subs:
            close_socket(sock)

    def follow(self, node_id: str, pub: str, curve_key: str | None,
               topics: Sequence[bytes]) -> None:
        """Have a SUB follow ``node_id``'s PUB (once; again if the endpoint changed), for
        ``topics`` (prefixes; the PUB sends nothing else, so nothing else wakes this node)."""
        if self._context is None or not pub or self._sub_of.get(node_id) == pub:
            return
        old = self._sub_of.pop(node_id, None)
        if old is not None and old not in self._sub_of.values():
            self._unfollow(old)
        if pub not in self._subs:
            if self._curve is not None and not self._curve.trusts(curve_key):
                log.error("not subscribing to %s: its curve key is not accepted", node_id)
                return
            sub = new_socket(self._context, zmq.SUB)
            for topic in topics:
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            if self._curve is not None:
                self._curve.make_client(sub, curve_key or "")
            try:
                sub.connect(pub)
            except zmq.ZMQError as exc:
                log.error("not subscribing to %s: cannot connect to %r: %s", node_id, pub, exc)
                close_socket(sub)
                return
            self._subs[pub] = (sub, asyncio.create_task(self._read(pub, sub), name="bus-sub"))
        self._sub_of[node_id] = pub

    def _unfollow(self, endpoint: str) -> None:
        sub, task = self._subs.pop(endpoint, (None, None))
        if task is not None:
            task.cancel()
        close_socket(sub)      # also stops its reader

    def _publishers(self, endpoint: str) -> list[str]:
        return [node_id for node_id, pub in self._sub_of.items() if pub == endpoint]

    def _bad_frame(self, endpoint: str, _frames: list[bytes], err: ProtocolError) -> None:
        for node_id in self._publishers(endpoint):
            self._on_bad(node_id, err)

    async def _read(self, endpoint: str, sub: zmq.asyncio.Socket) -> None:
        # After the replies read in the same turn: a delegation's answer and the snapshot and
        # events it caused arrive together, and the answer's caller is waiting.
        await serve(sub, decode_published, functools.partial(self._take, endpoint), self.drops,
                    functools.partial(self._bad_frame, endpoint), after_replies=True)

    def _take(self, endpoint: str, published: tuple[bytes, Message]) -> None:
        msg, drops = published[1], self.drops
        if self._sub_of.get(msg.node_id) != endpoint:
            for node_id in self._publishers(endpoint):
                self._on_refused(node_id, f"published as {msg.node_id}", drops)
            return
        if isinstance(msg, Update):
            self._on_update(msg, drops)
        elif isinstance(msg, Event):
            self._on_event(msg, drops)
