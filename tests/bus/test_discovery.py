"""Discovery over real HTTP: ``GET /api/bus`` as the agent serves it, retried until it answers."""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from bus import BusNode, DiscoveryError, Endpoints, discover_http
from tests.ports import free_port

from .harness import FAST, running, status, until


class BusInfo(tornado.web.RequestHandler):
    def initialize(self, node: BusNode) -> None:
        self.node = node

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.node.describe()))



def serve(node: BusNode, port: int) -> HTTPServer:
    server = HTTPServer(tornado.web.Application([(r"/api/bus", BusInfo, {"node": node})]))
    server.listen(port, "127.0.0.1")
    return server


async def test_child_finds_a_parent_that_comes_up_later() -> None:
    port = free_port()
    parent = BusNode("jiangsu", http=f"http://127.0.0.1:{port}", **FAST)
    child = BusNode("nanjing", parent=f"127.0.0.1:{port}", **FAST)
    async with running(parent, child):
        await asyncio.sleep(0.3)                # discovery fails a few times first
        server = serve(parent, port)            # the parent's HTTP comes up after the child
        try:
            await until(lambda: status(parent, "nanjing") == "alive", 5.0)
            await until(lambda: status(child, "jiangsu") == "alive")
            assert child.neighbour("jiangsu").http == f"http://127.0.0.1:{port}"
        finally:
            server.stop()
            await server.close_all_connections()


async def test_discover_http_reports_clear_errors() -> None:
    port = free_port()
    with pytest.raises(DiscoveryError, match="/api/bus"):
        await discover_http(f"127.0.0.1:{port}", timeout=0.5)


def test_wildcard_bind_is_replaced_by_the_http_host() -> None:
    found = Endpoints.from_json({"node_id": "n", "router": "tcp://0.0.0.0:5001",
                                 "pub": "tcp://127.0.0.1:5002", "protocol": "CNET1"},
                                http="10.1.2.3:8080")
    assert found.router == "tcp://10.1.2.3:5001" and found.pub == "tcp://127.0.0.1:5002"
    with pytest.raises(DiscoveryError):
        Endpoints.from_json({"router": "http://x"}, http="h:1")
