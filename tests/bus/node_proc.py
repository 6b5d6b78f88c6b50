"""A BusNode in its own process, for tests and benchmarks that kill -9 a node.

Prints JSON lines on stdout: ``{"event": "ready", "router", "pub", "epoch"}`` once bound, then
``{"event": "neighbour", "node_id", "role", "status", "seq"}`` on every neighbour change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from bus import BusNode, Endpoints, NeighbourState, protocol


def _print(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    state = {"mark": 0, "t": 0.0}

    def on_neighbour(s: NeighbourState) -> None:
        _print({"event": "neighbour", "node_id": s.node_id, "role": s.role, "status": s.status,
                "seq": s.seq})

    parent = None
    if args.parent:
        router, pub = args.parent.split(",")
        parent = Endpoints(router=router, pub=pub)
    peers = [Endpoints(router=router, pub=pub)
             for router, pub in (peer.split(",") for peer in args.peer)]

    async def echo(request, sender) -> dict:
        return request.args

    node = BusNode(args.node_id, router=args.router, pub=args.pub, parent=parent, peers=peers,
                   snapshot=lambda: dict(state), on_neighbour=on_neighbour,
                   handler=echo if args.echo else None,
                   heartbeat_interval=args.interval, heartbeat_misses=args.misses, retry_max=0.5)
    await node.start()
    _print({"event": "ready", "router": node.router_endpoint, "pub": node.pub_endpoint,
            "epoch": node.epoch})
    if args.bench:
        await asyncio.sleep(args.bench_wait)
        for i in range(1, args.bench + 1):
            state["mark"], state["t"] = i, time.monotonic()
            node.publish()
            await asyncio.sleep(args.bench_gap)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--parent", help="ROUTER,PUB endpoints of the parent")
    parser.add_argument("--peer", action="append", default=[],
                        help="ROUTER,PUB endpoints of a peer (repeatable)")
    parser.add_argument("--router", default="tcp://127.0.0.1:0")
    parser.add_argument("--pub", default="tcp://127.0.0.1:0")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--misses", type=int, default=3)
    parser.add_argument("--version", help="speak this version tag instead (mismatch tests)")
    parser.add_argument("--bench", type=int, default=0, help="publish N marked changes")
    parser.add_argument("--echo", action="store_true", help="answer every request with its args")
    parser.add_argument("--bench-wait", type=float, default=1.0)
    parser.add_argument("--bench-gap", type=float, default=0.002)
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if parsed.version:
        protocol.VERSION = parsed.version.encode()
    asyncio.run(main(parsed))
