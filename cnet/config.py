"""Agent configuration: the seed's YAML format plus our own sections, validated at start.

Every problem is reported as one ``ConfigError`` line that names the key, e.g.
``agent.resources.cpu: must not be negative (got -1)``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from . import config_values as read
from .addresses import advertised_host
from .config_values import ConfigError
from .devices import Device, detect, numbered
from .resources import Resources

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STRATEGIES = ("local_first", "least_loaded", "binpack", "spread")
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


@dataclass
class BusConfig:
    host: str = "127.0.0.1"       # default: the agent's address
    router_port: int = 0          # 0: HTTP port + 1000
    pub_port: int = 0             # 0: HTTP port + 2000
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 3
    request_timeout: float = 5.0
    curve_dir: Path | None = None  # directory made by `cnet keys generate`

    def router_endpoint(self, http_port: int) -> str:
        return f"tcp://{self.host}:{self.router_port or http_port + 1000}"

    def pub_endpoint(self, http_port: int) -> str:
        return f"tcp://{self.host}:{self.pub_port or http_port + 2000}"


@dataclass
class ServiceConfig:
    """The supervisor of long-running service workloads (inference, gateway)."""

    port_range: tuple[int, int] = (9000, 9999)
    start_timeout: float = 60.0
    health_interval: float = 30.0
    health_timeout: float = 5.0
    max_restarts: int = 3
    restart_backoff: float = 1.0


@dataclass
class Config:
    node_id: str
    address: str = "127.0.0.1"    # where the agent (and a service without service_host) binds
    port: int = 8080
    advertise_address: str | None = None  # agent.advertise_address as configured
    advertise: str = "127.0.0.1"  # what other machines use to reach this node and its services
    capacity: Resources = field(default_factory=Resources)
    gpus: list[Device] = field(default_factory=list)   # capacity.gpu devices, by uuid
    labels: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    peers: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"
    state_dir: Path = Path("/tmp/cnet")
    db_path: Path = Path("/tmp/cnet/cnet.db")
    data_path: Path = Path("/tmp/cnet/data")
    log_dir: Path = Path("/tmp/cnet/logs")
    api_token: str | None = None
    max_json_body: int = 1 << 20
    upload_limit: int = 10 << 30
    upload_idle_timeout: float = 300.0
    stop_grace: float = 10.0
    placement_strategy: str = "local_first"
    container_engine_url: str | None = None
    bus: BusConfig = field(default_factory=BusConfig)
    services: ServiceConfig = field(default_factory=ServiceConfig)

    @property
    def public_url(self) -> str:
        """This agent's URL as other machines reach it: the advertised address, the HTTP port."""
        host = f"[{self.advertise}]" if ":" in self.advertise else self.advertise
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL the agent names itself by (snapshots, nodes, the bus hello): ``public_url``."""
        return self.public_url


def load(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return from_dict(raw if raw is not None else {})


def from_dict(raw) -> Config:
    """Validate a parsed config; sections may sit at the top level or under ``agent``."""
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a mapping")
    agent = read.section(raw, "agent")

    def sec(name: str) -> tuple[dict, str]:
        # The seed nests everything under `agent:` in one reading and keeps the sections at the
        # top level in another; accept both.
        if name in agent:
            return read.section(agent, name, f"agent.{name}"), f"agent.{name}"
        return read.section(raw, name), name

    node_id = agent.get("node_id")
    if not isinstance(node_id, str) or not node_id:
        raise ConfigError("agent.node_id: required, a non-empty string")
    if not NODE_ID_RE.match(node_id):
        raise ConfigError(f"agent.node_id: {node_id!r} may only contain letters, digits, '_', '.', '-' "
                          "(at most 63, starting with a letter or digit)")
    cfg = Config(node_id=node_id)
    cfg.address = read.text(agent, "address", "agent.address", "127.0.0.1")
    cfg.port = read.port(agent.get("port", 8080), "agent.port")
    cfg.advertise_address = _advertise_address(agent.get("advertise_address"),
                                               "agent.advertise_address")
    labels = agent.get("labels", {}) or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
        raise ConfigError("agent.labels: must be a mapping of string keys to values")
    cfg.labels = {k: str(v) for k, v in labels.items()}

    # State: one directory per node; db, data and logs default inside it.
    state_default = Path(os.environ.get("CNET_HOME", "/tmp/cnet")) / node_id
    cfg.state_dir = read.path(agent.get("state_dir", state_default), "agent.state_dir", node_id)
    storage, where = sec("storage")
    sqlite = read.section(storage, "sqlite", f"{where}.sqlite")
    cfg.db_path = read.path(sqlite.get("db_path", cfg.state_dir / "cnet.db"), f"{where}.sqlite.db_path", node_id)
    cfg.data_path = read.path(sqlite.get("data_path", cfg.state_dir / "data"), f"{where}.sqlite.data_path", node_id)
    logging_, where = sec("logging")
    cfg.log_level = read.choice(logging_, "level", where, ("debug", "info", "warning", "warn", "error"), "info")
    cfg.log_format = read.choice(logging_, "format", where, ("text", "json"), "text")
    cfg.log_dir = read.path(logging_.get("dir", cfg.state_dir / "logs"), f"{where}.dir", node_id)

    resources, where = sec("resources")
    cfg.capacity = _capacity(resources, where, cfg.data_path)
    cfg.gpus = _gpus(resources, where)
    cfg.capacity = Resources(cfg.capacity.cpu, cfg.capacity.memory, len(cfg.gpus),
                             cfg.capacity.storage)

    parent, where = sec("parent")
    if parent.get("enabled", bool(parent.get("address"))):
        cfg.parent = read.hostport(parent.get("address"), f"{where}.address")
    peers, where = sec("peers")
    if peers.get("enabled", bool(peers.get("addresses"))):
        addrs = peers.get("addresses") or []
        if not isinstance(addrs, list):
            raise ConfigError(f"{where}.addresses: must be a list of host:port")
        cfg.peers = [read.hostport(a, f"{where}.addresses[{i}]") for i, a in enumerate(addrs)]

    api, where = sec("api")
    token = api.get("token") or os.environ.get("CNET_API_TOKEN") or None
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"{where}.token: must be a string")
    cfg.api_token = token
    cfg.max_json_body = read.size(api.get("max_json_body", cfg.max_json_body), f"{where}.max_json_body")
    data, where = sec("data")
    cfg.upload_limit = read.size(data.get("upload_limit", cfg.upload_limit), f"{where}.upload_limit")
    cfg.upload_idle_timeout = read.number(data.get("idle_timeout", cfg.upload_idle_timeout),
                                      f"{where}.idle_timeout", 0.1, 86400)

    process, where = sec("process")
    cfg.stop_grace = read.number(process.get("stop_grace", cfg.stop_grace), f"{where}.stop_grace", 0, 3600)

    sched, where = sec("scheduler")
    cfg.placement_strategy = read.choice(sched, "strategy", where, STRATEGIES, "local_first")

    container, where = sec("container")
    url = container.get("engine_url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{where}.engine_url: must be a string")
    cfg.container_engine_url = url

    cfg.advertise = advertised_host(cfg.address, cfg.advertise_address,
                                    [*([cfg.parent] if cfg.parent else []), *cfg.peers])
    cfg.bus = _bus(*sec("bus"), node_id, cfg.address)
    cfg.services = _services(*sec("services"))
    return cfg


def _advertise_address(value, where: str) -> str | None:
    """A host name or IP address other machines can reach (no scheme, port or wildcard)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a host name or IP address")
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise ConfigError(f"{where}: {value!r} is not a host name or IP address "
                              "(give it without scheme or port)") from None
        return host
    if ip.is_unspecified:
        raise ConfigError(f"{where}: {value!r} is a wildcard; give an address other machines "
                          "can reach")
    return host


