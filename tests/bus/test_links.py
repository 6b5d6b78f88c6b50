"""Real BusNodes on loopback: joins, heartbeats, broadcasts, bye, request/reply, clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from bus import (
    BusClient,
    BusNode,
    LostInFlight,
    RemoteError,
    Request,
    RequestTimeout,
    Sender,
    Unreachable,
    Watcher,
)

from .harness import FAST, Directory, Recorder, endpoints, running, status, subscribed, until


async def echo(request: Request, sender: Sender) -> dict:
    if request.op == "fail":
        raise RemoteError("not_found", "no such workload", {"id": request.args.get("id")})
    if request.op == "crash":
        raise RuntimeError("handler bug")
    if request.op == "slow":
        await asyncio.sleep(10)
    return {"args": request.args, "from": sender.node_id, "role": sender.role,
            "hops": request.hops, "visited": request.visited}


async def test_parent_and_child_join_and_exchange_snapshots() -> None:
    seen_parent, seen_child = Recorder(), Recorder()
    parent = BusNode("jiangsu", snapshot=lambda: {"cpu": 8}, on_neighbour=seen_parent, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), http="http://127.0.0.1:8081",
                        snapshot=lambda: {"cpu": 4}, summary=lambda: {"nodes": 1},
                        on_neighbour=seen_child, **FAST)
        async with running(child):
            await until(lambda: (parent.neighbour("nanjing") or 0) and
                        parent.neighbour("nanjing").snapshot == {"cpu": 4}, what="child snapshot at parent")
            await until(lambda: (child.neighbour("jiangsu") or 0) and
                        child.neighbour("jiangsu").snapshot == {"cpu": 8}, what="parent snapshot at child")
            at_parent = parent.neighbour("nanjing")
            assert (at_parent.role, at_parent.status, at_parent.http) == ("child", "alive", "http://127.0.0.1:8081")
            assert at_parent.summary == {"nodes": 1} and at_parent.pub == child.pub_endpoint
            assert child.neighbour("jiangsu").role == "parent"
            seq = at_parent.seq
            await until(lambda: parent.neighbour("nanjing").seq > seq + 3, what="heartbeats keep coming")
            assert seen_parent.seen("nanjing", "alive") and seen_child.seen("jiangsu", "alive")


async def test_peers_join_both_ways() -> None:
    book = Directory()
    a = BusNode("suqian", peers=["b:1", "c:1"], discover=book.discover, handler=echo,
                snapshot=lambda: {"n": "a"}, **FAST)
    b = BusNode("changzhou", peers=["a:1"], discover=book.discover, handler=echo,
                snapshot=lambda: {"n": "b"}, **FAST)
    c = BusNode("wuxi", discover=book.discover, snapshot=lambda: {"n": "c"}, **FAST)   # one-sided
    async with running(a, b, c):
        for address, node in (("a:1", a), ("b:1", b), ("c:1", c)):
            book.add(address, node)
        await until(lambda: status(a, "changzhou") == "alive" and status(b, "suqian") == "alive")
        await until(lambda: status(a, "wuxi") == "alive" and status(c, "suqian") == "alive")
        assert {s.role for s in a.neighbours()} == {"peer"} and b.neighbour("suqian").role == "peer"
        await until(lambda: a.neighbour("changzhou").snapshot == {"n": "b"})
        await until(lambda: b.neighbour("suqian").snapshot == {"n": "a"})
        await until(lambda: a.neighbour("wuxi").snapshot == {"n": "c"} and
                    c.neighbour("suqian").snapshot == {"n": "a"})
        assert (await a.call("changzhou", "get"))["role"] == "peer"
        assert (await b.call("suqian", "get"))["from"] == "changzhou"
        unsupported = await a.request("wuxi", "get")        # wuxi serves no requests
        assert not unsupported.ok and unsupported.error["code"] == "unsupported"
        reply = await c.request("suqian", "get")            # back through a's ROUTER identity
        assert reply.ok and reply.result["from"] == "wuxi"


async def test_published_change_arrives_at_once() -> None:
    view: dict = {"cpu": 0}
    parent = BusNode("jiangsu", **{**FAST, "heartbeat_interval": 5.0})
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), snapshot=lambda: dict(view),
                        **{**FAST, "heartbeat_interval": 5.0})
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
            await subscribed(child, parent)
            for value in range(1, 6):
                view["cpu"] = value
                started = time.monotonic()
                child.publish()
                await until(lambda v=value: parent.neighbour("nanjing").snapshot == {"cpu": v}, 1.0)
                assert time.monotonic() - started < 0.5   # no heartbeat could have carried it


async def first_seen(watcher: Watcher, publish) -> object:
    """Publish until the watcher's SUB has joined (the PUB/SUB slow joiner); the first event
    it sees."""
    for _ in range(100):
        publish()
        with contextlib.suppress(RequestTimeout):
            return await watcher.next(timeout=0.05)
    raise AssertionError("the watcher never saw a published event")


async def test_events_reach_neighbours_and_watchers() -> None:
    events = []
    parent = BusNode("jiangsu", on_event=lambda state, ev: events.append((state.node_id, ev)), **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
            await subscribed(child, parent)
            watcher = Watcher(child.pub_endpoint, topics=[b"event."])
            try:
                got = await first_seen(watcher, lambda: child.publish_event(
                    "workload", {"id": "w1", "status": "running"}))
                assert got.kind == "workload" and got.data["id"] == "w1" and got.node_id == "nanjing"
                await until(lambda: events, what="event at parent")
                assert events[0][0] == "nanjing" and events[0][1].data["status"] == "running"
                with pytest.raises(RequestTimeout):
                    await watcher.next(timeout=0.05)
            finally:
                watcher.close()


async def test_bye_marks_lost_at_once_and_rejoin_is_alive() -> None:
    seen = Recorder()
    parent = BusNode("jiangsu", on_neighbour=seen, **{**FAST, "heartbeat_interval": 5.0})
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), **{**FAST, "heartbeat_interval": 5.0})
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
        await until(lambda: status(parent, "nanjing") == "lost", 1.0, "lost on bye, long before 15 s")
        again = BusNode("nanjing", parent=endpoints(parent), **FAST)
        async with running(again):
            await until(lambda: status(parent, "nanjing") == "alive")


async def test_parent_restart_is_rejoined() -> None:
    """The parent closes and a new one starts on other ports; discovery finds it again."""
    book = Directory()
    first = BusNode("jiangsu", **FAST)
    second = BusNode("jiangsu", **FAST)
    child = BusNode("nanjing", parent="jiangsu:8080", discover=book.discover, **FAST)
    async with running(first, child):
        book.add("jiangsu:8080", first)
        await until(lambda: status(first, "nanjing") == "alive" and status(child, "jiangsu") == "alive")
        del book.where["jiangsu:8080"]
        await first.close()
        await until(lambda: status(child, "jiangsu") == "lost", 2.0)
        async with running(second):
            book.add("jiangsu:8080", second)
            await until(lambda: status(second, "nanjing") == "alive", 5.0, "re-joined the new parent")
            await until(lambda: status(child, "jiangsu") == "alive")
            assert child.neighbour("jiangsu").epoch == second.epoch


async def test_parent_restart_on_same_ports_asks_for_hello() -> None:
    first = BusNode("jiangsu", **FAST)
    async with running(first):
        fixed = endpoints(first)
        child = BusNode("nanjing", parent=fixed, **FAST)
        async with running(child):
            await until(lambda: status(first, "nanjing") == "alive")
            first._identity_of.clear()       # crash-like: no bye reaches the child
            await first.close()
            second = BusNode("jiangsu", router=fixed.router, pub=fixed.pub, **FAST)
            async with running(second):
                await until(lambda: status(second, "nanjing") == "alive", 5.0)
                await until(lambda: child.neighbour("jiangsu").epoch == second.epoch)


async def test_duplicate_node_id_is_refused_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    parent = BusNode("jiangsu", **FAST)
    async with running(parent):
        first = BusNode("nanjing", parent=endpoints(parent), **FAST)
        async with running(first):
            await until(lambda: status(parent, "nanjing") == "alive")
            epoch = parent.neighbour("nanjing").epoch
            second = BusNode("nanjing", parent=endpoints(parent), **FAST)
            async with running(second):
                await until(lambda: "refused our hello" in caplog.text, 3.0)
                assert "jiangsu refused hello from nanjing (child)" in caplog.text
                assert "already joined and alive" in caplog.text
                assert status(second, "jiangsu") is None
                # The legitimate link still works.
                assert parent.neighbour("nanjing").epoch == epoch
                seq = parent.neighbour("nanjing").seq
                await until(lambda: parent.neighbour("nanjing").seq > seq)
        self_named = BusNode("jiangsu", parent=endpoints(parent), **FAST)
        async with running(self_named):
            await until(lambda: "is this node's own id" in caplog.text, 3.0)


async def test_request_reply_both_ways_errors_and_timeouts() -> None:
    parent = BusNode("jiangsu", handler=echo, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), handler=echo, **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive" and status(child, "jiangsu") == "alive")
            down = await parent.call("nanjing", "submit", {"id": "w1"}, hops=1, visited=["jiangsu"])
            assert down == {"args": {"id": "w1"}, "from": "jiangsu", "role": "parent", "hops": 1,
                            "visited": ["jiangsu"]}
            up = await child.call("jiangsu", "list")
            assert (up["from"], up["role"]) == ("nanjing", "child")
            reply = await child.request("jiangsu", "fail", {"id": "w9"})
            assert not reply.ok and reply.error == {"code": "not_found", "message": "no such workload",
                                                    "details": {"id": "w9"}}
            with pytest.raises(RemoteError) as caught:
                await parent.call("nanjing", "crash")
            assert caught.value.code == "internal" and "handler bug" in caught.value.message
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="'slow' sent to nanjing"):
                await parent.request("nanjing", "slow", timeout=0.2)
            assert time.monotonic() - started < 1.0
            assert (await parent.call("nanjing", "still_serving"))["from"] == "jiangsu"
            with pytest.raises(Unreachable):
                await parent.request("nowhere", "get")
            with pytest.raises(ValueError):
                await parent.request("nanjing", "Bad Op")


async def test_request_to_lost_neighbour_fails_fast() -> None:
    parent = BusNode("jiangsu", handler=echo, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), handler=echo, **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
        await until(lambda: status(parent, "nanjing") == "lost")
        with pytest.raises(Unreachable, match="lost"):
            await parent.request("nanjing", "get")


async def test_a_request_in_flight_fails_at_once_when_its_target_is_lost() -> None:
    """It does not wait out its timeout: the target said bye (it stopped) while it was asked."""
    parent = BusNode("jiangsu", handler=echo, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), handler=echo, **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
            asked = asyncio.ensure_future(parent.request("nanjing", "slow", timeout=30))
            await asyncio.sleep(0.05)       # it is out, and nanjing sits on it
        started = time.monotonic()
        with pytest.raises(LostInFlight, match="nanjing was lost before answering"):
            await asyncio.wait_for(asked, 5)
        assert time.monotonic() - started < 2.0


async def test_a_lost_neighbour_is_alive_again_only_after_a_new_handshake() -> None:
    """Heartbeats a lost child keeps sending on its old connection do not revive it: the
    parent asks for a hello, and the child is alive once the handshake is done both ways."""
    seen = Recorder()
    clock = [100.0]
    parent = BusNode("jiangsu", on_neighbour=seen, clock=lambda: clock[0], **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive")
            joins = parent.neighbour("nanjing").joins
            clock[0] += 10.0                # the parent's view: silent for 10 s
            parent.tick()
            assert status(parent, "nanjing") == "lost"
            await until(lambda: parent.neighbour("nanjing").joins > joins, what="a new handshake")
            assert status(parent, "nanjing") == "alive"
            states = [s.status for s in seen.states if s.node_id == "nanjing"]
            assert states[-2:] == ["lost", "alive"]


async def test_clients_without_hello() -> None:
    node = BusNode("jiangsu", handler=echo, **FAST)
    async with running(node):
        async with BusClient(node.router_endpoint, timeout=2.0) as client:
            assert (await client.call("nodes", {"x": 1})) == {
                "args": {"x": 1}, "from": None, "role": "client", "hops": 0, "visited": []}
            welcome = await client.hello()
            assert welcome.node_id == "jiangsu" and welcome.pub == node.pub_endpoint
            results = await asyncio.gather(*(client.call("get", {"i": i}) for i in range(50)))
            assert [r["args"]["i"] for r in results] == list(range(50))
        assert node.neighbours() == []             # a client is no neighbour


async def test_client_to_a_down_agent_times_out() -> None:
    probe = BusNode("probe", **FAST)
    async with running(probe):
        endpoint = probe.router_endpoint
    async with BusClient(endpoint, timeout=0.2) as client:
        with pytest.raises(RequestTimeout, match="is the agent up"):
            await client.call("nodes")


async def test_mixed_heartbeat_intervals_do_not_flicker() -> None:
    """A parent beating 4x as often as its child: each side judges the other by the slower
    interval (3 x 1.0 s), not the parent's (3 x 0.25 s, shorter than the child's silence
    between two beats), so nobody is ever lost. On a clock moved by hand, a quarter interval at
    a time, each side ticking at each step: a loaded machine that stalls the loop (both nodes
    are in it) only makes the test wait longer, and cannot make a silence."""
    seen_parent, seen_child = Recorder(), Recorder()
    clock = [100.0]
    parent = BusNode("jiangsu", on_neighbour=seen_parent, clock=lambda: clock[0],
                     **{**FAST, "heartbeat_interval": 0.25})
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), on_neighbour=seen_child,
                        clock=lambda: clock[0], **{**FAST, "heartbeat_interval": 1.0})
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive" and
                        (child.neighbour("jiangsu") or 0) and child.neighbour("jiangsu").seq >= 0,
                        what="the answer to the child's first beat")
            seq = child.neighbour("jiangsu").seq
            for _ in range(24):                     # 6 of the child's intervals
                clock[0] += 0.25
                parent.tick()                       # the child's beat of this step not in yet
                child.tick()                        # it beats on whole seconds
                if clock[0] % 1.0 == 0:             # then the parent answers it
                    await until(lambda: parent.neighbour("nanjing").last_seen == clock[0] and
                                child.neighbour("jiangsu").last_seen == clock[0],
                                what=f"the child's beat at {clock[0]} and its answer")
                assert status(parent, "nanjing") == status(child, "jiangsu") == "alive", clock[0]
            assert child.neighbour("jiangsu").seq >= seq + 6
            assert not seen_parent.seen("nanjing", "lost") and not seen_child.seen("jiangsu", "lost")


async def test_a_request_in_flight_survives_our_own_link_to_the_peer_joining() -> None:
    """Peers hold two connections, one each way. A request sent on the peer's connection to us
    (ours was not up yet) is still answered when our own link to it joins meanwhile: only
    what went out on a connection the new session replaces is lost."""
    book = Directory()
    asked, answer = asyncio.Event(), asyncio.Event()

    async def held(request: Request, sender: Sender) -> dict:
        asked.set()
        await answer.wait()
        return {"from": sender.node_id}

    a = BusNode("suqian", peers=["changzhou:8082"], discover=book.discover, **FAST)
    b = BusNode("changzhou", peers=["suqian:8081"], discover=book.discover, handler=held, **FAST)
    async with running(a, b):
        book.add("suqian:8081", a)                   # b's link to a can join; a's cannot yet
        await until(lambda: status(a, "changzhou") == "alive", 5.0, "b's link to a")
        assert not a._links.all[0].joined
        call = asyncio.create_task(a.call("changzhou", "get"))
        await asyncio.wait_for(asked.wait(), 5.0)
        book.add("changzhou:8082", b)                # now a's own link joins too
        await until(lambda: a._links.all[0].joined, 5.0, "a's link to b")
        answer.set()
        assert (await asyncio.wait_for(call, 5.0)) == {"from": "suqian"}


async def test_addressed_events_reach_only_their_neighbour() -> None:
    """With ``events`` kinds, a node takes from its children and peers only the events of those
    kinds addressed to it; a watcher's prefix still sees every event."""
    got: dict[str, list] = {"jiangsu": [], "suqian": []}

    def keep(node_id):
        return lambda state, ev: got[node_id].append((state.node_id, ev.kind, ev.data["id"]))

    parent = BusNode("jiangsu", on_event=keep("jiangsu"), events=("workload",), **FAST)
    async with running(parent):
        peer = BusNode("suqian", on_event=keep("suqian"), events=("workload",), **FAST)
        async with running(peer):
            child = BusNode("nanjing", parent=endpoints(parent), peers=[endpoints(peer)], **FAST)
            async with running(child):
                await until(lambda: status(parent, "nanjing") == "alive"
                            and status(peer, "nanjing") == "alive")
                await subscribed(child, parent)
                await subscribed(child, peer)
                watcher = Watcher(child.pub_endpoint, topics=[b"event."])
                try:
                    await first_seen(watcher, lambda: child.publish_event(
                        "node", {"node_id": "probe", "id": "probe"}))
                    while True:                       # drain the probes still queued
                        with contextlib.suppress(RequestTimeout):
                            await watcher.next(timeout=0.05)
                            continue
                        break
                    sent = [("workload", None, "broadcast"), ("workload", "suqian", "s1"),
                            ("node", None, "n1"), ("workload_deleted", "jiangsu", "d1"),
                            ("workload", "jiangsu2", "other"), ("workload", "jiangsu", "j1"),
                            ("workload", "*", "any"), ("workload", "suqian", "s2")]
                    for kind, to, wid in sent:
                        child.publish_event(kind, {"id": wid, "node_id": "nanjing"}, to=to)
                    # One connection keeps order: anything let through would come before these.
                    await until(lambda: len(got["jiangsu"]) == 2 and got["suqian"][-1:] == [
                        ("nanjing", "workload", "s2")], what="the addressed events")
                    assert got["jiangsu"] == [("nanjing", "workload", "j1"),
                                              ("nanjing", "workload", "any")]
                    assert got["suqian"] == [("nanjing", "workload", "s1"),
                                             ("nanjing", "workload", "any"),
                                             ("nanjing", "workload", "s2")]
                    seen = [(await watcher.next(timeout=2.0)).data["id"] for _ in sent]
                    assert seen == [wid for _, _, wid in sent]
                finally:
                    watcher.close()
