"""The agent: wires config, store, register, manager, executors, REST API and the bus together."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import os
import signal
import time
from pathlib import Path

import tornado.httpserver
import tornado.netutil
from tornado.ioloop import PeriodicCallback

from bus import BusNode, CurveKeys, NeighbourState

from . import __version__, neighbours
from .api import BusInfoHandler, make_app
from .config import Config, ConfigError
from .delegation import Delegator
from .errors import CnetError
from .events import EventHub
from .executors.container import ContainerExecutor
from .executors.data import DataExecutor
from .executors.datagateway import DataGatewayExecutor
from .executors.mlmodel import MLModelExecutor
from .executors.opencv import OpenCVExecutor
from .executors.process import ProcessExecutor
from .manager import Manager
from .metrics import AgentMetrics
from .register import Register
from .rpc import RpcHandler
from .store import Store
from .uploads import Uploads

log = logging.getLogger(__name__)

USAGE_INTERVAL = 2.0


class Agent:
    def __init__(self, config: Config):
        self.config = config
        self.hub = EventHub()
        self.store: Store | None = None
        self.register = Register(config.node_id, config.capacity, config.data_path,
                                 on_change=self._resources_changed)
        self.manager: Manager | None = None
        self.metrics: AgentMetrics | None = None
        self.uploads: Uploads | None = None
        self.started_at = time.time()
        self.bus: BusNode | None = None
        self.delegator = Delegator(self)
        self._statuses: dict[str, str] = {}      # neighbour id -> last published status
        self._subtree_keys: dict[str, tuple] = {}  # child or peer id -> what was last passed up
        self._pass_up_due = False
        self._background: set[asyncio.Task] = set()
        self._server: tornado.httpserver.HTTPServer | None = None
        self._locks: list[int] = []
        self._ticks: list[PeriodicCallback] = []

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        sockets = _bind(cfg.port, cfg.address)
        try:
            self._prepare_state()
            self.store = Store(cfg.db_path)
            self.manager = Manager(cfg, self.store, self.register, self.hub)
            for executor in self._executors():
                self.manager.add_executor(executor)
            self.metrics = AgentMetrics(self.manager, self.register)
            self.manager.recover()
            self.uploads = Uploads(cfg, self.manager, self.register)
            self.uploads.sweep()
            await self._start_bus()  # before HTTP, so /api/bus can name the endpoints
        except BaseException:
            for sock in sockets:
                sock.close()
            self._release_locks()
            raise
        self.hub.subscribe(self._forward_to_bus)
        body_limit = max(cfg.max_json_body, cfg.upload_limit + (1 << 20))
        self._server = tornado.httpserver.HTTPServer(make_app(self), max_body_size=body_limit,
                                                     idle_connection_timeout=120,
                                                     xheaders=False)
        self._server.add_sockets(sockets)
        self.register.sample_usage()
        self._ticks.append(PeriodicCallback(self._sample_usage, USAGE_INTERVAL * 1000))
        for tick in self._ticks:
            tick.start()
        if not cfg.api_token and not _is_loopback(cfg.address):
            log.warning("SECURITY: the API listens on %s without a token: anyone who can reach "
                        "this port can run commands here. Set api.token or CNET_API_TOKEN.",
                        cfg.address)
        log.info("agent %s listening on %s (state in %s)", cfg.node_id, cfg.url, cfg.state_dir)

    async def _start_bus(self) -> None:
        cfg = self.config
        curve = None
        if cfg.bus.curve_dir is not None:
            try:
                curve = CurveKeys.load(cfg.bus.curve_dir, cfg.node_id)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"bus.curve.keys_dir: no key pair for {cfg.node_id} in "
                                  f"{cfg.bus.curve_dir} ({exc}); run `cnet keys generate`") from None
        self.bus = BusNode(
            cfg.node_id, http=cfg.url,
            router=cfg.bus.router_endpoint(cfg.port), pub=cfg.bus.pub_endpoint(cfg.port),
            parent=cfg.parent, peers=cfg.peers,
            snapshot=lambda: neighbours.self_snapshot(self),
            summary=lambda: neighbours.summary(self, self.bus.neighbours()),
            handler=RpcHandler(self).handle, on_neighbour=self._neighbour_changed,
            on_event=self._neighbour_event, heartbeat_interval=cfg.bus.heartbeat_interval,
            heartbeat_misses=cfg.bus.heartbeat_misses, request_timeout=cfg.bus.request_timeout,
            curve=curve, token=cfg.api_token)
        try:
            await self.bus.start()
        except Exception as exc:  # zmq.ZMQError: address in use, bad endpoint
            self.bus = None
            raise ConfigError(f"bus: cannot bind {cfg.bus.router_endpoint(cfg.port)} / "
                              f"{cfg.bus.pub_endpoint(cfg.port)} ({exc})") from None

    def _executors(self):
        from .executors.ports import PortBook

        ports = PortBook()  # one book for all service executors: ports are machine-wide
        return [ProcessExecutor(self.manager), MLModelExecutor(self.manager, ports=ports),
                OpenCVExecutor(self.manager, ports=ports),
                DataGatewayExecutor(self.manager, ports=ports),
                ContainerExecutor(self.manager), DataExecutor(self.manager)]

    async def stop(self) -> None:
        for tick in self._ticks:
            tick.stop()
        for task in list(self._background):
            task.cancel()
        if self.bus is not None:
            await self.bus.close()
        if self._server is not None:
            self._server.stop()
            try:
                await asyncio.wait_for(self._server.close_all_connections(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("some HTTP connections did not close within 5 s; leaving them")
        if self.uploads is not None:
            await self.uploads.close()
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            self.store.close()
        self._release_locks()

    def _prepare_state(self) -> None:
        """Create the node's directories and lock them, so no two agents share a file."""
        cfg = self.config
        places = [("agent.state_dir", cfg.state_dir / "agent.lock"),
                  ("storage.sqlite.db_path", cfg.db_path.with_name(cfg.db_path.name + ".lock")),
                  ("storage.sqlite.data_path", cfg.data_path / ".cnet.lock"),
                  ("logging.dir", cfg.log_dir / ".cnet.lock")]
        seen: set[Path] = set()
        for key, lock_path in places:
            if lock_path in seen:
                continue
            seen.add(lock_path)
            try:
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"{key}: cannot use {lock_path.parent} ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{key}: {lock_path.parent} is in use by another agent "
                                  f"({owner}); give each node its own directory") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{cfg.node_id} pid {os.getpid()}".encode(), 0)
            self._locks.append(fd)

    def _release_locks(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()

    # -- what the API asks of the agent --------------------------------------------------

    async def submit(self, body):
        """Place a JSON submission (REST or bus); counted in /metrics by type and outcome."""
        wtype = body.get("type") if isinstance(body, dict) else None
        wtype = wtype if isinstance(wtype, str) and wtype in self.manager.executors else "unknown"
        try:
            wl, created = await self.delegator.submit(body)
        except CnetError as exc:
            self.count_submission(wtype, exc.code)
            raise
        self.count_submission(wtype, "created" if created else "existing")
        return wl, created

    def count_submission(self, wtype: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.submissions.labels(wtype, result).inc()

    async def list_workloads(self, status: str | None, wtype: str | None,
                             scope: str = "local") -> list[dict]:
        if scope == "subtree":
            return await self.delegator.list_subtree(status, wtype)
        return [wl.to_dict() for wl in self.manager.list(status, wtype)]

    def node_info(self) -> dict:
        return {"node_id": self.config.node_id, "role": "self", "status": "alive",
                "address": self.config.url, "last_seen": 0.0,
                "uptime": round(time.time() - self.started_at, 1),
                "labels": self.config.labels, **_vectors(self.register.resources())}

    def nodes_view(self) -> dict:
        """This node, its parent, children and peers (the seed's view, this node left out of
        the neighbour lists)."""
        now = time.monotonic()
        me = self.node_info()
        states = self.bus.neighbours() if self.bus is not None else []
        entries = sorted((neighbours.node_entry(s, now) for s in states), key=lambda e: e["node_id"])
        parent = next((e for e in entries if e["role"] == "parent"), None)
        children = [e for e in entries if e["role"] == "child"]
        me["subtree"] = neighbours.summary(self, states)
        return {"node_id": self.config.node_id, "self": me, "parent": parent,
                "children": children, "peers": [e for e in entries if e["role"] == "peer"],
                "nodes": [me, *entries]}

    async def health(self) -> dict:
        executors = {}
        for executor in self.manager.executors.values():
            state = await executor.health()
            if state is not None:
                executors[executor.type] = state
        live = sum(1 for wl in self.manager.workloads.values() if wl.live)
        return {"status": "healthy", "node_id": self.config.node_id, "version": __version__,
                "uptime": round(time.time() - self.started_at, 1), "address": self.config.url,
                "workloads": {"total": len(self.manager.workloads), "live": live},
                "executors": executors}

    def extra_routes(self) -> list:
        return [(r"/api/bus", BusInfoHandler, {"agent": self})]

    # -- events between the register, the hub and the bus --------------------------------

    def _resources_changed(self) -> None:
        if self.bus is not None:
            self.bus.publish()  # at once, so the parent's and peers' views follow in milliseconds
        self.hub.publish({"type": "resources", "node_id": self.config.node_id,
                          "seq": self.register.seq, "resources": self.register.resources()})

    def _sample_usage(self) -> None:
        """Measure usage; the dashboard sees it at once, neighbours with the next heartbeat."""
        self.register.sample_usage()
        self.hub.publish({"type": "resources", "node_id": self.config.node_id,
                          "seq": self.register.seq, "resources": self.register.resources()})

    def _forward_to_bus(self, event: dict) -> None:
        """Workload changes made here (or reported to our mirrors) go out on our PUB."""
        if self.bus is None:
            return
        if event["type"] == "workload":
            self.bus.publish_event("workload", event["workload"])
        elif event["type"] == "workload_deleted":
            self.bus.publish_event("workload_deleted", {"id": event["id"],
                                                        "node_id": event["node_id"]})

    def _neighbour_changed(self, state: NeighbourState) -> None:
        self._pass_up(state)
        entry = neighbours.node_entry(state, time.monotonic())
        self.hub.publish({"type": "node", "node": entry})
        if state.snapshot:
            self.hub.publish({"type": "resources", "node_id": state.node_id, "seq": state.seq,
                              "resources": {k: entry[k] for k in
                                            ("capacity", "allocated", "available", "usage")}})
        before = self._statuses.get(state.node_id)
        if before == state.status:
            return
        self._statuses[state.node_id] = state.status
        log.info("neighbour %s (%s) is %s", state.node_id, state.role, state.status)
        if self.bus is not None:
            self.bus.publish_event("node", {"node_id": state.node_id, "role": state.role,
                                            "status": state.status, "address": entry["address"]})
        if state.status == "lost":
            self.manager.mark_lost(state.node_id)
        elif self.manager.mirrors_via(state.node_id):
            self.spawn(self.delegator.refresh(state.node_id))

    def _pass_up(self, state: NeighbourState) -> None:
        """A change anywhere below a child goes up the tree at once, not with the next beat.

        So does a peer joining or leaving (the parent schedules through this node's peers).
        A change passed on is published to the parent, which passes on only its children's
        changes: it travels upwards once per level and cannot circle. Changes in one loop turn
        go out together.
        """
        key = neighbours.subtree_key(state)
        if key is None or self._subtree_keys.get(state.node_id) == key:
            return
        self._subtree_keys[state.node_id] = key
        if self.bus is not None and self.config.parent and not self._pass_up_due:
            self._pass_up_due = True
            asyncio.get_running_loop().call_soon(self._publish_passed_up)

    def _publish_passed_up(self) -> None:
        self._pass_up_due = False
        if self.bus is not None:
            self.bus.publish()

    def _neighbour_event(self, state: NeighbourState, event) -> None:
        if event.kind == "workload":
            self.manager.update_mirror(event.data, via=state.node_id)
        elif event.kind == "workload_deleted":
            wl = self.manager.workloads.get(event.data.get("id", ""))
            if wl is not None and wl.runtime.get("via") == state.node_id:
                self.manager.remove_mirror(wl.id)

    def spawn(self, coro) -> None:
        """Run ``coro`` in the background; it is kept until done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _vectors(resources: dict) -> dict:
    return {k: resources[k] for k in ("capacity", "allocated", "available", "usage")}


def _bind(port: int, address: str):
    try:
        return tornado.netutil.bind_sockets(port, address=address, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"agent.port: {address}:{port} is already in use") from None
        raise ConfigError(f"agent.address: cannot listen on {address}:{port} "
                          f"({exc.strerror or exc})") from None


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def serve(config: Config) -> None:
    """Run an agent until SIGTERM or SIGINT."""
    agent = Agent(config)
    await agent.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        log.info("agent %s stopping", config.node_id)
        await agent.stop()
