"""Benchmark of the S3 gateway (run by hand: ``.venv/bin/python tests/bench/bench_gateway.py``).

1. GET of a 100 MB object through the gateway vs Tornado's StaticFileHandler serving the same
   file in the same run (target: gateway >= 80 % of StaticFileHandler's MB/s).
2. ListObjectsV2 pages of 1,000 keys with 100,000 objects in the agent's ``data_objects`` table
   (target: <= 50 ms per page, measured end to end over HTTP), and the same over the standalone
   directory index (100,000 empty files scanned at start).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.ports import free_port  # noqa: E402

STATIC_SERVER = """
import asyncio, sys, tornado.web
async def main():
    app = tornado.web.Application([(r"/static/(.*)", tornado.web.StaticFileHandler,
                                    {"path": sys.argv[1]}),
                                   (r"/health", tornado.web.RedirectHandler, {"url": "/static/"})])
    app.listen(int(sys.argv[2]), "127.0.0.1")
    await asyncio.Event().wait()
asyncio.run(main())
"""
SCHEMA = """CREATE TABLE data_objects (key TEXT PRIMARY KEY, workload_id TEXT NOT NULL,
    data_key TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL, last_modified REAL NOT NULL)"""


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1, allow_redirects=False)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


class Server:
    def __init__(self, args: list[str], health: str, log: Path):
        self.log = open(log, "wb")      # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(health)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def gateway(base: Path, log_dir: Path, index_db: Path | None) -> tuple[Server, int]:
    port = free_port()
    args = [sys.executable, "-m", "services.gateway.main", "--port", str(port), "--base-path",
            str(base), "--bucket", "cnet", "--log-level", "WARNING"]
    if index_db:
        args += ["--index-db", str(index_db)]
    return Server(args, f"http://127.0.0.1:{port}/health", log_dir / f"gw_{port}.log"), port


def timed_get(port: int, path: str, buffer: memoryview) -> tuple[float, int]:
    """Seconds to receive the whole body of one GET, and its length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200, response.status
    total = 0
    while count := response.readinto(buffer):
        total += count
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, total


def bench_get(work: Path, size_mb: int, rounds: int) -> None:
    base = work / "get"
    (base / "k").mkdir(parents=True)
    path = base / "k" / "blob.bin"
    chunk = os.urandom(1 << 20)
    digest = hashlib.md5()
    with open(path, "wb") as handle:
        for _ in range(size_mb):
            handle.write(chunk)
            digest.update(chunk)
    db = work / "get.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO data_objects VALUES ('k/blob.bin', 'w', 'k', ?, ?, '', "
                 "'application/octet-stream', ?)", (path.stat().st_size, digest.hexdigest(),
                                                    time.time()))
    conn.close()
    gw, gw_port = gateway(base, work, db)
    static_port = free_port()
    static = Server([sys.executable, "-c", STATIC_SERVER, str(base), str(static_port)],
                    f"http://127.0.0.1:{static_port}/health", work / "static.log")
    buffer = memoryview(bytearray(1 << 20))
    results: dict[str, list[float]] = {"gateway": [], "static": []}
    try:
        targets = (("gateway", gw_port, "/s3/cnet/k/blob.bin"),
                   ("static", static_port, "/static/k/blob.bin"))
        for _, port, url in targets:
            timed_get(port, url, buffer)                            # warm the page cache
        for _ in range(rounds):                                     # interleaved rounds
            for target, port, url in targets:
                elapsed, total = timed_get(port, url, buffer)
                assert total == size_mb << 20
                results[target].append(total / elapsed / 1e6)
    finally:
        gw.stop()
        static.stop()
    gw_mbs, static_mbs = (statistics.median(results[k]) for k in ("gateway", "static"))
    print(f"GET {size_mb} MiB object, median of {rounds} rounds:")
    print(f"  gateway                 {gw_mbs:8.0f} MB/s   (runs: "
          f"{', '.join(f'{v:.0f}' for v in results['gateway'])})")
    print(f"  Tornado StaticFileHandler {static_mbs:6.0f} MB/s   (runs: "
          f"{', '.join(f'{v:.0f}' for v in results['static'])})")
    print(f"  ratio {gw_mbs / static_mbs:.0%}  (target >= 80 %)")


def list_timings(port: int, cases: list[tuple[str, dict]], repeat: int) -> None:
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/s3/cnet"
    for name, params in cases:
        samples = []
        keys = 0
        for _ in range(repeat):
            start = time.perf_counter()
            response = session.get(url, params={"list-type": "2", **params}, timeout=30)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
            keys = response.content.count(b"<Key>") + response.content.count(b"<Prefix>") - 1
        samples.sort()
        print(f"  {name:<44} {keys:5d} entries  median {statistics.median(samples):6.1f} ms"
              f"  p95 {samples[int(len(samples) * 0.95) - 1]:6.1f} ms")


def bench_list(work: Path, objects: int, repeat: int, directory: bool) -> None:
    data_keys = 100
    per_key = objects // data_keys
    keys = [f"dk{d:03d}/images/{i:06d}.jpg" for d in range(data_keys) for i in range(per_key)]
    db = work / "list.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO data_objects VALUES (?, 'w', ?, 0, "
                     "'d41d8cd98f00b204e9800998ecf8427e', '', 'image/jpeg', ?)",
                     [(key, key[:5], now) for key in keys])
    conn.execute("COMMIT")
    conn.close()
    middle = keys[len(keys) // 2]
    cases = [("first page, no delimiter", {}),
             ("middle page (start-after)", {"start-after": middle}),
             ("prefix dk050/", {"prefix": "dk050/"}),
             ("delimiter / at the top (100 prefixes)", {"delimiter": "/"}),
             ("prefix dk050/ delimiter / (1 prefix)", {"prefix": "dk050/", "delimiter": "/"}),
             ("delimiter . (1,000 prefixes, a jump each)",
              {"prefix": "dk050/images/", "delimiter": "."}),
             ("encoding-type=url, middle page", {"start-after": middle, "encoding-type": "url"})]
    base = work / "list"
    base.mkdir()
    gw, port = gateway(base, work, db)
    try:
        print(f"ListObjectsV2 over the agent database, {len(keys):,} objects, {repeat} requests each:")
        list_timings(port, cases, repeat)
    finally:
        gw.stop()
    if not directory:
        return
    start = time.perf_counter()
    for d in range(data_keys):
        folder = base / f"dk{d:03d}" / "images"
        folder.mkdir(parents=True)
        for i in range(per_key):
            (folder / f"{i:06d}.jpg").touch()
    created = time.perf_counter() - start
    start = time.perf_counter()
    gw, port = gateway(base, work, None)
    ready = time.perf_counter() - start
    try:
        print(f"ListObjectsV2 over the directory index, {len(keys):,} empty files "
              f"(created in {created:.1f} s, gateway ready after scan in {ready:.1f} s):")
        list_timings(port, cases, repeat)
    finally:
        gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-directory", action="store_true",
                        help="skip the standalone directory-index listing benchmark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_gateway_") as tmp:
        work = Path(tmp)
        bench_get(work, args.size_mb, args.rounds)
        bench_list(work, args.objects, args.repeat, not args.no_directory)


if __name__ == "__main__":
    main()
