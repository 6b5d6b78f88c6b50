"""The outbox: a node's broadcasts leave after the step that caused them, in order, with one
snapshot for any number of resource changes in the step (a real BusNode and a Watcher)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bus import BusNode, Event, RequestTimeout, Update, Watcher
from cnet.outbox import Outbox

from .bus.harness import running


async def test_broadcasts_leave_after_the_step_in_order_with_one_snapshot(caplog) -> None:
    built = []

    def snapshot() -> dict:
        built.append(len(built) + 1)
        return {"node_id": "nanjing", "seq": built[-1]}

    node = BusNode("nanjing", snapshot=snapshot)
    async with running(node):
        watcher = Watcher(node.pub_endpoint)
        try:
            await watcher.connected(timeout=5)
            outbox = Outbox()
            outbox.event("workload", {"id": "w0"})            # no bus yet: nothing to send
            assert len(outbox) == 0
            outbox.bus = node
            outbox.snapshot()
            outbox.event("workload", {"id": "w1", "status": "pending"})
            outbox.snapshot()                                   # the same step: one snapshot
            outbox.event("Not A Kind", {})                      # refused by the bus, logged
            outbox.event("workload", {"id": "w1", "status": "running"})
            assert len(outbox) == 4 and built == []             # nothing built or sent yet
            with caplog.at_level(logging.ERROR, "cnet.outbox"):
                await asyncio.sleep(0)
            assert len(outbox) == 0 and built == [1]
            got = [await watcher.next(timeout=5) for _ in range(3)]
            assert [type(m) for m in got] == [Update, Event, Event]
            assert got[0].snapshot == {"node_id": "nanjing", "seq": 1}
            assert [m.data["status"] for m in got[1:]] == ["pending", "running"]
            assert got[0].seq < got[1].seq < got[2].seq
            assert any("a Not A Kind event" in r.getMessage() for r in caplog.records)
            with pytest.raises(RequestTimeout):                 # and nothing more
                await watcher.next(timeout=0.2)
        finally:
            watcher.close()
