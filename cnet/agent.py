"""The agent: builds one node's parts from its config and wires them together; nothing else.

What the parts do lives in them: the operations in :mod:`cnet.ops`, run by the REST door
(:mod:`cnet.api`) and the bus door (:mod:`cnet.rpc`) against a :class:`~cnet.node.Node`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import time
from typing import Callable

import tornado.httpserver
import tornado.netutil

from bus import BusNode, CurveKeys

from . import __version__, neighbours
from .addresses import is_loopback
from .api import Web, close_app, http_server, make_app
from .config import Config, ConfigError
from .events import TO, EventHub
from .executors import Deferred
from .executors.data import DataExecutor
from .executors.engine_probe import EngineProbe
from .executors.ports import PortBook
from .executors.process import ProcessExecutor
from .lazy_models import LazyModels
from .lazy_sets import LazySets
from .manager import Manager
from .metrics import AgentMetrics
from .mirrors import MirrorBook
from .neighbour_watch import NeighbourWatch
from .neighbours import LocalView
from .node import Node
from .ops import OPS, Caller
from .outbox import Outbox
from .placement import Placer
from .reconcile import Reconciler
from .register import Register
from .remote import NeighbourPort
from .rpc import BusDoor
from .state_lock import StateLock
from .store import Store
from .uploads import Uploads
from .workload import Workload

log = logging.getLogger(__name__)


class Agent:
    """One node. ``clock`` (monotonic seconds) drives the bus's heartbeats and liveness; tests
    running agents in one process pass a clock they move by hand."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.hub = EventHub()
        self.outbox = Outbox()   # our broadcasts, sent after the step that made them
        self.store: Store | None = None
        self.register = Register(config.node_id, config.capacity, config.data_path,
                                 on_change=self._resources_changed)
        self.manager: Manager | None = None
        self.mirrors: MirrorBook | None = None
        self.metrics: AgentMetrics | None = None
        self.uploads: Uploads | None = None
        self.node: Node | None = None
        self.sets: LazySets | None = None
        self.local: LocalView | None = None
        self.started_at = time.time()
        self.bus: BusNode | None = None
        self.port = NeighbourPort(config)
        self._background: set[asyncio.Task] = set()
        self._stopping = False
        self._server: tornado.httpserver.HTTPServer | None = None
        self._lock = StateLock(config)
        self.watch: NeighbourWatch | None = None
        self.placer: Placer | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        sockets = _bind(cfg.port, cfg.address)
        try:
            self._lock.acquire()
            self.store = Store(cfg.db_path)
            self.manager = Manager(cfg, self.store, self.register, self.hub)
            self.models = LazyModels(cfg.state_dir / "models", self.register, self.port,
                                     self.manager)
            for executor in self._executors():
                self.manager.add_executor(executor)
            self.mirrors = MirrorBook(cfg.node_id, self.store, self.hub)
            self.metrics = AgentMetrics([self.manager, self.mirrors], self.register)
            records = [Workload.from_row(row) for row in self.store.load_workloads()]
            self.manager.recover(records)
            self.mirrors.load(records)
            self.uploads = Uploads(cfg, self.manager)
            self.uploads.sweep()
            self.local = LocalView(cfg.node_id, cfg.url, cfg.labels, self.register,
                                   self.manager.live, self.started_at)
            self.sets = LazySets(cfg, self.store, self.hub, spawn=self.spawn)
            self.placer = Placer(self.local, self.manager, self.mirrors, self.port,
                                 default_strategy=cfg.placement_strategy, spawn=self.spawn,
                                 holders=self.models.holders, set_ids=self.sets)
            self.watch = NeighbourWatch(self.hub, self.mirrors,
                                        Reconciler(self.mirrors, self.port),
                                        has_parent=bool(cfg.parent), spawn=self.spawn,
                                        clock=self.clock, prepare=self.placer.prepare)
            self.node = Node(self.local, __version__, self.manager, self.mirrors, self.placer,
                             self.port, self.sets, on_submission=self.metrics.count_submission,
                             clock=self.clock, models=self.models)
            await self._start_bus()  # before HTTP, so /api/bus can name the endpoints
            self.sets.attach(self.placer, self.port, self._member_op)   # resumes watching
        except BaseException:
            for sock in sockets:
                sock.close()
            self._lock.release()
            raise
        self.hub.subscribe(self._forward_to_bus)
        body_limit = max(cfg.max_json_body, cfg.upload_limit + (1 << 20))
        web = Web(self.node, self.hub, self.metrics, self.uploads, self.bus.describe,
                  token=cfg.api_token, max_json_body=cfg.max_json_body,
                  upload_limit=cfg.upload_limit, upload_idle_timeout=cfg.upload_idle_timeout,
                  replicas=self.sets)
        self._app = make_app(web)
        self._server = http_server(self._app, max_body_size=body_limit)
        self._server.add_sockets(sockets)
        # The first sample starts the cpu measurement. The agent runs no timer of its own: the
        # bus's one tick (heartbeats, liveness) is all that wakes an idle agent, and usage is
        # measured when a heartbeat or a reply shows it (Register.usage).
        self.register.sample_usage()
        if not cfg.api_token and not is_loopback(cfg.address):
            log.warning("SECURITY: the API listens on %s without a token: anyone who can reach "
                        "this port can run commands here. Set api.token or CNET_API_TOKEN.",
                        cfg.address)
        if not cfg.api_token and cfg.bus.curve_dir is None and not is_loopback(cfg.bus.host):
            log.warning("SECURITY: the bus listens on %s with neither Curve nor a token: anyone "
                        "who can reach it can join as any node id not alive here, send forged "
                        "snapshots and be sent work. Set bus.curve.keys_dir and api.token.",
                        cfg.bus.host)
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
            snapshot=lambda: neighbours.self_snapshot(self.local),
            summary=lambda: neighbours.summary(self.local, self.port.neighbours()),
            handler=BusDoor(self.node, cfg.api_token).handle, on_neighbour=self.watch.changed,
            on_event=self.watch.event, events=NeighbourWatch.EVENTS, heartbeat_interval=cfg.bus.heartbeat_interval,
            heartbeat_misses=cfg.bus.heartbeat_misses, request_timeout=cfg.bus.request_timeout,
            curve=curve, token=cfg.api_token, clock=self.clock,
            # A bus bound to every interface is reached at the advertised address.
            advertise_host=cfg.advertise if cfg.bus.host in ("0.0.0.0", "::", "*", "") else None)
        self.port.bus = self.watch.bus = self.outbox.bus = self.bus
        try:
            await self.bus.start()
        except Exception as exc:  # zmq.ZMQError: address in use, bad endpoint
            self.bus = self.port.bus = self.watch.bus = self.outbox.bus = None
            raise ConfigError(f"bus: cannot bind {cfg.bus.router_endpoint(cfg.port)} / "
                              f"{cfg.bus.pub_endpoint(cfg.port)} ({exc})") from None

    def _executors(self):
        ports = PortBook()  # one book for all service executors: ports are machine-wide
        manager, models = self.manager, self.models

        # The service types are imported with their first workload (executors.Deferred).
        def mlmodel():
            from .executors.mlmodel import MLModelExecutor
            return MLModelExecutor(manager, ports=ports, models=models)

        def opencv():
            from .executors.opencv import OpenCVExecutor
            return OpenCVExecutor(manager, ports=ports, models=models)

        def datagateway():
            from .executors.datagateway import DataGatewayExecutor
            return DataGatewayExecutor(manager, ports=ports)

        # The container executor too; until then the engine's probe answers /api/health.
        probe = EngineProbe(self.config.container_engine_url)

        def container():
            from .executors.container import ContainerExecutor
            return ContainerExecutor(manager, probe=probe)

        return [ProcessExecutor(manager), Deferred("mlmodel", mlmodel), Deferred("opencv", opencv),
                Deferred("datagateway", datagateway), Deferred("container", container, probe),
                DataExecutor(manager)]

    async def stop(self) -> None:
        self._stopping = True    # from here nothing new starts in the background
        background = list(self._background)
        for task in background:
            task.cancel()
        if background:   # let them unwind (their finally blocks) before what they use closes
            await asyncio.wait(background, timeout=5)
        if self.bus is not None:
            self.outbox.flush()     # what the last steps queued, before the bus says bye
            self.outbox.bus = None
            await self.bus.close()
        if self._server is not None:
            self._server.stop()
            try:
                await asyncio.wait_for(self._server.close_all_connections(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("some HTTP connections did not close within 5 s; leaving them")
            close_app(self._app)
        if self.uploads is not None:
            await self.uploads.close()
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            self.store.close()
        self._lock.release()

    # -- events between the register, the hub and the bus --------------------------------

    def _resources_changed(self) -> None:
        self.outbox.snapshot()  # at once, so the parent's and peers' views follow in milliseconds
        if self.placer is not None:
            self.placer.prepare()
        self.hub.publish({"type": "resources", "node_id": self.config.node_id,
                          "seq": self.register.seq, "resources": self.register.resources()})

    def _forward_to_bus(self, event: dict) -> None:
        """Workload changes made here (or reported to our mirrors) go out on our PUB."""
        if event["type"] == "workload":
            self.outbox.event("workload", event["workload"], to=event.get(TO))
        elif event["type"] == "workload_deleted":
            self.outbox.event("workload_deleted", {"id": event["id"], "node_id": event["node_id"]},
                              to=event.get(TO))

    async def _member_op(self, op: str, member_id: str) -> dict:
        """Run ``op`` on a replica set's member as the set's origin (see cnet.replica_sets)."""
        return await OPS[op].parse({"id": member_id}).run(self.node,
                                                          Caller(node_id=self.config.node_id))

    def spawn(self, coro) -> None:
        """Run ``coro`` in the background; it is kept until done. Once the agent is stopping,
        it is not started: what stop() cancelled must not be replaced behind its back (a
        neighbour's rejoin seen while the bus closes would otherwise start a reconcile)."""
        if self._stopping:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _bind(port: int, address: str):
    try:
        return tornado.netutil.bind_sockets(port, address=address, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"agent.port: {address}:{port} is already in use") from None
        raise ConfigError(f"agent.address: cannot listen on {address}:{port} "
                          f"({exc.strerror or exc})") from None


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
