"""Model fetch benchmark (run by hand): ``python tests/bench/bench_model_fetch.py [--mb 100]``.

A file of ``--mb`` MB is stored as a data upload on jiangsu; nanjing (its child, one hop)
fetches it into its model cache over the bus (chunks of ``model_cache.CHUNK``, ``WINDOW`` in
flight, sha256 checked, fsynced), interleaved with a raw copy of the stored file on the same
disk (``shutil.copyfile`` + fsync) in the same run. Two setups:

- processes: two agent processes; an ``mlmodel`` workload submitted at jiangsu, pinned to
  nanjing, names the file (the service programs are tests/fake_service.py, which accept any
  model); the fetch's own time is the one nanjing logs. Between rounds the cached file is
  removed, so the next workload finds it missing and fetches it again.
- in-process: both agents in this one process and event loop (tests/inprocess.py), the cache
  driven directly: both ends share one core and one GIL, a floor.

Target: fetch >= 50 % of the raw copy's MB/s.

A third setup, ``start``: the time from submit to running (healthy) of a real YOLO service
(``--model``, the shared models) on nanjing whose model is already in nanjing's model cache
(named as data stored on jiangsu: located before placing and again at the start, the cached
copy's sha256 checked) beside the same service with ``model_path`` on nanjing's disk, both
submitted at jiangsu, interleaved; p50 of ``--starts`` each. Target: within 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cnet.data_locator import ModelRef  # noqa: E402
from tests.bench.bench_upload import post_file  # noqa: E402
from tests.harness import (MODELS_DIR, AgentProcess, free_port_range, link_cluster,  # noqa: E402
                           wait_linked)
from tests.inprocess import running  # noqa: E402
from tests.service_helpers import fake_install  # noqa: E402
from tests.test_model_cache import TREE, upload  # noqa: E402

FETCHED = re.compile(r"model cache: \S+ \((\d+) bytes, sha256 \w+\) fetched from \S+ in "
                     r"([0-9.]+)s")


def raw_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def make_source(root: Path, mb: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    source = root / "model.bin"
    with open(source, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    return source


def report(what: str, mb: int, fetch: list[float], copy: list[float]) -> None:
    f_med, c_med = statistics.median(fetch), statistics.median(copy)
    print(f"{what}: {mb} MB over one hop, {len(fetch)} rounds (median, best):")
    print(f"  fetch into the model cache: {f_med:7.1f} MB/s  {max(fetch):7.1f} MB/s")
    print(f"  raw file copy (+fsync):     {c_med:7.1f} MB/s  {max(copy):7.1f} MB/s")
    print(f"  fetch / copy: {f_med / c_med:.0%} (target >= 50 %)")


def processes(args: argparse.Namespace, root: Path) -> None:
    source = make_source(root, args.mb)
    size = source.stat().st_size
    env, _flags = fake_install(root)
    agents = {n: AgentProcess(root, n, env=env) for n in TREE}
    link_cluster(agents, TREE)
    try:
        for agent in agents.values():
            agent.start()
        wait_linked(agents, TREE)
        status, body, _ = post_file(agents["jiangsu"].port, "/api/workloads", source)
        assert status == 201, body
        stored = json.loads(body)
        held = Path(stored["path"]) / source.name
        fetch, copy = [], []
        for i in range(args.rounds):
            spec = {"name": f"fetch-{i}", "type": "mlmodel", "placement": {"node": "nanjing"},
                    "config": {"model_type": "yolo",
                               "model": {"data_key": stored["data_key"], "path": source.name}},
                    "requirements": {"cpu": 0.5}}
            wl = agents["jiangsu"].submit(spec)
            assert wl["status"] == "running", wl
            times = [float(t) for n, t in FETCHED.findall(agents["nanjing"].output.read_text())
                     if int(n) == size]
            assert len(times) == i + 1, "nanjing did not log the fetch"
            fetch.append(size / times[-1] / 1e6)
            agents["jiangsu"].api("DELETE", f"/api/workloads/{wl['id']}")
            Path(wl["model_file"]).unlink()     # untimed: the next round fetches it again
            started = time.perf_counter()
            raw_copy(held, root / "copy.bin")
            copy.append(size / (time.perf_counter() - started) / 1e6)
            (root / "copy.bin").unlink()
    finally:
        for agent in agents.values():
            agent.cleanup()
    report("processes", args.mb, fetch, copy)


def starts(args: argparse.Namespace, root: Path) -> None:
    model = args.model
    services = {"services": {"port_range": list(free_port_range(2 * args.starts + 4))}}
    agents = {n: AgentProcess(root, n, config=services) for n in TREE}
    link_cluster(agents, TREE)
    try:
        for agent in agents.values():
            agent.start()
        wait_linked(agents, TREE)
        status, body, _ = post_file(agents["jiangsu"].port, "/api/workloads", model)
        assert status == 201, body
        stored = json.loads(body)
        ways = {"cached": {"model": {"data_key": stored["data_key"], "path": model.name}},
                "local path": {"model_path": str(model)}}

        def start(name: str, how: dict) -> float:
            spec = {"name": name, "type": "mlmodel", "placement": {"node": "nanjing"},
                    "config": {"model_type": "yolo", "workers": 1, "threads": 1, **how},
                    "requirements": {"cpu": 0.5}}
            started = time.perf_counter()
            wl = agents["jiangsu"].submit(spec)
            took = time.perf_counter() - started
            assert wl["status"] == "running" and wl["node_id"] == "nanjing", wl
            agents["jiangsu"].api("DELETE", f"/api/workloads/{wl['id']}")
            return took

        start("fill-the-cache", ways["cached"])        # untimed: the one fetch
        times: dict[str, list[float]] = {way: [] for way in ways}
        for i in range(args.starts):
            for way in (ways if i % 2 == 0 else reversed(ways)):
                times[way].append(start(f"start-{i}-{way.split()[0]}", ways[way]))
    finally:
        for agent in agents.values():
            agent.cleanup()
    cached, local = (statistics.median(times[w]) for w in ("cached", "local path"))
    print(f"start: submit to running of a YOLO service ({model.name}, {model.stat().st_size} "
          f"bytes) on nanjing, submitted at jiangsu, p50 of {args.starts} each:")
    print(f"  model in the cache (named as data): {cached * 1000:7.1f} ms")
    print(f"  model_path on local disk:           {local * 1000:7.1f} ms")
    print(f"  cached / local: {cached / local:.0%} (target <= 110 %)")


async def in_process(args: argparse.Namespace, root: Path) -> None:
    source = make_source(root, args.mb)
    size = source.stat().st_size
    async with running(root / "cluster", TREE) as cluster:
        stored = await upload(cluster["jiangsu"], "bench", {"model.bin": source})
        ref = ModelRef(stored["data_key"], "model.bin")
        held = Path(stored["path"]) / "model.bin"
        cache = cluster["nanjing"].models
        fetch, copy = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            entry = await cache.acquire("bench", ref)
            fetch.append(size / (time.perf_counter() - started) / 1e6)
            cache.release("bench")
            cache._drop(entry.sha256)             # untimed: the next round fetches again
            started = time.perf_counter()
            await asyncio.to_thread(raw_copy, held, root / "copy.bin")
            copy.append(size / (time.perf_counter() - started) / 1e6)
            (root / "copy.bin").unlink()
    report("in-process", args.mb, fetch, copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temp dir)")
    parser.add_argument("--setup", choices=("processes", "in-process", "start", "both", "all"),
                        default="all", help="both: processes and in-process; all: and start")
    parser.add_argument("--starts", type=int, default=7, help="starts of each kind (setup start)")
    parser.add_argument("--model", type=Path, default=MODELS_DIR / "yolo11n-320-int8.onnx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.setup in ("processes", "both", "all"):
            processes(args, Path(tmp) / "processes")
        if args.setup in ("in-process", "both", "all"):
            asyncio.run(in_process(args, Path(tmp) / "in-process"))
        if args.setup in ("start", "all"):
            starts(args, Path(tmp) / "start")


if __name__ == "__main__":
    main()
