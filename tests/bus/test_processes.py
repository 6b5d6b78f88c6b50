"""Nodes in subprocesses killed with SIGKILL: loss within misses x interval, return, parent re-join,
and a node speaking another protocol version refused with a log line on both sides."""

from __future__ import annotations

import logging
import time

import pytest

from bus import BusNode

from .harness import FAST, Directory, NodeProcess, Recorder, endpoints, running, status, until

INTERVAL, MISSES = FAST["heartbeat_interval"], FAST["heartbeat_misses"]


async def test_killed_child_is_lost_then_alive_after_restart() -> None:
    seen = Recorder()
    parent = BusNode("jiangsu", on_neighbour=seen, **FAST)
    async with running(parent):
        fixed = endpoints(parent)
        child = NodeProcess("nanjing", "--parent", f"{fixed.router},{fixed.pub}")
        try:
            await child.start()
            await until(lambda: status(parent, "nanjing") == "alive")
            await until(lambda: child.saw("jiangsu", "alive"))
            child.kill()
            killed = time.monotonic()
            await until(lambda: status(parent, "nanjing") == "lost", 2.0)
            elapsed = time.monotonic() - killed
            assert elapsed <= MISSES * INTERVAL + 1.0, f"lost after {elapsed:.2f} s"   # CI slack
            await child.stop()
            child = NodeProcess("nanjing", "--parent", f"{fixed.router},{fixed.pub}")
            await child.start()
            await until(lambda: status(parent, "nanjing") == "alive", 5.0, "alive again after restart")
            assert parent.neighbour("nanjing").epoch == child.ready["epoch"]
            assert seen.seen("nanjing", "lost") and seen.states[-1].status == "alive"
        finally:
            await child.stop()


async def test_killed_parent_is_lost_and_its_restart_rejoined() -> None:
    book = Directory()
    child = BusNode("nanjing", parent="jiangsu:8080", discover=book.discover, **FAST)
    parent = NodeProcess("jiangsu")
    try:
        await parent.start()
        async with running(child):
            book.where["jiangsu:8080"] = parent.endpoints
            await until(lambda: status(child, "jiangsu") == "alive" and parent.saw("nanjing", "alive"))
            parent.kill()
            del book.where["jiangsu:8080"]
            killed = time.monotonic()
            await until(lambda: status(child, "jiangsu") == "lost", 2.0)
            assert time.monotonic() - killed <= MISSES * INTERVAL + 1.0
            await parent.stop()
            parent = NodeProcess("jiangsu")
            await parent.start()
            book.where["jiangsu:8080"] = parent.endpoints
            await until(lambda: status(child, "jiangsu") == "alive", 5.0, "re-joined the restarted parent")
            await until(lambda: parent.saw("nanjing", "alive"))
            assert child.neighbour("jiangsu").epoch == parent.ready["epoch"]
    finally:
        await parent.stop()


async def test_version_mismatch_is_refused_on_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    parent = BusNode("jiangsu", **FAST)
    async with running(parent):
        fixed = endpoints(parent)
        child = NodeProcess("nanjing", "--parent", f"{fixed.router},{fixed.pub}", "--version", "CNET9")
        try:
            await child.start()
            await until(lambda: "refused our hello" in "".join(child.stderr), 5.0, "child logs refusal")
            log = "".join(child.stderr)
            assert "jiangsu refused our hello: protocol CNET9 not supported" in log
            assert "version_mismatch" in log
            assert "jiangsu refused hello from nanjing: protocol CNET9 not supported" in caplog.text
            assert status(parent, "nanjing") is None
        finally:
            await child.stop()
