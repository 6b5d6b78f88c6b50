"""Two peers that list each other: one connection carries the pair's heartbeats (the link of
the lower node id; the other beats back over it and leaves its own link quiet), and the pair's
liveness is still driven from either side: a side that stops beating leaves the other beating
on its own link, and a killed one is lost within misses x interval."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from bus import BusNode
from bus.protocol import Heartbeat

from ..ports import free_port
from .harness import FAST, Directory, NodeProcess, endpoints, running, status, until
from .test_links import echo

STEP = {**FAST, "heartbeat_interval": 1.0}   # on a clock the test moves by hand
INTERVAL, MISSES = FAST["heartbeat_interval"], FAST["heartbeat_misses"]


class Clock:
    """Monotonic seconds moved by hand. ``reading`` is one node's, which ``hold`` stops (it then
    beats no more; it still answers what it is sent) and ``release`` lets go on from there."""

    def __init__(self) -> None:
        self.now = 100.0
        self._held_at: float | None = None
        self._lag = 0.0

    def __call__(self) -> float:
        return self.now

    def reading(self) -> float:
        return (self.now if self._held_at is None else self._held_at) - self._lag

    def hold(self) -> None:
        self._held_at = self.now

    def release(self) -> None:
        if self._held_at is not None:
            self._lag += self.now - self._held_at
            self._held_at = None


def count_beats(node: BusNode, counts: Counter) -> None:
    """Count the heartbeats ``node`` takes, by where they come in (its ROUTER or a link)."""
    on_router, on_link = node._router_side.on_message, node._on_link_message

    def router(identity, msg):
        if isinstance(msg, Heartbeat):
            counts[node.node_id, "router"] += 1
        on_router(identity, msg)

    def link(link, msg):
        if isinstance(msg, Heartbeat):
            counts[node.node_id, "link"] += 1
        on_link(link, msg)

    node._router_side.on_message, node._on_link_message = router, link


def pair(clock: Clock, counts: Counter) -> tuple[Directory, BusNode, BusNode]:
    book = Directory()
    low = BusNode("anhui", peers=["z:1"], discover=book.discover, handler=echo,
                  snapshot=lambda: {"n": "anhui"}, clock=clock.reading, **STEP)
    high = BusNode("zhejiang", peers=["a:1"], discover=book.discover, handler=echo,
                   snapshot=lambda: {"n": "zhejiang"}, clock=clock, **STEP)
    count_beats(low, counts)
    count_beats(high, counts)
    return book, low, high


async def linked(book: Directory, low: BusNode, high: BusNode) -> None:
    book.add("a:1", low)
    book.add("z:1", high)
    await until(lambda: all((s := a.neighbour(b.node_id)) is not None and s.status == "alive"
                            and s.seq >= 0 for a, b in ((low, high), (high, low))),
                what="both links joined, a snapshot each way")


async def step(clock: Clock, *nodes: BusNode, heard: list[tuple[BusNode, BusNode]]) -> None:
    """One interval on: each node ticks; wait until each (viewer, node) pair in ``heard`` has
    the viewer hearing that node at the new time."""
    clock.now += 1.0
    for node in nodes:
        node.tick()
    await until(lambda: all(v.neighbour(n.node_id).last_seen == v._clock() for v, n in heard),
                what="this step's heartbeats")


async def test_one_connection_carries_the_beats_and_requests_go_both_ways() -> None:
    clock, counts = Clock(), Counter()
    book, low, high = pair(clock, counts)
    async with running(low, high):
        await linked(book, low, high)
        both = [(low, high), (high, low)]
        await step(clock, low, high, heard=both)
        assert high._quiet(high._link_of["anhui"], clock.now)
        counts.clear()
        for _ in range(5):
            await step(clock, low, high, heard=both)
        # anhui's link beats (zhejiang's ROUTER takes them) and zhejiang beats back over it;
        # zhejiang's own link carries nothing, and nobody answers a beat.
        assert counts == {("zhejiang", "router"): 5, ("anhui", "link"): 5}
        assert low.neighbour("zhejiang").snapshot == {"n": "zhejiang"}
        assert high.neighbour("anhui").snapshot == {"n": "anhui"}
        # Requests both ways come from a peer (the quiet side's go over anhui's connection).
        assert await high.call("anhui", "get") == {
            "args": {}, "from": "zhejiang", "role": "peer", "hops": 0, "visited": []}
        assert (await low.call("zhejiang", "get"))["role"] == "peer"
        assert counts[("anhui", "router")] == counts[("zhejiang", "link")] == 0


async def test_when_the_beating_side_stops_the_other_beats_on_its_own_link() -> None:
    """anhui stands still (its clock held: it beats no more, it still answers); zhejiang goes
    on beating, on its own link once anhui's beats are 1.5 intervals late, and is answered:
    nobody is lost, and zhejiang's link never restarts."""
    clock, counts = Clock(), Counter()
    book, low, high = pair(clock, counts)
    async with running(low, high):
        await linked(book, low, high)
        await step(clock, low, high, heard=[(low, high), (high, low)])
        clock.hold()
        link = high._link_of["anhui"]
        counts.clear()
        await step(clock, low, high, heard=[])              # still quiet: beats back on anhui's
        await until(lambda: counts[("anhui", "link")] == 1, what="zhejiang's beat back")
        counts.clear()
        for _ in range(2 * MISSES):
            await step(clock, low, high, heard=[(high, low)])   # answered on its own link
        assert counts[("anhui", "router")] == 2 * MISSES
        assert status(high, "anhui") == status(low, "zhejiang") == "alive"
        assert high._link_of["anhui"] is link and link.joined
        assert not high._quiet(link, clock.now)

        clock.release()                                     # anhui beats again: quiet again
        await step(clock, low, high, heard=[(low, high), (high, low)])
        await step(clock, low, high, heard=[(low, high), (high, low)])
        assert high._quiet(link, clock.now)