def _bus(raw: dict, where: str, node_id: str, address: str) -> BusConfig:
    bus = BusConfig()
    bus.host = read.text(raw, "host", f"{where}.host", address)
    bus.router_port = read.port(raw.get("router_port", 0), f"{where}.router_port", allow_zero=True)
    bus.pub_port = read.port(raw.get("pub_port", 0), f"{where}.pub_port", allow_zero=True)
    bus.heartbeat_interval = read.number(raw.get("heartbeat_interval", 1.0), f"{where}.heartbeat_interval", 0.01, 3600)
    bus.heartbeat_misses = int(read.number(raw.get("heartbeat_misses", 3), f"{where}.heartbeat_misses", 1, 1000))
    bus.request_timeout = read.number(raw.get("request_timeout", 5.0), f"{where}.request_timeout", 0.01, 3600)
    curve = raw.get("curve")
    if curve:
        curve_dir = curve.get("keys_dir") if isinstance(curve, dict) else curve
        bus.curve_dir = read.path(curve_dir, f"{where}.curve.keys_dir", node_id)
    return bus


def _services(raw: dict, where: str) -> ServiceConfig:
    svc = ServiceConfig()
    rng = raw.get("port_range", list(svc.port_range))
    if (not isinstance(rng, list) or len(rng) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in rng)
            or not 1 <= rng[0] <= rng[1] <= 65535):
        raise ConfigError(f"{where}.port_range: must be [first, last] ports, 1..65535, first <= last")
    svc.port_range = (rng[0], rng[1])
    svc.start_timeout = read.number(raw.get("start_timeout", svc.start_timeout), f"{where}.start_timeout", 0.1, 3600)
    svc.health_interval = read.number(raw.get("health_interval", svc.health_interval), f"{where}.health_interval", 0.05, 86400)
    svc.health_timeout = read.number(raw.get("health_timeout", svc.health_timeout), f"{where}.health_timeout", 0.05, 600)
    svc.max_restarts = int(read.number(raw.get("max_restarts", svc.max_restarts), f"{where}.max_restarts", 0, 1000))
    svc.restart_backoff = read.number(raw.get("restart_backoff", svc.restart_backoff), f"{where}.restart_backoff", 0, 600)
    return svc


