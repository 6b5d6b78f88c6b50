"""A stand-in service program for supervisor tests: a real Tornado server with ``GET /health``.

It accepts the real programs' command lines (``--port``, ``--host``, anything else ignored),
starts one idle "worker" child in its process group (so tests can see that a stop leaves no
orphans), and is steered through files in ``$FAKE_SERVICE_DIR``:

- ``fail-start``: exit with code 3 at once, after a line on stderr;
- ``unhealthy-<pid>``: the instance with that pid answers ``/health`` with 503;
- ``blip-<pid>``: it answers 503 once, then removes the file;
- ``slow-start``: it listens only once a file ``go`` appears there (a start that takes long).

Each ``/health`` request appends a byte to ``checks-<pid>`` there, so tests can count checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import tornado.web

FLAG_DIR = Path(os.environ.get("FAKE_SERVICE_DIR", "/nonexistent"))


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        pid = os.getpid()
        with open(FLAG_DIR / f"checks-{pid}", "ab") as f:
            f.write(b".")
        blip = FLAG_DIR / f"blip-{pid}"
        if blip.exists() or (FLAG_DIR / f"unhealthy-{pid}").exists():
            blip.unlink(missing_ok=True)
            self.set_status(503)
            self.finish({"status": "unhealthy"})
            return
        self.finish({"status": "healthy", "pid": os.getpid()})


async def serve(host: str, port: int) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(json.dumps({"event": "started", "pid": os.getpid(), "worker": worker.pid}), flush=True)
    app = tornado.web.Application([(r"/health", HealthHandler)])
    app.listen(port, address=host)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _rest = parser.parse_known_args()
    if (FLAG_DIR / "fail-start").exists():
        print("fake service: told to fail at start", file=sys.stderr, flush=True)
        return 3
    if (FLAG_DIR / "slow-start").exists():
        for _ in range(3000):                  # at most 60 s
            if (FLAG_DIR / "go").exists():
                break
            time.sleep(0.02)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
