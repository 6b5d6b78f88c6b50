"""Benchmark of the routed endpoint ``/svc/<set id>/`` (issue 16, replica routing).

(1) ``POST /predict`` at concurrency 1 through the router vs straight to the replica, samples
alternated so that load drift hits both alike (target: at most 1 ms added at p50), on the tiny
echo service (``tests/echo_service.py``: what the router itself costs) and on the real YOLO
service with a shared model when there is one; beside them, the router with a new upstream
connection per request (``--max-idle 0``, what Tornado's own client does), and a bare asyncio
relay (``relay_floor.py``: the least any Python relay costs on the box, measured in the same run);
(2) requests/s of 3 replicas vs 1 at concurrency 8, through the router.
The router runs the agent's own app (``make_app``) over a static ReplicaSource
(``router_proc.py``); ``--replica NAME=URL`` points it at running services instead.
Run by hand: ``.venv/bin/python tests/bench/bench_replicas.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.bench_inference import (  # noqa: E402
    CORES,
    MODELS_DIR,
    Service,
    percentile,
    photo_jpeg,
    throughput,
)
from tests.ports import free_port  # noqa: E402

MODEL = "yolo11n-320-int8.onnx"
ECHO = REPO / "tests" / "echo_service.py"
ROUTER = Path(__file__).with_name("router_proc.py")
FLOOR = Path(__file__).with_name("relay_floor.py")


@contextlib.contextmanager
def program(command: list[str]) -> Iterator[None]:
    """A program that prints one line once it listens, for the length of a with-block."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
    try:
        if not proc.stdout.readline():
            raise RuntimeError(f"{command[1]} did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


@contextlib.contextmanager
def echo_services(count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(count):
            port = free_port()
            stack.enter_context(program([sys.executable, str(ECHO), "--port", str(port),
                                         "--name", f"echo{i}"]))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


@contextlib.contextmanager
def yolo_services(model: Path, count: int, threads: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        services = [stack.enter_context(Service(model, workers=1, threads=threads))
                    for _ in range(count)]
        yield [f"http://127.0.0.1:{s.port}" for s in services]


@contextlib.contextmanager
def router(urls: list[str], max_idle: int | None = None) -> Iterator[int]:
    port = free_port()
    command = [sys.executable, str(ROUTER), "--port", str(port), "--set", "bench", "--retry-post"]
    for i, url in enumerate(urls):
        command += ["--replica", f"r{i}={url}"]
    if max_idle is not None:
        command += ["--max-idle", str(max_idle)]
    with program(command):
        yield port


@contextlib.contextmanager
def relay_floor(url: str) -> Iterator[int]:
    port = free_port()
    with program([sys.executable, str(FLOOR), "--port", str(port), "--replica", url]):
        yield port


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> str:
    conn.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}")
    return response.getheader("X-CNET-Replica", "")


def latency(targets: dict[str, tuple[int, str]], body: bytes, n: int) -> dict[str, list[float]]:
    """Per target (port, path): n POSTs at concurrency 1, each target in turn per round."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=60)
             for name, (port, _) in targets.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(n + 5):
        for name, (_, path) in targets.items():
            start = time.perf_counter()
            post(conns[name], path, body)
            if round_ >= 5:   # the first rounds warm connections, caches and workers
                samples[name].append(time.perf_counter() - start)
    for conn in conns.values():
        conn.close()
    return samples


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def report_latency(title: str, samples: dict[str, list[float]]) -> None:
    """p50, p99, the difference of p50s, and the median of the per-round differences (each
    round's samples are taken back to back, so this one drifts least with the machine's load)."""
    direct = samples["direct"]
    print(f"{title}: concurrency 1, {len(direct)} samples     p50 ms   p99 ms"
          "   added at p50   paired")
    for name, label in (("direct", "straight to the replica (baseline)"),
                        ("floor", "bare asyncio relay (floor)"),
                        ("routed", "through /svc/<id>/ (kept-alive)"),
                        ("fresh", "through /svc/<id>/, new connection each")):
        lat = samples[name]
        line = (f"  {label:<40} {statistics.median(lat) * 1000:7.3f}"
                f" {percentile(lat, 99) * 1000:8.3f}")
        if name != "direct":
            added = statistics.median(lat) - statistics.median(direct)
            paired = statistics.median(a - b for a, b in zip(lat, direct))
            line += f" {added * 1000:+10.3f} ms {paired * 1000:+7.3f} ms"
            if name == "routed":
                line += "  (target <= 1 ms)"
        print(line)
    beyond = statistics.median(a - b for a, b in zip(samples["routed"], samples["floor"]))
    print(f"  the router beyond the bare relay, paired: {beyond * 1000:+.3f} ms")


def routing_latency(urls_of, body: bytes, path: str, n: int, title: str) -> None:
    with (urls_of(1) as urls, router(urls) as kept, router(urls, max_idle=0) as fresh,
          relay_floor(urls[0]) as floor):
        targets = {"direct": (port_of(urls[0]), path), "floor": (floor, f"/svc/bench{path}"),
                   "routed": (kept, f"/svc/bench{path}"), "fresh": (fresh, f"/svc/bench{path}")}
        report_latency(title, latency(targets, body, n))


def counting(path: str, served: Counter):
    """A sender for bench_inference.throughput: POST through the set, count who answered."""
    lock = threading.Lock()

    def send(conn: http.client.HTTPConnection, body: bytes) -> None:
        replica = post(conn, f"/svc/bench{path}", body)
        with lock:
            served[replica] += 1
    return send


def scaling(urls_of, body: bytes, path: str, n: int, title: str) -> None:
    rates = {}
    for count in (1, 3):
        served = Counter()
        with urls_of(count) as urls, router(urls) as port:
            rates[count] = throughput(port, body, n, 8, send=counting(path, served))
        spread = ", ".join(f"{k} {v}" for k, v in sorted(served.items()))
        print(f"  {count} replica{'s' if count > 1 else ' '} {rates[count]:9.1f} req/s"
              f"   (answers: {spread})")
    print(f"{title}: 3 replicas = {rates[3] / rates[1]:.2f}x of 1 (baseline) at concurrency 8 "
          f"(on {CORES} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="samples per measurement")
    args = parser.parse_args()
    image = photo_jpeg()
    print(f"{CORES} cores; body: astronaut 512x512 JPEG ({len(image)} bytes)")
    print("\n== echo service (/predict answers the body's sha256: the router's own cost)")
    routing_latency(echo_services, image, "/predict", args.requests, "echo")
    print("echo, throughput through the router:")
    scaling(echo_services, image, "/predict", args.requests * 4, "echo")
    model = MODELS_DIR / MODEL
    if not model.is_file():
        print(f"\n== {MODEL}: skipped, shared models not found in {MODELS_DIR}")
        return 0
    print(f"\n== {MODEL} (cnet-inference-yolo, 1 worker)")
    threads = max(1, CORES // 3)
    routing_latency(lambda count: yolo_services(model, count, CORES), image,
                    "/predict?confidence=0.25", args.requests,
                    f"yolo ({CORES} threads)")
    print(f"yolo, throughput through the router ({threads} thread(s) per replica):")
    scaling(lambda count: yolo_services(model, count, threads), image,
            "/predict?confidence=0.25", max(80, args.requests // 2), "yolo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
