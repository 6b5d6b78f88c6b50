"""Thousands of hostile frames at a live ROUTER: error replies or drops, and heartbeats go on."""

from __future__ import annotations

import asyncio
import random

import msgpack
import zmq
import zmq.asyncio

from bus import BusClient, BusNode, Request, Sender
from bus import protocol as p

from .harness import FAST, endpoints, running, status, until


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
