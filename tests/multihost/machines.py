"""The machines of the multi-host test bed: one agent per network namespace, each on its own
address with the same ports, its own state dir, working dir, ``PATH`` and a private ``/tmp``
(a tmpfs in its own mount namespace), all reached through the client namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..harness import MODELS_DIR, REPO, AgentProcess, deep_merge, wait_for, wait_linked
from .client import NamespaceClient, Reply
from .netns import CLIENT_ADDRESS, Host, Network

HTTP_PORT = 8080              # every machine: the same ports on its own address
TOKEN = "multihost-token"
# sh -c script: a private /tmp for the agent and everything it starts, then the agent itself.
# What the agent needs from the host's /tmp (the checkout, its venv, the shared models, when
# they live there) is bound back in from $1, the host's /tmp seen from a side directory.
_PRIVATE_TMP = """h="$1"; shift
mount --bind /tmp "$h" && mount -t tmpfs -o mode=1777,size=256m cnet-tmp /tmp || exit 1
IFS=:
for p in $CNET_MH_KEEP; do
  [ -n "$p" ] || continue
  mkdir -p "$p" && mount --bind "$h${p#/tmp}" "$p" || exit 1
done
unset IFS
umount -l "$h"
exec "$@"
"""


def _kept_from_host_tmp() -> str:
    """The host paths under /tmp an agent needs (outermost only), ``:``-separated."""
    tmp = Path("/tmp")
    wanted = [REPO, Path(sys.prefix), Path(sys.base_prefix), MODELS_DIR,
              *(Path(p) for p in os.environ.get("PYTHONPATH", "").split(":") if p)]
    under = sorted({p.absolute() for p in wanted if p.exists()
                    and tmp in p.absolute().parents}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in under:
        if not any(k == path or k in path.parents for k in kept):
            kept.append(path)
    return ":".join(str(p) for p in kept)


class Machine(AgentProcess):
    """One agent in its own namespace; ``api()`` and ``bus()`` go through the client namespace,
    and so do the REST helpers it keeps from :class:`AgentProcess` (``submit``, ``workload``,
    ``wait_status``, ``resources``)."""

    def __init__(self, root: Path, host: Host, client: NamespaceClient, config: dict):
        self.node_id, self.host, self.client = host.name, host, client
        self.root = root / host.name
        for sub in ("state", "work", "bin", "home", "host-tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.port = HTTP_PORT
        base = {"agent": {"node_id": host.name, "address": host.address, "port": HTTP_PORT,
                          "state_dir": str(self.root / "state")},
                "resources": {"cpu": 4.0, "gpu": 0, "memory": 8 << 30, "storage": 100 << 30},
                "logging": {"level": "info", "format": "text"},
                "api": {"token": TOKEN}}
        self.config = deep_merge(base, config)
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.url = f"http://{host.address}:{HTTP_PORT}"
        self.hostport = f"{host.address}:{HTTP_PORT}"
        self.token = TOKEN
        self.env = {"PATH": f"{self.bin_dir}:{Path(sys.executable).parent}:"
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": str(self.root / "home"), "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        if "PYTHONPATH" in os.environ:          # the code under test, where it is not installed
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.proc: subprocess.Popen | None = None
        self.output = self.root / "agent.out"

    @property
    def bin_dir(self) -> Path:
        """On this machine's ``PATH`` only."""
        return self.root / "bin"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    def install(self, name: str, script: str) -> Path:
        """A command that exists on this machine only."""
        path = self.bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    def launch(self) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, "unshare", "--mount", "--propagation",
                 "private", "sh", "-c", _PRIVATE_TMP, "sh", str(self.root / "host-tmp"),
                 sys.executable, "-m", "cnet", "agent", "--config", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT,
                env={**self.env, "CNET_MH_KEEP": _kept_from_host_tmp()}, cwd=self.work_dir)

    def start(self, timeout: float = 30.0) -> Machine:
        if self.proc is None or self.proc.poll() is not None:
            self.launch()
        wait_for(lambda: self.proc.poll() is not None or self._up(), timeout=timeout,
                 interval=0.1, message=f"agent {self.node_id} at {self.url}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.node_id} exited with {self.proc.returncode}:\n"
                               + self.log_tail())
        return self

    def _up(self) -> bool:
        return self.api("GET", "/api/health", timeout=1).status_code == 200

    def api(self, method: str, path: str, **kwargs) -> Reply:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return self.client.http(method, self.url + path, headers=headers, **kwargs)

    def bus(self, call: str, *args, timeout: float = 10.0):
        """The Python client library (``SyncClient``) against this agent, from the client namespace."""
        return self.client.bus(self.hostport, call, *args, token=self.token, timeout=timeout)

    def nodes(self) -> dict[str, dict]:
        """This agent's view of its neighbours: ``{node_id: entry}`` from ``GET /api/nodes``."""
        view = self.api("GET", "/api/nodes", timeout=5).json()
        return {e["node_id"]: e for e in [view.get("parent"), *view["children"], *view["peers"]] if e}

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "agent.log"

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log, and of its stdout/stderr (where a crash shows)."""
        tails = []
        for path in (self.log_path, self.output):
            try:
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                continue
            if text:
                tails.append(f"[{path}]\n{text}")
        return "\n".join(tails) or "(no output)"


class Cluster:
    """The machines of one topology on one network, with the client namespace beside them."""

    def __init__(self, root: Path, topology: dict[str, dict], config: dict | None = None,
                 node_config: dict[str, dict] | None = None, delayable: tuple[str, ...] = ()):
        if Path("/tmp") in root.resolve().parents:
            raise ValueError(f"{root}: the machines' /tmp is private, so their root must be elsewhere")
        self.root, self.topology = root, topology
        self.config, self.node_config = config or {}, node_config or {}
        self.delayable = delayable
        self.net = Network()
        self.client = NamespaceClient(self.net.ns_name("client"), root / "client.err")
        self.machines: dict[str, Machine] = {}
        self.no_delay = ""                  # why delay() cannot work here, if it cannot

    def __getitem__(self, node_id: str) -> Machine:
        return self.machines[node_id]

    def start(self, timeout: float = 60.0) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.net.create()
        self.net.add_host("client", CLIENT_ADDRESS)
        hosts = {n: self.net.add_host(n, f"10.77.0.{10 + i}") for i, n in enumerate(self.topology)}
        for node_id in self.delayable:
            try:
                self.net.prepare_delay(node_id, self.root / f"relay-{node_id}.err")
            except RuntimeError as exc:     # e.g. no REDIRECT target: only delay tests skip
                self.no_delay = f"cannot delay {node_id}'s link here: {exc}"
        self.client.start()
        address = {n: f"{h.address}:{HTTP_PORT}" for n, h in hosts.items()}
        for node_id, node in self.topology.items():
            links: dict = {"agent": {"labels": node.get("labels") or {}}}
            if node.get("parent"):
                links["parent"] = {"enabled": True, "address": address[node["parent"]]}
            if node.get("peers"):
                links["peers"] = {"enabled": True, "addresses": [address[p] for p in node["peers"]]}
            config = deep_merge(deep_merge(self.config, self.node_config.get(node_id, {})), links)
            self.machines[node_id] = Machine(self.root, hosts[node_id], self.client, config)
        for machine in self.machines.values():
            machine.launch()            # all at once: they find each other as they come up
        for machine in self.machines.values():
            machine.start(timeout)
        self.wait_linked(timeout)
        return self

    def wait_linked(self, timeout: float = 30.0) -> None:
        wait_linked(self.machines, self.topology, timeout)

    def reset(self, timeout: float = 30.0) -> None:
        """After a test: every link healed, every workload deleted, every link alive again."""
        self.net.heal_all()
        dead = {n: m.log_tail() for n, m in self.machines.items() if m.proc.poll() is not None}
        for node_id in dead:
            self.machines[node_id].start()      # for the tests after this one
        self.wait_linked(timeout)
        for machine in self.machines.values():
            for wl in machine.api("GET", "/api/workloads", timeout=10).json()["workloads"]:
                machine.api("DELETE", f"/api/workloads/{wl['id']}", timeout=30)
        for machine in self.machines.values():
            wait_for(lambda m=machine: m.api("GET", "/api/workloads").json()["count"] == 0,
                     timeout=timeout, message=f"{machine.node_id} without workloads")
        if dead:
            raise RuntimeError("agents exited during the test (restarted since):\n"
                               + "\n".join(f"--- {n}\n{tail}" for n, tail in dead.items()))

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {m.node_id}\n{m.log_tail(lines)}" for m in self.machines.values())

    def teardown(self, keep: bool = False) -> None:
        """Agents stopped, then every process, namespace (and so every mount) removed."""
        deadline = time.monotonic() + 10
        for machine in self.machines.values():
            if machine.proc is not None and machine.proc.poll() is None:
                machine.proc.terminate()
        for machine in self.machines.values():
            if machine.proc is not None:
                try:
                    machine.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self.client.close()
        self.net.teardown()
        for machine in self.machines.values():
            if machine.proc is not None and machine.proc.poll() is None:
                machine.proc.kill()
                machine.proc.wait(timeout=10)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def private_tmp(machine: Machine) -> Path:
    """``machine``'s private ``/tmp`` seen from the host (through its agent's mount namespace):
    a file written here exists on that machine only. The agent must be running."""
    if machine.proc is None or machine.proc.poll() is not None:
        raise RuntimeError(f"agent {machine.node_id} is not running: its /tmp is gone")
    return Path(f"/proc/{machine.proc.pid}/root/tmp")


class SideCluster(Cluster):
    """A second, short-lived cluster beside the session's bed, on namespaces of its own
    (``<run>-<tag>-*``: swept with the run's when stale, and removed by its own teardown
    without touching the bed's); its own bridge, client and 10.77.0.0/24, isolated from the
    bed's by the namespaces."""

    def __init__(self, root: Path, topology: dict[str, dict], tag: str, **kwargs):
        super().__init__(root, topology, **kwargs)
        self.net.run_id = f"{self.net.run_id}-{tag}"
        self.net.bridge_ns = f"{self.net.run_id}-bridge"
        self.client = NamespaceClient(self.net.ns_name("client"), root / "client.err")
