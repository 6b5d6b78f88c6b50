"""Footprint benchmark (run by hand): ``python tests/bench/bench_footprint.py [--idle 60]``.

What an agent costs a small box, each figure beside a baseline measured in the same run:

a. Idle RSS, CPU and wake-ups (voluntary context switches, all threads) of each agent of the
   Jiangsu topology over ``--idle`` s at the defaults (1 s heartbeats), beside the dependency
   floor: a bare Python that imports tornado, pyzmq, msgpack, peewee, psutil, pyyaml and
   prometheus-client, serves one HTTP handler and idles. Targets: RSS <= 40 MB and within
   4 MB of the floor; CPU <= 0.15 % per agent. Also: no numpy, onnxruntime or OpenCV library
   mapped into an agent.
b. Start to healthy (p50 of ``--starts``): ``cnet agent`` from process start to ``/api/health``
   answering, beside the floor program's start to its handler answering and ``python -c pass``.
   Target: <= 300 ms.
c. ``cnet cluster up`` of the Jiangsu topology, wall time until it returns (p50 of ``--ups``),
   then ``cnet cluster down``, which must leave nothing running. Target: up <= 2 s.

The topology is the Jiangsu example on free ports, in a temp dir (tests/ports.py). The tree is
byte-compiled first, as an installed package is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import yaml  # noqa: E402

from tests.ports import free_port_range  # noqa: E402

# The dependency floor: what any agent must import, one HTTP handler, an idle loop.
FLOOR = """
import asyncio, sys
import msgpack, peewee, psutil, yaml, prometheus_client, zmq, zmq.asyncio
import tornado.web, tornado.httpserver

class Health(tornado.web.RequestHandler):
    def get(self):
        self.finish({"status": "healthy"})

async def main():
    tornado.web.Application([(r"/api/health", Health)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()

asyncio.run(main())
"""

# Native libraries that must not be mapped into an idle agent.
HEAVY = ("numpy", "onnxruntime", "cv2", "opencv")

JIANGSU = REPO / "topologies" / "jiangsu.yaml"


# -- topologies -------------------------------------------------------------------------------

def write_topology(path: Path, nodes: dict[str, dict], state_dir: Path,
                   log_level: str = "warning") -> Path:
    """Write ``nodes`` ({id: {parent, peers, labels}}) as a topology file on free ports.

    Each node gets an HTTP port and its own bus ROUTER and PUB ports, all from one free range.
    """
    first, _last = free_port_range(3 * len(nodes))
    out: dict[str, dict] = {}
    for i, (node_id, node) in enumerate(nodes.items()):
        entry: dict = {"port": first + 3 * i,
                       "bus": {"router_port": first + 3 * i + 1, "pub_port": first + 3 * i + 2}}
        if node.get("parent"):
            entry["parent"] = node["parent"]
        if node.get("peers"):
            entry["peers"] = list(node["peers"])
        if node.get("labels"):
            entry["labels"] = dict(node["labels"])
        out[node_id] = entry
    doc = {"state_dir": str(state_dir),
           "defaults": {"address": "127.0.0.1",
                        "resources": {"cpu": 8.0, "gpu": 0, "memory": 17179869184,
                                      "storage": 214748364800},
                        "logging": {"level": log_level, "format": "text"}},
           "nodes": out}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def jiangsu_nodes() -> dict[str, dict]:
    raw = yaml.safe_load(JIANGSU.read_text())["nodes"]
    return {n: {"parent": s.get("parent"), "peers": s.get("peers") or [],
                "labels": s.get("labels") or {}} for n, s in raw.items()}


def ports_of(topology: Path) -> dict[str, int]:
    return {n: s["port"] for n, s in yaml.safe_load(topology.read_text())["nodes"].items()}


# -- processes ----------------------------------------------------------------------------------

def compile_tree() -> None:
    """Byte-compile the tree, as an installed package is: with PYTHONDONTWRITEBYTECODE set,
    every agent would compile each changed module again, and its RSS and start show that."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cnet", "bus", "services"],
                   cwd=str(REPO), check=True, stdout=subprocess.DEVNULL)


