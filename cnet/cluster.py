"""The topology launcher: ``cnet cluster up|status|down FILE`` runs every node in the background."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .executors.logfile import tail
from .state_lock import AgentPid, find_agent
from .topology import Topology


class ClusterError(Exception):
    pass


class Cluster:
    def __init__(self, topology: Topology, out=sys.stdout):
        self.topo = topology
        self.out = out

    # -- paths and probes ----------------------------------------------------------------

    def _log_file(self, node_id: str) -> Path:
        return self.topo.node_state_dir(node_id) / "agent.out"

    def find(self, node_id: str) -> AgentPid:
        """The node's live agent, however it was started; a stale pid file is removed."""
        return find_agent(self.topo.node_state_dir(node_id))

    def pid(self, node_id: str) -> int | None:
        return self.find(node_id).pid

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

    def healthy(self, node_id: str, timeout: float = 2.0) -> bool:
        try:
            return self._get(node_id, "/api/health", timeout).get("status") == "healthy"
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
        """Start every node not already running, then wait until each is healthy and sees all
        of its links alive.

        Nodes start parents first, a few at a time (twice the cpu count): a node is started
        once its parent answers, so its first look-up of the parent succeeds instead of backing
        off, and a large topology does not start hundreds of interpreters on a few cores at
        once. Each agent gets its own config file (``<state>/<node>/agent.yaml``), so none of
        them reads and checks the whole topology again.
        """
        deadline = time.monotonic() + timeout
        started: dict[str, subprocess.Popen] = {}
        waiting: list[str] = []
        for node_id in self._start_order():
            pid = self.pid(node_id)
            if pid:
                self._say(f"{node_id}: already running (pid {pid})")
            else:
                waiting.append(node_id)
        up = set(self.topo.node_ids()) - set(waiting)     # answering /api/health
        starting: set[str] = set()
        slots = max(4, 2 * (os.cpu_count() or 1))
        while (waiting or starting) and time.monotonic() < deadline:
            for node_id in [n for n in waiting if self._parent_up(n, up)][:slots - len(starting)]:
                waiting.remove(node_id)
                starting.add(node_id)
                started[node_id] = self._spawn(node_id, topology_path)
            for node_id in sorted(starting):
                if started[node_id].poll() is not None:
                    self._fail(node_id, started, "exited during start-up")
                if self.healthy(node_id, timeout=0.5):
                    starting.discard(node_id)
                    up.add(node_id)
            if waiting or starting:
                time.sleep(0.02)
        pending = set(self.topo.node_ids())
        while pending and not waiting and not starting and time.monotonic() < deadline:
            for node_id in sorted(pending):
                if node_id in started and started[node_id].poll() is not None:
                    self._fail(node_id, started, "exited during start-up")
                if all(s == "alive" for s in self.links(node_id).values()):
                    pending.discard(node_id)
            if pending:
                time.sleep(0.05)
        if pending:
            node_id = sorted(waiting or starting or pending)[0]
            links = self.links(node_id)
            down = [f"{n} {s}" for n, s in links.items() if s != "alive"]
            why = f"links not alive: {', '.join(down)}" if down and self.healthy(node_id) \
                else "did not answer /api/health"
            if node_id in waiting:
                why = f"not started: its parent {self.topo.nodes[node_id].get('parent')} is not up"
            self._fail(node_id, started, f"not up after {timeout:g}s ({why})")
        for node_id in self.topo.node_ids():
            self._say(f"{node_id}: {self.topo.url(node_id)}/  (pid {self.pid(node_id)}, "
                      f"state {self.topo.node_state_dir(node_id)})")

    def _start_order(self) -> list[str]:
        """Node ids, each after its parent (parents outside the topology do not count)."""
        def depth(node_id: str, seen: frozenset = frozenset()) -> int:
            parent = self.topo.nodes[node_id].get("parent")
            if parent not in self.topo.nodes or parent in seen:
                return 0
            return 1 + depth(parent, seen | {node_id})
        ids = self.topo.node_ids()
        return sorted(ids, key=lambda n: (depth(n), ids.index(n)))

    def _parent_up(self, node_id: str, up: set[str]) -> bool:
        parent = self.topo.nodes[node_id].get("parent")
        return parent not in self.topo.nodes or parent in up

    def _spawn(self, node_id: str, topology_path: Path) -> subprocess.Popen:
        """Start the node's agent; it writes its own pid file once it holds its state dir."""
        state = self.topo.node_state_dir(node_id)
        state.mkdir(parents=True, exist_ok=True)
        config = state / "agent.yaml"
        text = (f"# {node_id} of {topology_path.resolve()}, written by `cnet cluster up`\n"
                + yaml.safe_dump(self.topo.seed_config(node_id), sort_keys=False))
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it may hold a token
        with os.fdopen(fd, "w") as f:
            f.write(text)
        argv = [sys.executable, "-m", "cnet", "agent", "--config", str(config)]
        with open(self._log_file(node_id), "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _fail(self, node_id: str, started: dict[str, subprocess.Popen], why: str) -> None:
        log_tail = tail(self._log_file(node_id), 20)
        self.down(only=list(started), quiet=True)
        # Any still starting holds no lock yet, so down() could not find it.
        self._terminate({n: p.pid for n, p in started.items() if p.poll() is None}, quiet=True)
        raise ClusterError(f"{node_id} {why}; the last lines of {self._log_file(node_id)}:\n"
                           f"{log_tail}")

    def down(self, only: list[str] | None = None, quiet: bool = False, timeout: float = 20.0) -> None:
        """Stop the workloads, then the agent, of every node found running, whoever started it."""
        running = {}
        for node_id in only if only is not None else self.topo.node_ids():
            found = self.find(node_id)
            if found.pid is not None:
                running[node_id] = found.pid
            elif not quiet:
                self._say(f"{node_id}: not running{_stale_note(found)}")
        for node_id in running:
            if self.healthy(node_id):
                self._stop_workloads(node_id)
        self._terminate(running, quiet, timeout)

    def _terminate(self, pids: dict[str, int], quiet: bool, timeout: float = 20.0) -> None:
        """SIGTERM each node's agent, SIGKILL one that outlives ``timeout``."""
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        waiting = dict(pids)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for node_id, pid in list(waiting.items()):
                if not _alive(pid):
                    del waiting[node_id]
                    if not quiet:
                        self._say(f"{node_id}: stopped")
            time.sleep(0.05)
        for node_id, pid in waiting.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._say(f"{node_id}: killed (did not stop within {timeout:g}s)")
        deadline = time.monotonic() + 5.0
        while any(_alive(pid) for pid in waiting.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for node_id in pids:
            self.find(node_id)   # removes the pid file of one that could not clean up after itself

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
        notes = []
        for node_id in self.topo.node_ids():
            found = self.find(node_id)
            pid = found.pid
            if found.stale is not None:
                notes.append(f"{node_id}: not running{_stale_note(found)}")
            up = pid is not None and self.healthy(node_id)
            all_up &= up
            links = self.links(node_id) if up else {}
            rows.append((node_id, self.topo.url(node_id), str(pid or "-"), "up" if up else "down",
                         ", ".join(f"{n}={s}" for n, s in links.items()) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self._say("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        for note in notes:
            self._say(note)
        return all_up

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _stale_note(found: AgentPid) -> str:
    if found.stale is None:
        return ""
    return f" (removed a stale pid file{f' of pid {found.stale}' if found.stale else ''})"


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
