"""The cost of the shim's shape with no inference in it: a baseline for bench_inference.py.

A bare Tornado handler takes the POSTed image, sends it over a raw pyzmq REQ socket to a bare
REP process that holds it for ``--delay`` seconds (standing in for the detector) and answers;
the handler then replies with a small JSON body. Whatever /predict costs beyond the in-process
pipeline, this floor costs too: HTTP on loopback plus one ZMQ hop, each after a wait as long as
an inference.

    python tests/bench/transport_floor.py --port N --delay S      # serves POST /p
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import sys
import time
from pathlib import Path

import tornado.web
import zmq
import zmq.asyncio


def rep(endpoint: str, delay: float) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(endpoint)
    while True:
        frames = sock.recv_multipart()
        time.sleep(delay)
        sock.send_multipart([b"ok", str(len(frames[-1])).encode()])


class Handler(tornado.web.RequestHandler):
    def initialize(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock

    async def post(self) -> None:
        await self.sock.send_multipart([b"{}", self.request.body], copy=False)
        await self.sock.recv_multipart()
        self.finish({"detections": [], "count": 0})


async def serve(port: int, endpoint: str) -> None:
    sock = zmq.asyncio.Context.instance().socket(zmq.REQ)
    sock.connect(endpoint)
    tornado.web.Application([(r"/p", Handler, {"sock": sock})]).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    args = parser.parse_args()
    endpoint = f"ipc:///tmp/cnet-floor-{args.port}"
    worker = multiprocessing.Process(target=rep, args=(endpoint, args.delay), daemon=True)
    worker.start()
    # The bench stops us with SIGTERM: exit through the finally below, so the worker goes too
    # (a daemon child is only stopped at a normal exit) and leaves nothing holding our stdout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(serve(args.port, endpoint))
    finally:
        worker.terminate()
        worker.join(timeout=5)
        Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
