"""The topology launcher: ``cnet cluster up|status|down FILE`` runs every node in the background."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .executors.logfile import tail
from .topology import Topology


class ClusterError(Exception):
    pass


class Cluster:
    def __init__(self, topology: Topology, out=sys.stdout):
        self.topo = topology
        self.out = out

    # -- paths and probes ----------------------------------------------------------------

    def _pid_file(self, node_id: str) -> Path:
        return self.topo.node_state_dir(node_id) / "agent.pid"

    def _log_file(self, node_id: str) -> Path:
        return self.topo.node_state_dir(node_id) / "agent.out"

    def pid(self, node_id: str) -> int | None:
        try:
            pid = int(self._pid_file(node_id).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def _get(self, node_id: str, path: str, timeout: float = 2.0):
        req = urllib.request.Request(self.topo.url(node_id) + path)
        token = self.topo.token(node_id)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def _request(self, node_id: str, method: str, path: str, timeout: float = 30.0):
        req = urllib.request.Request(self.topo.url(node_id) + path, method=method, data=b"")
        token = self.topo.token(node_id)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def healthy(self, node_id: str) -> bool:
        try:
            return self._get(node_id, "/api/health").get("status") == "healthy"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def links(self, node_id: str) -> dict[str, str]:
        """Each expected neighbour of the node -> its status as the node sees it."""
        expected = self.topo.neighbours(node_id)
        try:
            view = self._get(node_id, "/api/nodes")
        except (OSError, ValueError, urllib.error.URLError):
            return {n: "unknown" for n in expected}
        seen = {}
        for entry in [view.get("parent")] + view.get("children", []) + view.get("peers", []):
            if entry:
                seen[entry["node_id"]] = entry.get("status", "unknown")
        return {n: seen.get(n, "unknown") for n in expected}

    # -- commands ------------------------------------------------------------------------

    def up(self, topology_path: Path, timeout: float = 60.0) -> None:
        started: list[str] = []
        for node_id in self.topo.node_ids():
            if self.pid(node_id) and self.healthy(node_id):
                self._say(f"{node_id}: already running (pid {self.pid(node_id)})")
                continue
            self._spawn(node_id, topology_path)
            started.append(node_id)
        deadline = time.monotonic() + timeout
        pending = set(self.topo.node_ids())
        while pending and time.monotonic() < deadline:
            for node_id in sorted(pending):
                if node_id in started and self.pid(node_id) is None:
                    self._fail(node_id, started, "exited during start-up")
                if self.healthy(node_id) and all(s == "alive" for s in self.links(node_id).values()):
                    pending.discard(node_id)
            if pending:
                time.sleep(0.1)
        if pending:
            node_id = sorted(pending)[0]
            links = self.links(node_id)
            down = [f"{n} {s}" for n, s in links.items() if s != "alive"]
            why = f"links not alive: {', '.join(down)}" if down and self.healthy(node_id) \
                else "did not answer /api/health"
            self._fail(node_id, started, f"not up after {timeout:g}s ({why})")
        for node_id in self.topo.node_ids():
            self._say(f"{node_id}: {self.topo.url(node_id)}/  (pid {self.pid(node_id)}, "
                      f"state {self.topo.node_state_dir(node_id)})")

    def _spawn(self, node_id: str, topology_path: Path) -> None:
        state = self.topo.node_state_dir(node_id)
        state.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cnet", "agent", "--topology", str(topology_path.resolve()),
                "--node", node_id, "--state-dir", str(self.topo.state_dir)]
        with open(self._log_file(node_id), "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._pid_file(node_id).write_text(f"{proc.pid}\n")

    def _fail(self, node_id: str, started: list[str], why: str) -> None:
        log_tail = tail(self._log_file(node_id), 20)
        self.down(only=started, quiet=True)
        raise ClusterError(f"{node_id} {why}; the last lines of {self._log_file(node_id)}:\n"
                           f"{log_tail}")

    def down(self, only: list[str] | None = None, quiet: bool = False, timeout: float = 20.0) -> None:
        nodes = only if only is not None else self.topo.node_ids()
        for node_id in nodes:
            if self.pid(node_id) and self.healthy(node_id):
                self._stop_workloads(node_id)
        waiting = {}
        for node_id in nodes:
            pid = self.pid(node_id)
            if pid is None:
                self._pid_file(node_id).unlink(missing_ok=True)  # stale: it died by itself
                if not quiet:
                    self._say(f"{node_id}: not running")
                continue
            os.kill(pid, signal.SIGTERM)
            waiting[node_id] = pid
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for node_id, pid in list(waiting.items()):
                if not _alive(pid):
                    del waiting[node_id]
                    self._pid_file(node_id).unlink(missing_ok=True)
                    if not quiet:
                        self._say(f"{node_id}: stopped")
            time.sleep(0.05)
        for node_id, pid in waiting.items():
            os.kill(pid, signal.SIGKILL)
            self._pid_file(node_id).unlink(missing_ok=True)
            self._say(f"{node_id}: killed (did not stop within {timeout:g}s)")

    def _stop_workloads(self, node_id: str) -> None:
        """Stop what runs on the node, so nothing is left behind as an orphan."""
        try:
            items = self._get(node_id, "/api/workloads")["workloads"]
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return
        for wl in items:
            if wl["status"] in ("pending", "running", "stopping") and wl.get("node_id") == node_id:
                try:
                    self._request(node_id, "POST", f"/api/workloads/{wl['id']}/stop")
                except (OSError, ValueError, urllib.error.URLError) as exc:
                    self._say(f"{node_id}: could not stop workload {wl['id']}: {exc}")

    def status(self) -> bool:
        all_up = True
        rows = [("NODE", "URL", "PID", "STATE", "LINKS")]
        for node_id in self.topo.node_ids():
            pid = self.pid(node_id)
            up = pid is not None and self.healthy(node_id)
            all_up &= up
            links = self.links(node_id) if up else {}
            rows.append((node_id, self.topo.url(node_id), str(pid or "-"), "up" if up else "down",
                         ", ".join(f"{n}={s}" for n, s in links.items()) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self._say("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return all_up

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our own child: reap it, or it lingers as a zombie
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
