"""The shim's lifecycle: :func:`run` binds the port, starts the worker pool, serves the handlers
and stops on SIGTERM/SIGINT; the command line is in options.py, the endpoints in handlers.py."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from services.inference.handlers import DRAIN_LIMIT, build_app
from services.inference.metrics import ServiceMetrics
from services.inference.options import ShimConfig
from services.inference.pool import StartupError, WorkerPool, WorkerSpec

__all__ = ["run"]

log = logging.getLogger("services.inference")


async def _serve(config: ShimConfig, spec: WorkerSpec, sockets: list[Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = ServiceMetrics()
    pool = WorkerPool(spec, config.workers, config.queue_size, config.request_timeout,
                      config.start_timeout, on_worker_exit=metrics.on_worker_exit)
    metrics.watch(pool)
    starting = asyncio.create_task(pool.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopped while starting")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await pool.close()
        return 0
    stopping.cancel()
    try:
        starting.result()
    except StartupError as exc:
        print(f"{config.program}: error: cannot load {config.model}: {exc}", file=sys.stderr)
        return 2
    server = HTTPServer(build_app(pool, config, metrics), max_body_size=DRAIN_LIMIT, xheaders=False)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("%s serving %s on http://%s:%d with %d worker(s) x %d thread(s)", config.program,
             config.model, config.host, port, config.workers, config.threads)
    await stop.wait()
    log.info("shutting down")
    server.stop()
    await pool.close()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
    except TimeoutError:
        log.warning("connections still open at exit")
    log.info("stopped")
    return 0


def run(config: ShimConfig, spec: WorkerSpec) -> int:
    """Bind the port, start the workers, serve until SIGTERM/SIGINT; return the exit status."""
    logging.basicConfig(stream=sys.stderr, level=config.log_level,
                        format=f"%(asctime)s {config.program}[{os.getpid()}] %(levelname)s %(message)s")
    try:
        sockets = bind_sockets(config.port, config.host)
    except OSError as exc:
        print(f"{config.program}: error: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    spec = WorkerSpec(spec.kind, spec.options,
                      {**spec.env, "OPENCV_IO_MAX_IMAGE_PIXELS": str(config.max_image_pixels)})
    try:
        return asyncio.run(_serve(config, spec, sockets))
    finally:
        for sock in sockets:
            sock.close()