def cnet(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def cluster_up(topology: Path, timeout: float = 60.0) -> float:
    """``cnet cluster up``; its wall time in seconds (raises if it failed)."""
    started = time.perf_counter()
    done = cnet("cluster", "up", str(topology), "--timeout", str(timeout), timeout=timeout + 60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cnet cluster up failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed


def cluster_down(topology: Path) -> float:
    started = time.perf_counter()
    done = cnet("cluster", "down", str(topology), timeout=300)
    if done.returncode != 0:
        print(f"cnet cluster down: {done.returncode}\n{done.stdout}{done.stderr}", file=sys.stderr)
    return time.perf_counter() - started


def agent_pids(state_dir: Path) -> dict[str, int]:
    """node id -> pid of each live agent under ``state_dir`` (from its pid file)."""
    pids = {}
    for pid_file in state_dir.glob("*/agent.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            if psutil.pid_exists(pid):
                pids[pid_file.parent.name] = pid
    return pids


def leftovers(state_dir: Path) -> list[int]:
    """Live processes whose command line names ``state_dir`` (agents, their workloads)."""
    mark = str(state_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(mark in part for part in proc.info["cmdline"] or ()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.info["pid"])
    return found


def kill_all(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def health_answers(port: int) -> bool:
    """One raw ``GET /api/health`` (cheap, so polling it costs the starting process little)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_to_healthy(argv: list[str], port: int, timeout: float = 20.0) -> tuple[float, subprocess.Popen]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=str(REPO))
    while not health_answers(port):
        if proc.poll() is not None or time.perf_counter() - started > timeout:
            proc.kill()
            raise RuntimeError(f"{argv[:4]} did not answer on {port} (exit {proc.poll()})")
        time.sleep(0.002)
    return time.perf_counter() - started, proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- measuring ------------------------------------------------------------------------------------

def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` (each is a sleep that ended)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` in seconds, to the nanosecond (schedstat), where the
    clock-tick counts psutil reads would be too coarse for an idle process."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


def idle_usage(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU %, RSS (MB), wake-ups/s and threads of each process over the same ``seconds``."""
    procs = {n: psutil.Process(pid) for n, pid in pids.items()}
    cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
    wake0 = {n: wakeups(p.pid) for n, p in procs.items()}
    time.sleep(seconds)
    return {n: {"cpu": (cpu_seconds(p.pid) - cpu0[n]) / seconds * 100,
                "rss": p.memory_info().rss / 2**20,
                "wakeups": (wakeups(p.pid) - wake0[n]) / seconds,
                "threads": p.num_threads()}
            for n, p in procs.items()}


def heavy_libraries(pid: int) -> list[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted({line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines()
                   if any(h in line.split()[-1] for h in HEAVY) and "/" in line})


def median_ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, " \
           f"max {max(values) * 1000:.0f}, n={len(values)})"


def usage_line(name: str, u: dict[str, float]) -> str:
    return (f"  {name:<12} rss {u['rss']:5.1f} MB  cpu {u['cpu']:.3f} %  "
            f"wake-ups {u['wakeups']:5.1f}/s  threads {u['threads']:.0f}")


# -- the three parts -----------------------------------------------------------------------------

def idle_part(tmp: Path, seconds: float) -> None:
    topology = write_topology(tmp / "jiangsu.yaml", jiangsu_nodes(), tmp / "idle")
    floor_port = free_port_range(1)[0]
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(floor_port)], cwd=str(REPO))
    try:
        cluster_up(topology)
        while not health_answers(floor_port):
            time.sleep(0.01)
        pids = agent_pids(tmp / "idle")
        time.sleep(2.0)   # past start-up work
        usage = idle_usage({**pids, "floor": floor.pid}, seconds)
        heavy = {n: heavy_libraries(pid) for n, pid in pids.items()}
    finally:
        cluster_down(topology)
        stop(floor)
        kill_all(leftovers(tmp / "idle"))
    base = usage.pop("floor")
    print(f"a. idle over {seconds:g} s, the four Jiangsu agents beside the dependency floor:")
    print(usage_line("floor", base))
    for node_id, u in usage.items():
        print(usage_line(node_id, u) + f"   (+{u['rss'] - base['rss']:.1f} MB over the floor)")
    worst = max(u["rss"] for u in usage.values())
    cpu = statistics.mean(u["cpu"] for u in usage.values())
    print(f"  worst rss {worst:.1f} MB (target <= 40 MB and <= floor + 4 = {base['rss'] + 4:.1f} MB); "
          f"mean cpu {cpu:.3f} % (target <= 0.15 %)")
    mapped = sorted({lib for libs in heavy.values() for lib in libs})
    print(f"  numpy/onnxruntime/OpenCV libraries mapped into an agent: {', '.join(mapped) or 'none'}")


def start_part(tmp: Path, starts: int) -> None:
    topology = write_topology(tmp / "single.yaml", {"jiangsu": {}}, tmp / "starts")
    port = ports_of(topology)["jiangsu"]
    python_pass, floor_times, agent_times = [], [], []
    for i in range(starts):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_pass.append(time.perf_counter() - t0)
        floor_port = free_port_range(1)[0]
        elapsed, proc = start_to_healthy([sys.executable, "-c", FLOOR, str(floor_port)], floor_port)
        floor_times.append(elapsed)
        stop(proc)
        elapsed, proc = start_to_healthy(
            [sys.executable, "-m", "cnet", "agent", "--topology", str(topology), "--node",
             "jiangsu", "--state-dir", str(tmp / "starts" / str(i))], port)
        agent_times.append(elapsed)
        stop(proc)
    print("b. start to healthy (process start -> GET /api/health answers):")
    print(f"  python -c pass:           {median_ms(python_pass)}")
    print(f"  dependency floor program: {median_ms(floor_times)}")
    print(f"  cnet agent:               {median_ms(agent_times)}   (target p50 <= 300 ms)")


def cluster_part(tmp: Path, ups: int) -> None:
    up_times, down_times, left = [], [], []
    for i in range(ups):
        state = tmp / f"cluster-{i}"
        topology = write_topology(tmp / f"cluster-{i}.yaml", jiangsu_nodes(), state)
        try:
            up_times.append(cluster_up(topology))
        finally:
            down_times.append(cluster_down(topology))
            found = leftovers(state)
            left.extend(found)
            kill_all(found)
    print("c. cnet cluster up / down of the Jiangsu topology (4 agents):")
    print(f"  up:   {median_ms(up_times)}   (target p50 <= 2 s)")
    print(f"  down: {median_ms(down_times)}; processes left running: {len(left)}")


def main(args: argparse.Namespace) -> None:
    print(f"machine: {psutil.cpu_count()} cpus, {psutil.virtual_memory().total / 2**30:.1f} GiB, "
          f"python {sys.version.split()[0]}")
    compile_tree()
    with tempfile.TemporaryDirectory(prefix="cnet-footprint-") as tmp:
        parts = set(args.parts)
        if "idle" in parts:
            idle_part(Path(tmp), args.idle)
        if "start" in parts:
            start_part(Path(tmp), args.starts)
        if "cluster" in parts:
            cluster_part(Path(tmp), args.ups)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    parser.add_argument("--starts", type=int, default=10, help="agent starts to time")
    parser.add_argument("--ups", type=int, default=5, help="cluster ups to time")
    parser.add_argument("--parts", nargs="+", default=["idle", "start", "cluster"],
                        choices=["idle", "start", "cluster"])
    main(parser.parse_args())