@pytest.mark.parametrize("killed", ["anhui", "zhejiang"])
async def test_a_killed_peer_is_lost_within_the_window_whichever_side_beats(killed: str) -> None:
    """kill -9 of the side whose link beats, or of the side that beats back over it."""
    survivor_id = "zhejiang" if killed == "anhui" else "anhui"
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = NodeProcess(killed, "--peer", f"{router},{pub}")
    try:
        await proc.start()
        survivor = BusNode(survivor_id, router=router, pub=pub, peers=[proc.endpoints], **FAST)
        async with running(survivor):
            await until(lambda: status(survivor, killed) == "alive" and proc.saw(survivor_id, "alive"))
            quiet = survivor if survivor_id > killed else None
            if quiet is not None:
                await until(lambda: quiet._quiet(quiet._link_of[killed], time.monotonic()),
                            what=f"{survivor_id}'s own link quiet")
            proc.kill()
            killed_at = time.monotonic()
            await until(lambda: status(survivor, killed) == "lost", MISSES * INTERVAL + 2.0)
            elapsed = time.monotonic() - killed_at
            assert elapsed <= MISSES * INTERVAL + 1.0, f"lost after {elapsed:.2f} s"   # CI slack
    finally:
        await proc.stop()


async def test_a_parent_beats_back_to_its_child_at_its_own_tick_instead_of_answering() -> None:
    """The child's first beat after the handshake is answered; then the parent beats back over
    the child's connection at each of its own ticks (two messages an interval, as before), and
    answers again once a beat comes after a silence."""
    clock, counts = Clock(), Counter()
    parent = BusNode("jiangsu", snapshot=lambda: {"n": "jiangsu"}, clock=clock, **STEP)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: {"n": "nanjing"},
                        summary=lambda: {"nodes": 1}, clock=clock.reading, **STEP)
        count_beats(parent, counts)
        count_beats(child, counts)
        async with running(child):
            await until(lambda: (s := child.neighbour("jiangsu")) is not None and s.seq >= 0,
                        what="the answer to the child's first beat")
            both = [(parent, child), (child, parent)]
            await step(clock, parent, child, heard=both)
            counts.clear()
            for _ in range(5):
                await step(clock, parent, child, heard=both)
            assert counts == {("jiangsu", "router"): 5, ("nanjing", "link"): 5}
            assert parent.neighbour("nanjing").summary == {"nodes": 1}   # it goes upward only
            assert child.neighbour("jiangsu").summary is None
            clock.hold()                                    # the child stands still
            counts.clear()
            await step(clock, parent, child, heard=[])      # its last beat is 1 interval old
            await until(lambda: counts[("nanjing", "link")] == 1, what="the beat back")
            await step(clock, parent, child, heard=[])      # 2 intervals: nothing back
            clock.release()
            await step(clock, parent, child, heard=both)    # a beat after a silence: answered
            assert counts == {("nanjing", "link"): 2, ("jiangsu", "router"): 1}
            assert status(parent, "nanjing") == status(child, "jiangsu") == "alive"
