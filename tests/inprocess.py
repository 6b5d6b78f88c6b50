"""In-process clusters: real agents in one event loop on free ports and temp dirs, on a clock
the test moves by hand (like dask's ``gen_cluster``); see ``running``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import psutil

from cnet.agent import Agent
from cnet.config import Config, from_dict
from cnet.ops import Caller, Operation
from cnet.topology import deep_merge

from .bus.harness import until
from .harness import expected_links
from .ports import free_port

__all__ = ["Cluster", "ManualClock", "NodeClock", "running"]

DEFAULTS = {"bus": {"heartbeat_interval": 1.0, "heartbeat_misses": 3},
            "resources": {"cpu": 8.0, "gpu": 0, "memory": 16 << 30, "storage": 200 << 30}}
STOP_TIMEOUT = 15.0


class ManualClock:
    """Monotonic seconds that move only with ``advance``. It starts on a whole second, so sums
    of whole (and binary-fraction) steps are exact and a liveness window ends where a test says."""

    def __init__(self, start: float | None = None):
        self.now = float(int(time.monotonic())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds


class NodeClock:
    """One node's reading of the cluster's clock. ``hold`` stops it (the node then sends no
    heartbeat of its own, nor beats back to those that beat to it; it still answers requests,
    and a beat that comes after a silence); after ``release`` it goes on from where it stood,
    so the node just beats late, like a process that was suspended."""

    def __init__(self, clock: ManualClock):
        self._clock = clock
        self._lag = 0.0
        self._held_at: float | None = None

    def __call__(self) -> float:
        return (self._clock.now if self._held_at is None else self._held_at) - self._lag

    @property
    def held(self) -> bool:
        return self._held_at is not None

    def hold(self) -> None:
        if self._held_at is None:
            self._held_at = self._clock.now

    def release(self) -> None:
        if self._held_at is not None:
            self._lag += self._clock.now - self._held_at
            self._held_at = None


class Cluster:
    """Agents by topology name (``cluster["nanjing"]``), all on one :class:`ManualClock`.

    ``topology`` is ``{name: {"parent": name, "peers": [names], "labels": {...}}}``; ``config``
    is merged into every node's config and ``node_config[name]`` into that node's (it may set
    ``agent.node_id`` to give a node another name's id). All nodes share one heartbeat interval.
    """

    def __init__(self, root: Path, topology: dict[str, dict], config: dict | None = None,
                 node_config: dict[str, dict] | None = None):
        self.root = root
        self.topology = topology
        self.clock = ManualClock()
        self.clocks = {name: NodeClock(self.clock) for name in topology}
        self.agents: dict[str, Agent] = {}
        self._linked: set[str] = set()             # names whose links a wait expects alive
        self._orphans: list[tuple[int, float]] = []  # processes of agents stopped for good
        ports = {name: free_port() for name in topology}
        self.configs = {name: self._config(name, ports, deep_merge(
            deep_merge(DEFAULTS, config or {}), (node_config or {}).get(name, {})))
            for name in topology}
        intervals = {cfg.bus.heartbeat_interval for cfg in self.configs.values()}
        if len(intervals) != 1:
            raise ValueError(f"one heartbeat interval for the whole cluster, not {intervals}")
        self.interval = intervals.pop()
        self.misses = next(iter(self.configs.values())).bus.heartbeat_misses

    def _config(self, name: str, ports: dict[str, int], extra: dict) -> Config:
        node = self.topology[name]
        raw: dict[str, Any] = {
            "agent": {"node_id": name, "address": "127.0.0.1", "port": ports[name],
                      "state_dir": str(self.root / name / "state"),
                      "labels": dict(node.get("labels") or {})},
            "bus": {"router_port": free_port(), "pub_port": free_port()}}
        if node.get("parent"):
            raw["parent"] = {"enabled": True, "address": f"127.0.0.1:{ports[node['parent']]}"}
        if node.get("peers"):
            raw["peers"] = {"enabled": True,
                            "addresses": [f"127.0.0.1:{ports[p]}" for p in node["peers"]]}
        return from_dict(deep_merge(raw, extra))

    def __getitem__(self, name: str) -> Agent:
        return self.agents[name]

    @property
    def loss_window(self) -> float:
        """How long a neighbour may stay silent and still be alive (misses x interval)."""
        return self.misses * self.interval

    def node_id(self, name: str) -> str:
        return self.configs[name].node_id

    # -- life cycle ----------------------------------------------------------------------

    async def _boot(self, name: str) -> Agent:
        if name in self.agents:
            raise RuntimeError(f"{name} is already running")
        agent = Agent(self.configs[name], clock=self.clocks[name])
        await agent.start()
        self.agents[name] = agent
        return agent

    async def start(self, name: str, linked: bool = True, timeout: float = 10.0) -> Agent:
        """Start ``name`` (again: same ports, same state dir). ``linked``: wait until its links
        are alive and every running node's broadcasts reach their neighbours; without it the
        node's links are never waited for (a node that is to be refused)."""
        agent = await self._boot(name)
        if linked:
            self._linked.add(name)
            await self.settle(timeout)
        return agent

    async def stop(self, name: str) -> None:
        """Stop the agent (its workload processes keep running, as after a shutdown)."""
        agent = self.agents.pop(name)
        self._orphans.extend((wl.runtime["pid"], wl.runtime.get("_start_time") or 0.0)
                             for wl in agent.manager.live.values() if wl.runtime.get("pid"))
        await agent.stop()

    async def restart(self, name: str, timeout: float = 10.0) -> Agent:
        linked = name in self._linked
        await self.stop(name)
        return await self.start(name, linked=linked, timeout=timeout)

    async def close(self) -> None:
        """Stop every live workload, then every agent; kill what stopped agents left running."""
        for agent in self.agents.values():
            for wl in list(agent.manager.live.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.manager.stop(wl.id), STOP_TIMEOUT)
        for name in reversed(list(self.agents)):
            await self.agents.pop(name).stop()
        for pid, started in self._orphans:
            with contextlib.suppress(psutil.Error, OSError):
                if abs(psutil.Process(pid).create_time() - started) < 0.05:
                    os.killpg(pid, signal.SIGKILL)

    # -- waiting and time ----------------------------------------------------------------

    def _pairs(self) -> list[tuple[str, str]]:
        """(name, neighbour name) for every link between running nodes that a wait expects."""
        live = self._linked & set(self.agents)
        return [(a, b) for a in sorted(live) for b in sorted(expected_links(self.topology, a))
                if b in live]

    def _state(self, name: str, other: str):
        return self.agents[name].bus.neighbour(self.node_id(other))

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every expected link is alive with a snapshot, then let each node that is
        not held publish until its neighbours take it (their SUBs follow its PUB, and views
        hold its current summary)."""
        def alive() -> bool:
            return all((s := self._state(a, b)) is not None and s.status == "alive" and s.seq >= 0
                       for a, b in self._pairs())
        await until(alive, timeout, "every link alive")
        for name in sorted(self._linked & set(self.agents)):
            if not self.clocks[name].held:
                await self.published(name, timeout=timeout)

    async def published(self, name: str, timeout: float = 5.0) -> None:
        """Publish ``name``'s snapshot until each running neighbour has taken a new one: what
        ``name`` published before has then arrived too (one PUB, in order)."""
        agent = self.agents[name]
        watchers = [a for a, b in self._pairs() if b == name]
        before = {a: self._state(a, name).seq for a in watchers}

        def taken() -> bool:
            agent.bus.publish()
            return all(self._state(a, name).seq > before[a] for a in watchers)
        await until(taken, timeout, f"{name}'s neighbours to take its broadcast")

    async def advance(self, seconds: float, timeout: float = 5.0) -> None:
        """Move the clock on in steps of one heartbeat interval. Each node ticks at each step;
        after a full step every node not held has beaten, and the step ends when every such
        beat between running, unheld nodes has been answered."""
        left = seconds
        while left > 0:
            step = min(self.interval, left)
            left -= step
            self.clock.advance(step)
            for agent in self.agents.values():
                agent.bus.tick()
            if step == self.interval:
                await until(self._beats_answered, timeout, "this step's heartbeats answered")
            else:
                await asyncio.sleep(0)

    def _beats_answered(self) -> bool:
        for a, b in self._pairs():
            if self.clocks[a].held or self.clocks[b].held:
                continue
            state = self._state(a, b)
            if state is not None and state.status == "alive" and state.last_seen < self.clocks[a]():
                return False
        return True

    def hold(self, *names: str) -> None:
        for name in names:
            self.clocks[name].hold()

    def release(self, *names: str) -> None:
        for name in names:
            self.clocks[name].release()

    # -- operations ----------------------------------------------------------------------

    async def run(self, name: str, op: Operation, caller: Caller = Caller()) -> dict[str, Any]:
        """Run an operation at ``name`` as a client would (``Submit(workload=spec)``, ``Stop(id=…)``)."""
        return await op.run(self.agents[name].node, caller)


@contextlib.asynccontextmanager
async def running(root: Path, topology: dict[str, dict], config: dict | None = None,
                  node_config: dict[str, dict] | None = None, later: Iterable[str] = (),
                  timeout: float = 10.0) -> AsyncIterator[Cluster]:
    """``async with running(tmp, {"a": {}, "b": {"parent": "a"}}) as cluster``: every node but
    those in ``later`` (configured, started with ``cluster.start``) runs and is linked; at the
    end every workload and agent is stopped."""
    cluster = Cluster(root, topology, config, node_config)
    try:
        for name in topology:
            if name not in later:
                await cluster._boot(name)
                cluster._linked.add(name)
        await cluster.settle(timeout)
        yield cluster
    finally:
        await cluster.close()
