"""Benchmark of the YOLO inference service against its own pipeline run in-process.

For each model: (1) latency at concurrency 1, in-process (decode + pre-process + ORT +
post-process) vs POST /predict through the shim (p50, p99; target overhead <= 15 %), beside
the transport floor: the same POST through a bare Tornado handler and one raw pyzmq REQ/REP hop
to a process that holds each request for the in-process p50 (``transport_floor.py``);
(2) requests/s at concurrency 4 with 1 and 2 workers of one thread each (target >= 1.6x);
(3) /predict latency and the worker's CPU time per request at concurrency 1, one worker of
all cores' threads, with ORT's intra-op threads spinning (``--spin``) and not (the default).
Run by hand: ``.venv/bin/python tests/bench/bench_inference.py [--requests N]``.
Models come from $CNET_MODELS_DIR, else ../shared/models beside the repository.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.inference.protocol import PredictParams  # noqa: E402
from services.inference.worker import decode_image  # noqa: E402
from services.inference.yolo import YoloDetector  # noqa: E402
from tests.ports import free_port  # noqa: E402

MODELS_DIR = Path(os.environ.get("CNET_MODELS_DIR", REPO.parent / "shared" / "models"))
MODELS = ["yolo11n-320-int8.onnx", "yolox-nano-416.onnx"]
CORES = len(os.sched_getaffinity(0))


def photo_jpeg() -> bytes:
    from skimage import data
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return jpeg.tobytes()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]



class Service:
    """cnet-inference-yolo as a subprocess for the length of a with-block."""

    def __init__(self, model: Path, workers: int, threads: int, spin: bool = False) -> None:
        self.port = free_port()
        self.command = [sys.executable, "-m", "services.inference.yolo_service", "--model",
                        str(model), "--port", str(self.port), "--workers", str(workers),
                        "--threads", str(threads), "--spin" if spin else "--no-spin",
                        "--log-level", "WARNING"]

    def __enter__(self) -> Service:
        self.process = subprocess.Popen(self.command, cwd=REPO, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("service did not become healthy")

    def worker_cpu_seconds(self) -> float:
        """User + system CPU time of the worker processes so far."""
        total = 0.0
        for child in psutil.Process(self.process.pid).children():
            times = child.cpu_times()
            total += times.user + times.system
        return total

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def post(conn: http.client.HTTPConnection, image: bytes) -> None:
    conn.request("POST", "/predict?confidence=0.25", body=image,
                 headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"predict answered {response.status}")


def latency_pair(model: Path, port: int, image: bytes, n: int, threads: int
                 ) -> tuple[list[float], list[float]]:
    """Alternate in-process and /predict samples so that load drift hits both alike."""
    detector = YoloDetector(str(model), threads=threads)
    params = PredictParams()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(5):
        detector.detect(decode_image(image), params)
        post(conn, image)
    local, remote = [], []
    for _ in range(n):
        start = time.perf_counter()
        detector.detect(decode_image(image), params)
        local.append(time.perf_counter() - start)
        start = time.perf_counter()
        post(conn, image)
        remote.append(time.perf_counter() - start)
    conn.close()
    return local, remote


def throughput(port: int, image: bytes, n: int, concurrency: int, send=post) -> float:
    """Requests/s of ``concurrency`` clients, each ``send(conn, image)`` in a loop."""
    per_client = max(1, n // concurrency)
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            send(conn, image)  # warm the connection and the workers
            barrier.wait()
            for _ in range(per_client):
                send(conn, image)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return per_client * concurrency / elapsed


def spin_case(model: Path, image: bytes, n: int, rounds: int = 2
              ) -> dict[bool, tuple[list[float], float]]:
    """Per spin setting: /predict latencies and worker CPU seconds per request, in alternating
    rounds (off, on, off, on ...) so that load drift hits both alike."""
    samples: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for spin in (False, True):
            with Service(model, workers=1, threads=CORES, spin=spin) as service:
                conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
                for _ in range(5):
                    post(conn, image)
                before = service.worker_cpu_seconds()
                for _ in range(per_round):
                    start = time.perf_counter()
                    post(conn, image)
                    samples[spin].append(time.perf_counter() - start)
                cpu[spin] += service.worker_cpu_seconds() - before
                conn.close()
    return {spin: (samples[spin], cpu[spin] / len(samples[spin])) for spin in (False, True)}


def floor_latency(image: bytes, delay: float, n: int) -> list[float]:
    """POST latency through the bare shape (see transport_floor.py), holding ``delay`` s."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("transport_floor.py")),
                             "--port", str(port), "--delay", f"{delay:.6f}"], cwd=REPO)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.request("POST", "/p", body=image, headers={"Content-Type": "image/jpeg"})
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                conn.close()
                time.sleep(0.1)
        for _ in range(5):
            conn.request("POST", "/p", body=image, headers={"Content-Type": "image/jpeg"})
            conn.getresponse().read()
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            conn.request("POST", "/p", body=image, headers={"Content-Type": "image/jpeg"})
            conn.getresponse().read()
            samples.append(time.perf_counter() - start)
        conn.close()
        return samples
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="samples per measurement")
    args = parser.parse_args()
    image = photo_jpeg()
    print(f"{CORES} cores; astronaut 512x512 JPEG ({len(image)} bytes); {args.requests} samples each")
    for name in MODELS:
        model = MODELS_DIR / name
        if not model.is_file():
            print(f"{name}: skipped, shared models not found in {MODELS_DIR}")
            continue
        print(f"\n== {name}")
        with Service(model, workers=1, threads=CORES) as service:
            local, remote = latency_pair(model, service.port, image, args.requests, CORES)
        p50_local, p50_remote = statistics.median(local), statistics.median(remote)
        p99_local, p99_remote = percentile(local, 99), percentile(remote, 99)
        print(f"concurrency 1 ({CORES} threads)   in-process      /predict        overhead")
        print(f"  p50 ms                {p50_local * 1000:10.2f} {p50_remote * 1000:15.2f}"
              f" {100 * (p50_remote / p50_local - 1):+11.1f} %  (target <= 15 %)")
        print(f"  p99 ms                {p99_local * 1000:10.2f} {p99_remote * 1000:15.2f}"
              f" {100 * (p99_remote / p99_local - 1):+11.1f} %")
        floor = statistics.median(floor_latency(image, p50_local, args.requests))
        print(f"  transport floor (bare Tornado + raw pyzmq hop holding {p50_local * 1000:.2f} ms):"
              f" {floor * 1000:.2f} ms = {100 * (floor / p50_local - 1):+.1f} %;"
              f" the shim adds {1000 * (p50_remote - floor):+.2f} ms beyond it")
        rates = {}
        for workers in (1, 2):
            with Service(model, workers=workers, threads=1) as service:
                rates[workers] = throughput(service.port, image, args.requests * 2, 4)
        print(f"concurrency 4, 1 thread per worker: 1 worker {rates[1]:.1f} req/s (baseline),"
              f" 2 workers {rates[2]:.1f} req/s = {rates[2] / rates[1]:.2f}x (target >= 1.6x)")
        with Service(model, workers=1, threads=CORES) as service:
            one_wide = throughput(service.port, image, args.requests * 2, 4)
        print(f"  for reference: 1 worker x {CORES} threads {one_wide:.1f} req/s")
        spin = spin_case(model, image, args.requests)
        print(f"concurrency 1, 1 worker x {CORES} threads   p50 ms   p99 ms   worker CPU ms/request")
        for on in (False, True):
            lat, cpu_per_request = spin[on]
            label = "--spin" if on else "--no-spin (default)"
            print(f"  {label:<30} {statistics.median(lat) * 1000:9.2f} {percentile(lat, 99) * 1000:8.2f}"
                  f" {cpu_per_request * 1000:12.2f}")
        gain = statistics.median(spin[False][0]) - statistics.median(spin[True][0])
        print(f"  spinning saves {gain * 1000:+.2f} ms at p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
