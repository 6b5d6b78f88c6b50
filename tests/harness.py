"""Test harness: real agents as subprocesses on free ports with their own temp state dirs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
import yaml

from cnet.topology import deep_merge  # noqa: F401  (tests import it from here)
from tests.ports import free_port, free_port_range  # noqa: F401  (likewise)

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CNET_SHARED_DIR", REPO.parent / "shared"))
MODELS_DIR = Path(os.environ.get("CNET_MODELS_DIR", SHARED / "models"))



def wait_for(condition, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``condition()`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


def gone(pid: int) -> bool:
    """True if the process no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class AgentProcess:
    """One ``cnet agent`` process; ``api()`` talks REST to it."""

    def __init__(self, root: Path, node_id: str = "jiangsu", config: dict | None = None,
                 env: dict | None = None):
        self.node_id = node_id
        self.root = root / node_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        base = {
            "agent": {"node_id": node_id, "address": "127.0.0.1", "port": self.port,
                      "state_dir": str(self.root / "state")},
            "resources": {"cpu": 8.0, "gpu": 0, "memory": 17179869184, "storage": 214748364800},
            "logging": {"level": "info", "format": "text"},
            "bus": {"router_port": free_port(), "pub_port": free_port()},
        }
        self.config = deep_merge(base, config or {})
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.token = self.config.get("api", {}).get("token")
        self.proc: subprocess.Popen | None = None
        self.output = self.root / "agent.out"

    @property
    def state_dir(self) -> Path:
        return Path(self.config["agent"]["state_dir"])

    def configure(self, extra: dict) -> "AgentProcess":
        """Merge ``extra`` into the config and rewrite the file (before ``start()``)."""
        self.config = deep_merge(self.config, extra)
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.token = self.config.get("api", {}).get("token")
        return self

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        out = open(self.output, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cnet", "agent", "--config",
                                      str(self.config_path)], stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=str(REPO))
        out.close()
        wait_for(self._up, timeout=timeout, message=f"agent {self.node_id} at {self.url}")
        return self

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.node_id} exited with {self.proc.returncode}:\n"
                               + self.output.read_text()[-3000:])
        return requests.get(self.url + "/api/health", timeout=1).status_code == 200

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def submit(self, spec: dict, expect: int | None = 201) -> dict:
        resp = self.api("POST", "/api/workloads", json=spec)
        if expect is not None:
            assert resp.status_code == expect, resp.text
        return resp.json()

    def workload(self, workload_id: str) -> dict:
        return self.api("GET", f"/api/workloads/{workload_id}").json()

    def wait_status(self, workload_id: str, *statuses: str, timeout: float = 15.0) -> dict:
        return wait_for(lambda: (w := self.workload(workload_id))["status"] in statuses and w,
                        timeout=timeout, message=f"{workload_id} to be {'/'.join(statuses)}")

    def resources(self) -> dict:
        return self.api("GET", "/api/resources").json()

    def kill(self) -> None:
        """``kill -9`` the agent (its workloads keep running, as after a real crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop every workload this agent ever started, then the agent itself."""
        if self.proc and self.proc.poll() is None:
            try:
                items = self.api("GET", "/api/workloads", timeout=5).json()["workloads"]
                for wl in items:
                    if wl["status"] in ("pending", "running", "stopping") and wl["node_id"] == self.node_id:
                        self.api("POST", f"/api/workloads/{wl['id']}/stop", timeout=30)
            except (requests.RequestException, KeyError, ValueError):
                pass
        self.terminate()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        db = self.state_dir / "cnet.db"
        if not db.exists():
            return
        try:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT runtime FROM workloads").fetchall()
        except sqlite3.Error:
            return
        for (runtime,) in rows:
            info = json.loads(runtime or "{}")
            pid, started = info.get("pid"), info.get("_start_time")
            if not pid:
                continue
            try:
                proc = psutil.Process(pid)
                if started is None or abs(proc.create_time() - started) < 0.05:
                    os.killpg(pid, signal.SIGKILL)
            except (psutil.Error, OSError):
                pass


def process_spec(name: str = "test-process", command: str = "sleep", args=("60",),
                 cpu: float = 1.0, memory: int = 536870912, **extra) -> dict:
    spec = {"name": name, "type": "process", "requirements": {"cpu": cpu, "memory": memory},
            "config": {"command": command, "args": list(args)}}
    spec.update(extra)
    return spec


def load_topology(path: Path) -> dict[str, dict]:
    """A topology file's nodes as ``{node_id: {"parent", "peers", "labels"}}`` (ports dropped)."""
    nodes = yaml.safe_load(Path(path).read_text())["nodes"]
    return {node_id: {"parent": n.get("parent"), "peers": list(n.get("peers") or []),
                      "labels": dict(n.get("labels") or {})} for node_id, n in nodes.items()}


def link_cluster(agents: dict[str, AgentProcess], topology: dict[str, dict]) -> None:
    """Point each agent's ``parent``/``peers`` config at the others' HTTP ports (before start)."""
    for node_id, node in topology.items():
        extra: dict = {}
        if node.get("parent"):
            extra["parent"] = {"enabled": True, "address": f"127.0.0.1:{agents[node['parent']].port}"}
        if node.get("peers"):
            extra["peers"] = {"enabled": True,
                              "addresses": [f"127.0.0.1:{agents[p].port}" for p in node["peers"]]}
        if node.get("labels"):
            extra["agent"] = {"labels": node["labels"]}
        agents[node_id].configure(extra)


def expected_links(topology: dict[str, dict], node_id: str) -> set[str]:
    node = topology[node_id]
    links = set(node.get("peers") or [])
    if node.get("parent"):
        links.add(node["parent"])
    links.update(n for n, other in topology.items() if other.get("parent") == node_id)
    return links


def links_alive(agent: AgentProcess, neighbours: set[str]) -> bool:
    """True when ``agent``'s /api/nodes shows every one of ``neighbours`` alive, with its first
    snapshot in (its ``workloads`` count known): the scheduler sees its resources from then on."""
    view = agent.api("GET", "/api/nodes", timeout=5).json()
    seen = {e["node_id"]: e for e in [view.get("parent"), *view["children"], *view["peers"]] if e}
    return all(seen.get(n, {}).get("status") == "alive" and seen[n].get("workloads") is not None
               for n in neighbours)


def wait_linked(agents: dict[str, AgentProcess], topology: dict[str, dict], timeout: float = 30.0) -> None:
    """Wait until every agent sees each of its topology neighbours alive."""
    for node_id, agent in agents.items():
        want = expected_links(topology, node_id)
        wait_for(lambda a=agent, w=want: links_alive(a, w), timeout=timeout,
                 message=f"{node_id}'s links {sorted(want)} alive")
