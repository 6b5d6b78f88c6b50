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
  driven directly: both ends share one GIL. Beside the fetch it times its two halves alone,
  to show where the time goes: the transport (the same chunk requests over the same hop, the
  answers dropped) and the sink (each chunk hashed and written, then fsynced, ``FileSink``,
  from the stored file), and the CPU time the process used per second of the fetch.

The processes setup also prints the CPU time each agent used during its fetch, and the
machine's load: on a busy 2-core machine the fetch is CPU-bound (about one core's worth
free), and sha256 alone costs about as much as the whole raw copy.

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
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cnet import model_cache  # noqa: E402
from cnet.data_locator import ModelRef  # noqa: E402
from cnet.model_sink import FileSink  # noqa: E402
from tests.bench.bench_upload import post_file  # noqa: E402
from tests.harness import MODELS_DIR, AgentProcess, free_port_range, link_cluster, wait_linked  # noqa: E402
from tests.inprocess import running  # noqa: E402
from tests.service_helpers import fake_install  # noqa: E402
from tests.test_model_cache import TREE, upload  # noqa: E402

FETCHED = re.compile(r"model cache: \S+ \((\d+) bytes, sha256 \w+\) fetched from \S+ in "
                     r"([0-9.]+)s \([0-9.]+ MB/s, (\d+) ms CPU")


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


