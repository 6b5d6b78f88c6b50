"""Helpers for bus tests: condition waits, in-process nodes, and nodes in subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bus import BusNode, Endpoints, NeighbourState

FAST = {"heartbeat_interval": 0.1, "heartbeat_misses": 3, "retry_max": 0.3, "request_timeout": 2.0}
NODE_SCRIPT = Path(__file__).with_name("node_proc.py")
REPO = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``condition`` every 5 ms until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.005)


async def subscribed(publisher: BusNode, viewer: BusNode, timeout: float = 5.0) -> None:
    """Publish until ``viewer`` shows it: its SUB has connected to ``publisher``'s PUB (the
    PUB/SUB slow-joiner) and later publishes arrive. Uses an explicit probe snapshot."""
    deadline = time.monotonic() + timeout
    probe = {"probe": time.monotonic()}
    while time.monotonic() < deadline:
        publisher.publish(probe)
        for _ in range(10):
            state = viewer.neighbour(publisher.node_id)
            if state is not None and state.snapshot == probe:
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"{viewer.node_id} never saw {publisher.node_id}'s PUB")


def status(node: BusNode, node_id: str) -> str | None:
    state = node.neighbour(node_id)
    return state.status if state else None


def endpoints(node: BusNode) -> Endpoints:
    doc = node.describe()
    return Endpoints(router=doc["router"], pub=doc["pub"], node_id=doc["node_id"],
                     protocol=doc["protocol"], curve_key=doc.get("curve_key"))


class Directory:
    """A stand-in for ``GET /api/bus``: ``discover(address)`` finds nodes added under an address."""

    def __init__(self) -> None:
        self.where: dict[str, Endpoints] = {}

    def add(self, address: str, node: BusNode) -> None:
        self.where[address] = endpoints(node)

    async def discover(self, address: str) -> Endpoints:
        if address not in self.where:
            raise OSError(f"{address}: connection refused")
        return self.where[address]


class Recorder:
    """Collects every ``on_neighbour`` state a node reports."""

    def __init__(self) -> None:
        self.states: list[NeighbourState] = []

    def __call__(self, state: NeighbourState) -> None:
        self.states.append(state)

    def seen(self, node_id: str, status: str) -> bool:
        return any(s.node_id == node_id and s.status == status for s in self.states)


@contextlib.asynccontextmanager
async def running(*nodes: BusNode) -> AsyncIterator[tuple[BusNode, ...]]:
    """Start ``nodes`` in order and close them all at the end, whatever happens."""
    started: list[BusNode] = []
    try:
        for node in nodes:
            await node.start()
            started.append(node)
        yield nodes
    finally:
        for node in reversed(started):
            await node.close()


class NodeProcess:
    """A BusNode in a subprocess (``node_proc.py``), for kill -9 tests.

    Its stdout is JSON lines: ``ready`` with its endpoints, then one per neighbour change.
    """

    def __init__(self, node_id: str, *args: str, interval: float = 0.1, misses: int = 3):
        self.node_id = node_id
        self.args = ["--node-id", node_id, "--interval", str(interval), "--misses", str(misses), *args]
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 10.0) -> NodeProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(NODE_SCRIPT), *self.args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        loop = asyncio.get_running_loop()
        self._readers = [asyncio.create_task(self._read(loop, self.proc.stdout, self._on_line)),
                         asyncio.create_task(self._read(loop, self.proc.stderr, self.stderr.append))]
        await until(lambda: self.ready or self.proc.poll() is not None, timeout, f"{self.node_id} ready")
        if not self.ready:
            raise AssertionError(f"{self.node_id} exited: {''.join(self.stderr)[-2000:]}")
        return self

    def _on_line(self, line: str) -> None:
        doc = json.loads(line)
        if doc.get("event") == "ready":
            self.ready = doc
        self.lines.append(doc)

    @staticmethod
    async def _read(loop: asyncio.AbstractEventLoop, stream: Any, sink: Callable[[str], None]) -> None:
        while True:
            line = await loop.run_in_executor(None, stream.readline)
            if not line:
                return
            sink(line)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(router=self.ready["router"], pub=self.ready["pub"], node_id=self.node_id)

    def saw(self, node_id: str, status: str) -> bool:
        return any(d.get("event") == "neighbour" and d["node_id"] == node_id and d["status"] == status
                   for d in self.lines)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    async def stop(self) -> None:
        self.kill()
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)
        self._readers.clear()
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
