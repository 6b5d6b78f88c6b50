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


async def _answering(answer: bytes | None):
    """A TCP server that reads a request and sends ``answer`` then closes (None: never answers)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await reader.read()            # until the client gives up
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("answer, match", [
    (b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", r"/api/bus: HTTP 404"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not HTTP"),
    (b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (70 * 1024), "longer than"),
    (b"HTTP/1.0 200 OK\r\n\r\n{not json", "JSONDecodeError"),
    (b'HTTP/1.0 200 OK\r\n\r\n{"router": "tcp://127.0.0.1:1"}', "lacks tcp://"),
    (None, "TimeoutError"),
])
async def test_discovery_refuses_what_is_not_a_bus_answer(answer, match) -> None:
    server = await _answering(answer)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DiscoveryError, match=match):
            await discover_http(f"127.0.0.1:{port}", timeout=1.0)
    finally:
        server.close()
        await server.wait_closed()


async def test_discovery_reads_the_answer_of_a_real_agent_server() -> None:
    port = free_port()
    node = BusNode("jiangsu", http=f"http://127.0.0.1:{port}", **FAST)
    async with running(node):
        server = serve(node, port)
        try:
            found = await discover_http(f"http://127.0.0.1:{port}/", timeout=2.0)
            assert found.node_id == "jiangsu" and found.router == node.describe()["router"]
            assert found.http == f"http://127.0.0.1:{port}/"
            with pytest.raises(DiscoveryError, match="not an http:// address"):
                await discover_http(f"https://127.0.0.1:{port}", timeout=2.0)
        finally:
            server.stop()
            await server.close_all_connections()