def report(what: str, mb: int, fetch: list[float], copy: list[float],
           more: dict[str, list[float]] | None = None) -> None:
    f_med, c_med = statistics.median(fetch), statistics.median(copy)
    print(f"{what}: {mb} MB over one hop, {len(fetch)} rounds (median, best); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    print(f"  fetch into the model cache: {f_med:7.1f} MB/s  {max(fetch):7.1f} MB/s")
    print(f"  raw file copy (+fsync):     {c_med:7.1f} MB/s  {max(copy):7.1f} MB/s")
    for label, values in (more or {}).items():
        if "CPU" in label:      # not a speed: median and the least
            print(f"  {label + ':':27} {statistics.median(values):7.1f}       "
                  f"{min(values):7.1f} (least)")
        else:
            print(f"  {label + ':':27} {statistics.median(values):7.1f} MB/s  "
                  f"{max(values):7.1f} MB/s")
    print(f"  fetch / copy: {f_med / c_med:.0%} (target >= 50 %)")


def cpu_ms(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return (times.user + times.system) * 1000


@contextmanager
def two_agents(root: Path, upload: Path, **kwargs) -> Iterator[tuple[dict, dict]]:
    """jiangsu and nanjing (its child) as agent processes, ``upload`` stored on jiangsu:
    (the agents, the data workload)."""
    agents = {n: AgentProcess(root, n, **kwargs) for n in TREE}
    link_cluster(agents, TREE)
    try:
        for agent in agents.values():
            agent.start()
        wait_linked(agents, TREE)
        status, body, _ = post_file(agents["jiangsu"].port, "/api/workloads", upload)
        assert status == 201, body
        yield agents, json.loads(body)
    finally:
        for agent in agents.values():
            agent.cleanup()


def processes(args: argparse.Namespace, root: Path) -> None:
    source = make_source(root, args.mb)
    size = source.stat().st_size
    env, _flags = fake_install(root)
    with two_agents(root, source, env=env) as (agents, stored):
        held = Path(stored["path"]) / source.name
        procs = {n: psutil.Process(a.proc.pid) for n, a in agents.items()}
        fetch, copy = [], []
        cpu: dict[str, list[float]] = {"holder CPU ms": [], "fetcher CPU ms": [],
                                       "fetcher CPU ms (fetch)": []}
        for i in range(args.rounds):
            spec = {"name": f"fetch-{i}", "type": "mlmodel", "placement": {"node": "nanjing"},
                    "config": {"model_type": "yolo",
                               "model": {"data_key": stored["data_key"], "path": source.name}},
                    "requirements": {"cpu": 0.5}}
            before = {n: cpu_ms(p) for n, p in procs.items()}
            wl = agents["jiangsu"].submit(spec)
            assert wl["status"] == "running", wl
            cpu["holder CPU ms"].append(cpu_ms(procs["jiangsu"]) - before["jiangsu"])
            cpu["fetcher CPU ms"].append(cpu_ms(procs["nanjing"]) - before["nanjing"])
            logged = [(float(t), float(ms)) for n, t, ms
                      in FETCHED.findall(agents["nanjing"].output.read_text()) if int(n) == size]
            assert len(logged) == i + 1, "nanjing did not log the fetch"
            fetch.append(size / logged[-1][0] / 1e6)
            cpu["fetcher CPU ms (fetch)"].append(logged[-1][1])
            agents["jiangsu"].api("DELETE", f"/api/workloads/{wl['id']}")
            Path(wl["model_file"]).unlink()     # untimed: the next round fetches it again
            started = time.perf_counter()
            raw_copy(held, root / "copy.bin")
            copy.append(size / (time.perf_counter() - started) / 1e6)
            (root / "copy.bin").unlink()
    print("(the CPU times are of the whole submit: placing, the fetch, starting the service; "
          "(fetch): of the fetch alone, as nanjing logs it)")
    report("processes", args.mb, fetch, copy, cpu)


def starts(args: argparse.Namespace, root: Path) -> None:
    model = args.model
    services = {"services": {"port_range": list(free_port_range(2 * args.starts + 4))}}
    with two_agents(root, model, config=services) as (agents, stored):
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
        models = cluster["nanjing"].models        # LazyModels: the cache is built on first use
        fetch, copy = [], []
        more: dict[str, list[float]] = {"transport alone": [], "sink alone": [],
                                        "CPU s / fetch s": []}
        for _ in range(args.rounds):
            started, used = time.perf_counter(), _cpu_s()
            entry = await models.acquire("bench", ref)
            elapsed = time.perf_counter() - started
            fetch.append(size / elapsed / 1e6)
            more["CPU s / fetch s"].append((_cpu_s() - used) / elapsed)
            models.release("bench")
            cache = models.cache
            cache._drop(entry.sha256)             # untimed: the next round fetches again
            more["transport alone"].append(size / await _transport(cache, ref, size) / 1e6)
            more["sink alone"].append(size / await _sink(held, root / "sunk.bin") / 1e6)
            started = time.perf_counter()
            await asyncio.to_thread(raw_copy, held, root / "copy.bin")
            copy.append(size / (time.perf_counter() - started) / 1e6)
            (root / "copy.bin").unlink()
    report("in-process", args.mb, fetch, copy, more)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _transport(cache, ref: ModelRef, size: int) -> float:
    """Seconds to bring every chunk over the hop as the fetch does, dropping them."""
    route = (await cache._find(ref))[0]
    started = time.perf_counter()
    offsets = iter(range(0, size, model_cache.CHUNK))
    ahead = [asyncio.ensure_future(cache._chunk(ref, route, o, model_cache.CHUNK))
             for _, o in zip(range(model_cache.WINDOW), offsets)]
    while ahead:
        await ahead.pop(0)
        nxt = next(offsets, None)
        if nxt is not None:
            ahead.append(asyncio.ensure_future(cache._chunk(ref, route, nxt, model_cache.CHUNK)))
    return time.perf_counter() - started


async def _sink(source: Path, dest: Path) -> float:
    """Seconds to read ``source`` in chunks and hash, write and fsync it as the fetch does."""
    started = time.perf_counter()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sink = FileSink(fd, model_cache.BACKLOG)
    try:
        with open(source, "rb") as f:
            while data := await asyncio.to_thread(f.read, model_cache.CHUNK):
                await sink.put(data)
        await sink.finish()
    finally:
        await sink.close()
        os.close(fd)
    took = time.perf_counter() - started
    dest.unlink()
    return took


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
