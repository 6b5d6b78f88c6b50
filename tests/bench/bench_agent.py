"""Benchmark: submit -> running latency and throughput of process workloads on one agent.

Prints, beside a same-run baseline of bare ``asyncio.create_subprocess_exec`` spawns:
- submit -> running latency at concurrency 1 (p50, p99) for `true` and `sleep` processes
- sustained submissions/s at concurrency 16
- the agent's RSS idle and after 1,000 finished workloads

Run: .venv/bin/python tests/bench/bench_agent.py   (targets: p50 <= 5 ms, >= 300/s, idle RSS <= 80 MB)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.harness import AgentProcess  # noqa: E402


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client, so the client side costs little CPU."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self):
        self.writer.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def baseline_spawn(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        times.append(time.perf_counter() - t0)
        await proc.wait()
    return times


def spec(command: str, args: list[str]) -> bytes:
    return json.dumps({"name": "bench", "type": "process",
                       "config": {"command": command, "args": args}}).encode()


async def latency(port: int, n: int, command: str, args: list[str]) -> list[float]:
    client = KeepAliveClient(port)
    await client.connect()
    body, times = spec(command, args), []
    for _ in range(n):
        t0 = time.perf_counter()
        status, payload = await client.request("POST", "/api/workloads", body)
        times.append(time.perf_counter() - t0)
        assert status == 201 and json.loads(payload)["status"] in ("running", "completed"), payload
    client.close()
    return times


async def throughput(port: int, total: int, concurrency: int) -> float:
    body = spec("true", [])
    remaining = [total]

    async def worker():
        client = KeepAliveClient(port)
        await client.connect()
        while remaining[0] > 0:
            remaining[0] -= 1
            status, payload = await client.request("POST", "/api/workloads", body)
            assert status == 201, payload
        client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def stop_all(port: int) -> None:
    client = KeepAliveClient(port)
    await client.connect()
    _, payload = await client.request("GET", "/api/workloads?status=running")
    for wl in json.loads(payload)["workloads"]:
        await client.request("POST", f"/api/workloads/{wl['id']}/stop")
    client.close()


async def wait_all_ended(port: int, timeout: float = 60) -> None:
    client = KeepAliveClient(port)
    await client.connect()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, payload = await client.request("GET", "/api/workloads?status=running")
        if json.loads(payload)["count"] == 0:
            break
        await asyncio.sleep(0.05)
    client.close()


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp), "bench", {"logging": {"level": "warning"},
                                                  "resources": {"cpu": 10000.0}})
        agent.start()
        try:
            proc = psutil.Process(agent.proc.pid)
            time.sleep(1.0)
            idle_rss = proc.memory_info().rss
            base = asyncio.run(baseline_spawn(300))
            true_lat = asyncio.run(latency(agent.port, 300, "true", []))
            asyncio.run(wait_all_ended(agent.port))
            sleep_lat = asyncio.run(latency(agent.port, 200, "sleep", ["30"]))
            asyncio.run(stop_all(agent.port))
            rate = asyncio.run(throughput(agent.port, 1000, 16))
            asyncio.run(wait_all_ended(agent.port))
            finished = 300 + 200 + 1000
            after_rss = proc.memory_info().rss
        finally:
            agent.cleanup()
    print("submit -> running, concurrency 1")
    print(f"  baseline asyncio.create_subprocess_exec('true'): p50 {ms(statistics.median(base))}"
          f"  p99 {ms(pct(base, 99))}")
    print(f"  cnet process `true`:   p50 {ms(statistics.median(true_lat))}  p99 {ms(pct(true_lat, 99))}"
          "   (target p50 <= 5 ms)")
    print(f"  cnet process `sleep`:  p50 {ms(statistics.median(sleep_lat))}  p99 {ms(pct(sleep_lat, 99))}")
    print(f"sustained submissions at concurrency 16: {rate:.0f} workloads/s   (target >= 300/s)")
    print(f"agent RSS idle: {idle_rss / 2**20:.1f} MB   (target <= 80 MB)")
    print(f"agent RSS after {finished} finished workloads: {after_rss / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
