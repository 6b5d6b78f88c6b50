"""Benchmark: a 1 GiB data upload into a real agent, against same-run baselines.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/bench/bench_upload.py [--size-mib 1024] [--runs 3] [--random]

It measures MB/s of ``POST /api/workloads`` (multipart, ``type=data``) sent by a streaming
client (``socket.sendfile``) and the agent's peak RSS growth during the upload (psutil, sampled
every 10 ms), and compares with, in the same run on the same disk:

* raw write: the same bytes copied to a file and fdatasync'ed;
* raw write + MD5 + SHA-256: what the agent must do at least, on one thread;
* bare Tornado: a ``stream_request_body`` handler that writes the body to disk, nothing else.

Targets (issue 6): >= 300 MB/s, <= 50 MB RSS growth.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import AgentProcess, free_port, wait_for  # noqa: E402

BOUNDARY = "cnetbenchboundary7d1f0c"
MIB = 1 << 20


def make_source(path: Path, size: int, random_content: bool) -> None:
    """A sparse file (instant) or one filled with a repeated random 1 MiB block."""
    with open(path, "wb") as f:
        if random_content:
            block = os.urandom(MIB)
            for _ in range(size // MIB):
                f.write(block)
            f.write(block[: size % MIB])
        else:
            f.truncate(size)


def multipart_parts(filename: str) -> tuple[bytes, bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ndata\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbench\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail


def post_file(port: int, path: str, source: Path) -> tuple[int, bytes, float]:
    """Stream a multipart upload with sendfile; return (status, body, seconds)."""
    head, tail = multipart_parts(source.name)
    length = len(head) + source.stat().st_size + len(tail)
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        t0 = time.perf_counter()
        sock.sendall(request + head)
        with open(source, "rb") as f:
            sock.sendfile(f)
        sock.sendall(tail)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        elapsed = time.perf_counter() - t0
    return response.status, body, elapsed


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join(timeout=5)
        return self.peak - self.base


def raw_write(source: Path, dest: Path, with_hashes: bool) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(source, "rb", buffering=0) as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            buf = bytearray(MIB)
            view = memoryview(buf)
            while n := src.readinto(buf):
                if with_hashes:
                    md5.update(view[:n])
                    sha.update(view[:n])
                os.write(fd, view[:n])
            os.fdatasync(fd)
        finally:
            os.close(fd)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    dest.unlink()
    return elapsed, cpu


BARE_SERVER = '''
import asyncio, os, sys
import tornado.web

class Sink(tornado.web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(1 << 40)
        self.fd = os.open(os.path.join(sys.argv[2], "body"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    def data_received(self, chunk):
        os.write(self.fd, chunk)
    def post(self):
        os.fdatasync(self.fd)
        os.close(self.fd)
        os.unlink(os.path.join(sys.argv[2], "body"))
        self.finish("{}")

Sink = tornado.web.stream_request_body(Sink)

async def main():
    app = tornado.web.Application([(r"/.*", Sink)])
    app.listen(int(sys.argv[1]), "127.0.0.1", max_body_size=1 << 40)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


def bare_tornado(source: Path, workdir: Path, runs: int) -> list[tuple[float, float]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port), str(workdir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        results = []
        for _ in range(runs):
            cpu0 = _cpu(proc.pid)
            status, body, elapsed = post_file(port, "/", source)
            assert status == 200, body
            results.append((elapsed, _cpu(proc.pid) - cpu0))
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def agent_runs(agent: AgentProcess, source: Path, runs: int) -> list[tuple[float, float, int]]:
    results = []
    for _ in range(runs):
        sampler = RssSampler(agent.proc.pid)
        sampler.start()
        cpu0 = _cpu(agent.proc.pid)
        status, body, elapsed = post_file(agent.port, "/api/workloads", source)
        cpu = _cpu(agent.proc.pid) - cpu0
        growth = sampler.stop()
        if status != 201:
            raise SystemExit(f"upload failed: {status} {body[:500]!r}")
        wl = json.loads(body)
        assert wl["size"] == source.stat().st_size, wl
        results.append((elapsed, cpu, growth))
        resp = agent.api("DELETE", f"/api/workloads/{wl['id']}")
        assert resp.status_code == 200, resp.text
        wait_for(lambda: agent.resources()["allocated"]["storage"] == 0, timeout=30,
                 message="storage to be released")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--random", action="store_true", help="random content instead of a sparse file")
    ap.add_argument("--dir", default=None, help="where to put the temp files (default: $TMPDIR)")
    args = ap.parse_args()
    size = args.size_mib * MIB
    mb = size / 1e6

    with tempfile.TemporaryDirectory(prefix="cnet-bench-upload-", dir=args.dir) as tmp:
        root = Path(tmp)
        source = root / "payload.bin"
        make_source(source, size, args.random)
        print(f"payload: {args.size_mib} MiB ({'random' if args.random else 'sparse'}), "
              f"{args.runs} run(s) each; cpus={os.cpu_count()}")

        agent = AgentProcess(root, "bench", config={
            "resources": {"storage": 4 * size + (1 << 30)},
            "data": {"upload_limit": 2 * size},
            "logging": {"level": "warning"},
        })
        agent.start()
        try:
            results = agent_runs(agent, source, args.runs)
        finally:
            agent.terminate()
        baseline_dir = agent.state_dir / "data"
        raw = [raw_write(source, baseline_dir / "raw.bin", False) for _ in range(args.runs)]
        hashed = [raw_write(source, baseline_dir / "raw.bin", True) for _ in range(args.runs)]
        bare = bare_tornado(source, baseline_dir, args.runs)

        def line(label: str, runs: list[tuple], extra: str = "") -> None:
            rates = [mb / r[0] for r in runs]
            cpu = statistics.median(r[1] for r in runs) / (size / (1 << 30))
            print(f"  {label:<34} median {statistics.median(rates):7.1f} MB/s "
                  f"(runs: {', '.join(f'{r:.0f}' for r in rates)}); "
                  f"CPU {cpu:5.2f} s/GiB{extra}")

        print(f"results (MB = 10^6 bytes; load average now {os.getloadavg()[0]:.1f}):")
        line("raw write + fdatasync", raw)
        line("raw write + MD5 + SHA-256 + fsync", hashed)
        line("bare Tornado stream to disk", bare)
        growths = [r[2] for r in results]
        line("cnet agent upload (201)", results,
             f"; peak RSS growth max {max(growths) / MIB:.1f} MiB")
        rate = statistics.median(mb / r[0] for r in results)
        print(f"targets: >= 300 MB/s: {'met' if rate >= 300 else 'NOT met'}; "
              f"<= 50 MB RSS growth: {'met' if max(growths) <= 50e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
