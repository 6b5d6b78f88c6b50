"""The agent's HTTP app serving one replica set from a static list, as a program for benches:
``python tests/bench/router_proc.py --port P --set ID --replica NAME=URL [--replica NAME=URL,far]
[--retry-post] [--max-idle N]``. It prints one JSON line once it listens."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cnet.api import Web, http_server, make_app, service_router  # noqa: E402
from cnet.svc_router import Replica, ServiceSet  # noqa: E402
from cnet.svc_upstream import UpstreamPool  # noqa: E402


class StaticSource:
    """A ReplicaSource of one set that never changes."""

    def __init__(self, svc: ServiceSet) -> None:
        self.svc = svc

    def service_set(self, set_id: str) -> ServiceSet | None:
        return self.svc if set_id == self.svc.id else None


def replica(spec: str) -> Replica:
    name, _, rest = spec.partition("=")
    url, _, where = rest.partition(",")
    return Replica(name, f"node-{name}", url, where != "far", True)


async def serve(args: argparse.Namespace) -> None:
    source = StaticSource(ServiceSet(args.set, tuple(map(replica, args.replica)), args.retry_post))
    app = make_app(Web(node=None, hub=None, metrics=None, uploads=None, bus_endpoints=dict,
                       replicas=source))
    if args.max_idle is not None:   # e.g. 0: a new connection per request, as Tornado's client
        service_router(app).pool = UpstreamPool(max_idle=args.max_idle)   # the router, made now
    server = http_server(app)   # as the agent's
    server.listen(args.port, address="127.0.0.1")
    print(json.dumps({"event": "listening", "port": args.port}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--set", required=True)
    parser.add_argument("--replica", action="append", required=True)
    parser.add_argument("--retry-post", action="store_true")
    parser.add_argument("--max-idle", type=int)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
