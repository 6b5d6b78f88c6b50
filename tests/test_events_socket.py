"""``/api/events``, the WebSocket stream (cnet/events_socket.py, loaded by the first request to
it), on a real agent with a real WebSocket client: hello, live events, the token, closing."""

from __future__ import annotations

import asyncio
import json

import pytest
import tornado.httpclient
import tornado.websocket

from .harness import process_spec

TOKEN = "events-test-token"


async def _connect(url: str, **headers) -> tornado.websocket.WebSocketClientConnection:
    request = tornado.httpclient.HTTPRequest(url.replace("http://", "ws://") + "/api/events",
                                             headers=headers, connect_timeout=10,
                                             request_timeout=10)
    return await tornado.websocket.websocket_connect(request)


async def _next(conn, match, timeout: float = 10.0) -> dict:
    """The first message ``match`` accepts, within ``timeout`` seconds."""
    async def read() -> dict:
        while True:
            message = await conn.read_message()
            assert message is not None, "the stream closed"
            event = json.loads(message)
            if match(event):
                return event
    return await asyncio.wait_for(read(), timeout)


async def _close(conn) -> None:
    """Close the stream and wait for the agent's side of the close handshake."""
    conn.close()
    async def drained() -> None:
        while await conn.read_message() is not None:
            pass
    await asyncio.wait_for(drained(), 10)


async def test_the_stream_says_hello_then_shows_a_workload_as_it_runs(agent):
    conn = await _connect(agent.url)
    try:
        hello = await _next(conn, lambda e: True)
        assert hello["type"] == "hello" and hello["node_id"] == "jiangsu"
        assert hello["resources"]["capacity"]["cpu"] == 8
        wl = await asyncio.to_thread(agent.submit, process_spec("watched", args=["60"]))
        seen = await _next(conn, lambda e: wl["id"] in json.dumps(e))
        assert seen["type"]
    finally:
        await _close(conn)
    # A closed stream is let go: the agent goes on serving the next one.
    again = await _connect(agent.url)
    try:
        assert (await _next(again, lambda e: True))["type"] == "hello"
    finally:
        await _close(again)


async def test_with_a_token_the_stream_needs_it_in_a_header_or_the_query(make_agent):
    agent = make_agent(config={"api": {"token": TOKEN}})
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await _connect(agent.url)
    assert refused.value.code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "unauthorized"
    with pytest.raises(tornado.httpclient.HTTPClientError) as wrong:
        await _connect(agent.url, Authorization="Bearer not-the-token")
    assert wrong.value.code == 401
    for conn in (await _connect(agent.url, Authorization=f"Bearer {TOKEN}"),
                 await tornado.websocket.websocket_connect(
                     agent.url.replace("http://", "ws://") + f"/api/events?token={TOKEN}")):
        try:
            assert (await _next(conn, lambda e: True))["type"] == "hello"
        finally:
            await _close(conn)