def _capacity(raw: dict, where: str, data_path: Path) -> Resources:
    cpu = raw.get("cpu")
    cpu = float(psutil.cpu_count(logical=True) or 1) if cpu is None else read.number(cpu, f"{where}.cpu", 0, 1e6)
    memory = raw.get("memory")
    memory = psutil.virtual_memory().total if memory is None else read.size(memory, f"{where}.memory")
    gpu = 0  # set from the devices (_gpus)
    storage = raw.get("storage")
    if storage is None:
        probe = data_path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        storage = shutil.disk_usage(probe).total
    else:
        storage = read.size(storage, f"{where}.storage")
    return Resources(cpu=cpu, memory=memory, gpu=gpu, storage=storage)


MAX_GPUS = 1024


def _gpus(raw: dict, where: str) -> list[Device]:
    """This node's GPUs: ``gpus`` as a list of ``{index, uuid, name, memory}`` (or a count),
    else the seed's count ``gpu: N`` (the first N detected, numbered ones beyond them), else
    those detected (NVML, else nvidia-smi)."""
    listed, count = raw.get("gpus"), raw.get("gpu")
    if count is not None:
        count = int(read.number(count, f"{where}.gpu", 0, MAX_GPUS, whole=True))
    if isinstance(listed, list):
        devices = _gpu_list(listed, f"{where}.gpus")
        if count is not None and count != len(devices):
            raise ConfigError(f"{where}.gpu: {count} does not match the {len(devices)} "
                              f"device(s) of {where}.gpus")
        return devices
    if listed is not None:
        count = int(read.number(listed, f"{where}.gpus", 0, MAX_GPUS, whole=True))
    if count == 0:
        return []
    found, _source = detect()
    if count is None:
        return found
    return found[:count] + numbered(count - len(found[:count]), start=len(found[:count]))


def _gpu_list(items: list, where: str) -> list[Device]:
    if len(items) > MAX_GPUS:
        raise ConfigError(f"{where}: at most {MAX_GPUS} devices")
    devices, seen = [], set()
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not set(item) <= {"index", "uuid", "name", "memory"}:
            raise ConfigError(f"{at}: must be a mapping of index, uuid, name, memory")
        index = int(read.number(item.get("index", i), f"{at}.index", 0, 1e6, whole=True))
        uuid = item.get("uuid", str(index))
        if not isinstance(uuid, (str, int)) or isinstance(uuid, bool) or not str(uuid).strip() \
                or "," in str(uuid):
            raise ConfigError(f"{at}.uuid: must be a device uuid (GPU-...) without commas")
        name = item.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{at}.name: must be a string")
        memory = read.size(item.get("memory", 0), f"{at}.memory")
        uuid = str(uuid).strip()
        if uuid in seen or index in seen:
            raise ConfigError(f"{at}: index {index} / uuid {uuid} named twice")
        seen.update((uuid, index))
        devices.append(Device(index, uuid, name, memory))
    return devices


def detect_gpus() -> int:
    """How many NVIDIA GPUs this machine has (NVML, else nvidia-smi), else 0."""
    return len(detect()[0])
