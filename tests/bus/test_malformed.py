"""Hostile neighbours at a live node: thousands of bad frames, junk payloads from a fake child,
publications in another node's name, an impostor of an alive node. Each gets an error reply
or a drop noted on its own entry only; the node, its other neighbours and its answers go on."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Self

import msgpack
import zmq
import zmq.asyncio

from bus import BusClient, BusNode, Request, Sender
from bus import protocol as p

from .harness import FAST, endpoints, running, status, until


class RawNeighbour:
    """A hand-driven DEALER (and a PUB of its own) that speaks the protocol: a fake neighbour."""

    def __init__(self, router: str):
        self.context = zmq.asyncio.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.connect(router)
        self.pub = self.context.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind("tcp://127.0.0.1:*")
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.dealer.close(linger=0)
        self.pub.close(linger=0)
        self.context.term()

    async def send(self, msg: p.Message) -> None:
        await self.dealer.send_multipart(p.encode(msg))     # encode checks no payload

    async def answers(self, wait: float = 0.2) -> list[p.Message]:
        """Everything that came back until ``wait`` s pass without a message."""
        out = []
        while await self.dealer.poll(int(wait * 1000)):
            out.append(p.decode(await self.dealer.recv_multipart()))
        return out

    async def hello(self, node_id: str, epoch: int = 1, **fields: Any) -> p.Message:
        await self.send(p.Hello(node_id=node_id, role="child", epoch=epoch, pub=self.pub_endpoint,
                                **fields))
        return (await self.answers())[0]

    def publish(self, msg: p.Update | p.Event, to: str | None = None) -> None:
        """Send ``msg`` on our PUB (an event addressed to node ``to``, if given)."""
        topic = p.TOPIC_UPDATE if isinstance(msg, p.Update) else p.event_topic(msg.kind, to)
        self.pub.send_multipart(p.encode(msg, topic=topic))

    async def read_epoch(self, pub: str, publish: Callable[[], None]) -> int:
        """A node's epoch, read off its PUB at ``pub`` as anyone can (``publish`` makes it
        broadcast until our SUB has joined)."""
        spy = self.context.socket(zmq.SUB)
        spy.linger = 0
        spy.setsockopt(zmq.SUBSCRIBE, b"")
        spy.connect(pub)
        try:
            deadline = time.monotonic() + 5.0
            while not await spy.poll(20):
                assert time.monotonic() < deadline, f"nothing published on {pub}"
                publish()
            return p.decode_published(await spy.recv_multipart())[1].epoch
        finally:
            spy.close(linger=0)


def beat(node_id: str, epoch: int = 1, seq: int = 1, **fields: Any) -> p.Heartbeat:
    return p.Heartbeat(node_id=node_id, epoch=epoch, seq=seq, sent_at=0.0,
                       **{"snapshot": {}, **fields})


def hostile_frames(rng: random.Random) -> list[list[bytes]]:
    good = p.encode(p.Request(corr_id="c1", op="get"))
    hb = p.encode(p.Heartbeat(node_id="mallory", epoch=1, seq=1, snapshot={}, sent_at=0.0))
    kinds = [
        lambda: [rng.randbytes(rng.randrange(0, 64))],
        lambda: [rng.randbytes(8) for _ in range(rng.randrange(2, 9))],
        lambda: [b"CNET9", b"request", good[2]],
        lambda: [p.VERSION, b"nonsense", good[2]],
        lambda: [p.VERSION, b"request", rng.randbytes(40)],
        lambda: [p.VERSION, b"request", msgpack.packb({"corr_id": "c9", "op": 7})],
        lambda: [p.VERSION, b"hello", msgpack.packb({"node_id": "", "role": "child"})],
        lambda: [p.VERSION, b"reply", msgpack.packb({"corr_id": "nobody", "ok": True})],
        lambda: [p.VERSION, b"update", good[2]],
        lambda: hb,                                    # a heartbeat without a hello
        lambda: [p.VERSION, b"request", b"\xdf\xff\xff\xff\xff"],  # map claiming 4G entries
        lambda: [p.VERSION, b"request", b"\x91" * 100_000],      # deep nesting
    ]
    return [rng.choice(kinds)() for _ in range(3000)]


async def handle(request: Request, sender: Sender) -> dict:
    return {"ok": True}


async def test_flood_of_malformed_frames_does_not_stop_the_node() -> None:
    parent = BusNode("jiangsu", handler=handle, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: {"cpu": 1}, **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
            context = zmq.asyncio.Context()
            raw = context.socket(zmq.DEALER)
            raw.linger = 0
            raw.connect(parent.router_endpoint)
            try:
                start_seq = parent.neighbour("nanjing").seq
                frames = hostile_frames(random.Random(7))
                for i, message in enumerate(frames):
                    await raw.send_multipart(message)
                    if i % 200 == 0:
                        await asyncio.sleep(0.01)
                await until(lambda: parent.bad_frames >= 2000, 10.0, "bad frames counted")
                # Error replies came back to the raw socket, each decodable.
                answers = []
                while await raw.poll(100):
                    answers.append(p.decode(await raw.recv_multipart()))
                assert answers and all(isinstance(a, (p.Reply, p.Refuse)) for a in answers)
                assert any(isinstance(a, p.Reply) and not a.ok for a in answers)
                # Heartbeats kept flowing and the node still serves.
                await until(lambda: parent.neighbour("nanjing").seq > start_seq + 5)
                assert status(parent, "nanjing") == "alive" and status(child, "jiangsu") == "alive"
                async with BusClient(parent.router_endpoint, timeout=2.0) as client:
                    assert await client.call("get") == {"ok": True}
            finally:
                raw.close(linger=0)
                context.term()


async def test_oversized_frame_drops_only_that_connection() -> None:
    node = BusNode("jiangsu", handler=handle, **FAST)
    async with running(node):
        context = zmq.asyncio.Context()
        raw = context.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(node.router_endpoint)
        try:
            await raw.send_multipart([p.VERSION, b"request", b"\x00" * (p.MAX_FRAME_SIZE + 4096)])
            async with BusClient(node.router_endpoint, timeout=2.0) as client:
                assert await client.call("get") == {"ok": True}
        finally:
            raw.close(linger=0)
            context.term()


async def who(request: Request, sender: Sender) -> dict:
    return {"me": "the real nanjing"}


async def test_junk_payloads_from_a_fake_child_mark_only_its_entry() -> None:
    parent = BusNode("jiangsu", handler=handle, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: {"cpu": 3.0}, **FAST)
        async with running(child), RawNeighbour(parent.router_endpoint) as fake:
            await until(lambda: status(parent, "nanjing") == "alive")
            welcome = await fake.hello("mallory")   # it beats at 1 s: alive for 3 s here
            assert isinstance(welcome, p.Welcome) and welcome.session
            for junk, where in [({"summary": {"nodes": "many"}}, "summary.nodes"),
                                ({"snapshot": {"workloads": [1]}}, "snapshot.workloads"),
                                ({"snapshot": {"available": {"cpu": 1e12}}}, "available.cpu")]:
                await fake.send(beat("mallory", seq=2, **junk))
                (answer,) = await fake.answers()
                assert isinstance(answer, p.Reply) and answer.error["code"] == "bad_field"
                assert where in parent.neighbour("mallory").rejected
            mallory = parent.neighbour("mallory")
            assert mallory.snapshot == {} and mallory.seq == -1 and mallory.rejections == 3
            nanjing = parent.neighbour("nanjing")
            assert nanjing.snapshot == {"cpu": 3.0} and nanjing.rejected == ""
            async with BusClient(parent.router_endpoint, timeout=2.0) as client:
                assert await client.call("get") == {"ok": True}


async def test_a_neighbour_cannot_publish_in_another_nodes_name() -> None:
    parent = BusNode("jiangsu", **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: {"cpu": 3.0}, **FAST)
        async with running(child), RawNeighbour(parent.router_endpoint) as fake:
            await until(lambda: status(parent, "nanjing") == "alive")
            assert isinstance(await fake.hello("mallory"), p.Welcome)   # parent follows its PUB
            real = parent.neighbour("nanjing")

            def forged() -> str:
                fake.publish(p.Update(node_id="nanjing", epoch=real.epoch, seq=real.seq + 1,
                                      snapshot={"cpu": 1.0}, sent_at=0.0))
                return parent.neighbour("mallory").rejected
            assert "published as nanjing" in await until(forged, 5.0, "the forgery to arrive")
            await asyncio.sleep(0.3)
            assert parent.neighbour("nanjing").snapshot == {"cpu": 3.0}


async def test_an_impostor_cannot_take_over_an_alive_node() -> None:
    """The issue's attack: B's epoch read off B's PUB, a hello as B with it every 100 ms and a
    heartbeat of seq 2**62. The parent keeps B's view and sends B's requests to B."""
    parent = BusNode("jiangsu", **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: {"cpu": 3.0},
                        handler=who, **FAST)
        async with running(child), RawNeighbour(parent.router_endpoint) as impostor:
            await until(lambda: status(parent, "nanjing") == "alive")
            epoch = await impostor.read_epoch(child.pub_endpoint, child.publish)
            assert epoch == child.epoch                   # no credential needed to read it
            views, answers = [], []
            for _ in range(15):
                await impostor.send(p.Hello(node_id="nanjing", role="child", epoch=epoch,
                                            pub=impostor.pub_endpoint))
                await impostor.send(beat("nanjing", epoch, 2**62, snapshot={"cpu": 1.0}))
                answers += await impostor.answers(0.1)
                views.append(parent.neighbour("nanjing").snapshot)
            assert views == [{"cpu": 3.0}] * 15
            assert answers and all(isinstance(a, p.Refuse) for a in answers)
            assert {a.code for a in answers} == {"duplicate_node", "hello_required"}
            assert await parent.call("nanjing", "whoami") == {"me": "the real nanjing"}
            assert await impostor.answers(0.1) == []     # no request reached the impostor
            seq = parent.neighbour("nanjing").seq
            await until(lambda: parent.neighbour("nanjing").seq > seq, what="B's beats, taken")
            state = parent.neighbour("nanjing")
            assert (state.status, state.snapshot, state.epoch) == ("alive", {"cpu": 3.0}, epoch)


async def test_a_link_that_reconnects_rejoins_at_once_with_its_session() -> None:
    """A child's new DEALER (its link restarted) is let in while its old connection is still
    alive at the parent: its hello shows the session of its last welcome."""
    slow = {**FAST, "heartbeat_interval": 1.0}          # the old connection is alive for 3 s
    parent = BusNode("jiangsu", **slow)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), **slow)
        async with running(child):
            link = child._links.all[0]
            # Both ends: a link restarted before its welcome came has no session to show.
            await until(lambda: status(parent, "nanjing") == "alive" and link.joined)
            joins = parent.neighbour("nanjing").joins
            seen = set()

            def rejoined() -> bool:
                seen.add(status(parent, "nanjing"))
                return parent.neighbour("nanjing").joins > joins

            link.restart("test: a new DEALER")
            await until(rejoined, 2.0, "the re-join")
            assert seen == {"alive"}     # let in at once, not once the old connection was lost
            await until(lambda: status(child, "jiangsu") == "alive", 2.0)
            assert status(parent, "nanjing") == "alive"
