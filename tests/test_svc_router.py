"""The routed endpoint ``/svc/<set id>/…`` (issue 16, point 2): the agent's real app
(``make_app``) in front of real HTTP services on free ports, fed by a small ReplicaSource."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.simple_httpclient
import tornado.web

from cnet.api import Web, close_app, make_app, service_router
from cnet.svc_router import Replica, ServiceSet

from .bus.harness import until
from .echo_service import make_app as echo_app
from .ports import free_port

ECHO = Path(__file__).with_name("echo_service.py")


class Book:
    """A ReplicaSource: the sets a test declares, changed as the test goes; it tells its
    watchers of each change, as the set book does (unless made ``silent``: a source without
    the hook)."""

    def __init__(self, silent: bool = False) -> None:
        self.sets: dict[str, ServiceSet] = {}
        self.watchers: list = []
        if silent:
            self.watch = None

    def service_set(self, set_id: str) -> ServiceSet | None:
        return self.sets.get(set_id)

    def watch(self, callback):
        self.watchers.append(callback)
        return lambda: self.watchers.remove(callback)

    def mark(self, set_id: str, replica_id: str, **changes) -> None:
        svc = self.sets[set_id]
        self.sets[set_id] = replace(svc, replicas=tuple(
            replace(r, **changes) if r.id == replica_id else r for r in svc.replicas))
        for callback in list(self.watchers):
            callback(set_id)


class Silent:
    """A replica whose machine is cut off: it accepts connections and reads requests (the
    kernel's buffers would), and never answers nor closes. ``head``: bytes it does send first
    (a part of an answer), then it falls silent too."""

    def __init__(self, head: bytes = b"") -> None:
        self.head = head
        self.requests = 0
        self.got_one = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while await reader.readuntil(b"\r\n\r\n"):
                    self.requests += 1
                    self.got_one.set()
                    writer.write(self.head)
        port = free_port()
        self.server = await asyncio.start_server(serve, "127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@dataclass
class Bed:
    url: str                                   # the router's base URL
    app: tornado.web.Application
    book: Book
    services: dict[str, tornado.web.Application] = field(default_factory=dict)
    client: tornado.httpclient.AsyncHTTPClient = None

    async def fetch(self, path: str, **kwargs) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("request_timeout", 20)
        return await self.client.fetch(self.url + path, raise_error=False, **kwargs)

    def state(self, name: str) -> dict:
        return self.services[name].state

    def in_flight(self) -> dict[str, int]:
        return dict(service_router(self.app).chooser._in_flight)


@contextlib.asynccontextmanager
async def bed(replicas: dict[str, dict], *, retry_post: bool = False, book: Book | None = None,
              **web) -> AsyncIterator[Bed]:
    """A router serving set ``s`` of the named replicas: ``{"a": {"near": True}, ...}``; a
    replica with ``"dies": True`` cuts its /slow connections, one with ``"endpoint"`` is not
    started here."""
    servers, members, services = [], [], {}
    for name, spec in replicas.items():
        endpoint = spec.get("endpoint")
        if endpoint is None:
            port = free_port()
            services[name] = echo_app(name, dies=spec.get("dies", False))
            server = tornado.httpserver.HTTPServer(services[name])
            server.listen(port, "127.0.0.1")
            servers.append(server)
            endpoint = f"http://127.0.0.1:{port}"
        members.append(Replica(name, f"node-{name}", endpoint, spec.get("near", True), True,
                               spec.get("healthy", True)))
    book = book or Book()
    book.sets["s"] = ServiceSet("s", tuple(members), retry_post)
    app = make_app(Web(node=None, hub=None, metrics=None, uploads=None, bus_endpoints=dict,
                       replicas=book, **web))
    service_router(app)   # made now (an agent makes it with the first /svc/ request)
    port = free_port()
    router = tornado.httpserver.HTTPServer(app)
    router.listen(port, "127.0.0.1")
    servers.append(router)
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=50)
    try:
        yield Bed(f"http://127.0.0.1:{port}", app, book, services, client)
    finally:
        client.close()
        for service in services.values():
            service.state["release"].set()
        for server in servers:
            server.stop()
            await server.close_all_connections()
        close_app(app)


def error(resp) -> dict:
    assert resp.headers["Content-Type"].startswith("application/json")
    return json.loads(resp.body)["error"]


async def raw(url: str, request: bytes) -> bytes:
    """Send bytes as they are (no client tidies the path) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


# -- forwarding ------------------------------------------------------------------------------

async def test_method_path_query_headers_and_body_reach_the_replica():
    async with bed({"a": {}}) as b:
        resp = await b.fetch("/svc/s/echo/x%20y/z?q=1&r=%2F", method="PUT", body=b"payload",
                             headers={"X-Mine": "v", "Connection": "X-Hop", "X-Hop": "1",
                                      "Proxy-Authorization": "p", "X-Forwarded-For": "10.9.9.9",
                                      "X-Forwarded-Host": "spoofed", "Authorization": "Bearer t"})
        assert resp.code == 200
        seen = json.loads(resp.body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert (seen["method"], seen["path"], seen["query"]) == ("PUT", "/echo/x%20y/z", "q=1&r=%2F")
        assert seen["size"] == len(b"payload")
        assert headers["x-mine"] == "v" and headers["authorization"] == "Bearer t"
        assert "x-hop" not in headers and "proxy-authorization" not in headers
        endpoint = b.book.sets["s"].replicas[0].endpoint
        assert headers["host"] == endpoint.removeprefix("http://")   # the replica's own host
        assert headers["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
        assert headers["x-forwarded-host"] == b.url.removeprefix("http://")
        assert headers["x-forwarded-proto"] == "http"
        assert resp.headers["X-CNET-Replica"] == "a" == resp.headers["X-Echo-Name"]
        assert resp.headers["Content-Type"] == "application/json"    # the service's, not ours
        assert "Cache-Control" not in resp.headers


async def test_large_and_streamed_answers_pass_whole():
    async with bed({"a": {}}) as b:
        resp = await b.fetch("/svc/s/stream?n=12&size=65536")        # beyond what is held back
        assert resp.code == 200
        assert resp.body == b"".join(bytes([65 + i]) * 65536 for i in range(12))
        head = await b.fetch("/svc/s/echo", method="HEAD")
        assert head.code == 200 and head.body == b""
        assert head.headers["Content-Length"] == "1234"
        for _ in range(3):                                             # kept-alive, reused
            assert (await b.fetch("/svc/s/echo")).code == 200
        assert service_router(b.app).pool.idle_count() == 1


async def test_a_service_error_status_is_passed_through_not_retried():
    async with bed({"a": {}, "b": {}}) as b:
        resp = await b.fetch("/svc/s/status/503")
        assert resp.code == 503
        assert json.loads(resp.body) == {"name": resp.headers["X-CNET-Replica"], "status": 503}
        assert b.state("a")["requests"] + b.state("b")["requests"] == 1
        for code in (204, 304, 404):
            resp = await b.fetch(f"/svc/s/status/{code}")
            assert resp.code == code and "X-CNET-Replica" in resp.headers
            assert resp.body == b"" if code != 404 else json.loads(resp.body)["status"] == 404


async def test_requests_in_flight_spread_over_the_replicas():
    async with bed({"a": {}, "b": {}, "c": {}}) as b:
        pending = [asyncio.ensure_future(b.fetch("/svc/s/slow?s=hold")) for _ in range(9)]
        await until(lambda: sum(b.state(n)["started"] for n in "abc") == 9, 10, "9 in flight")
        assert [b.state(n)["started"] for n in "abc"] == [3, 3, 3]
        assert b.in_flight() == {"a": 3, "b": 3, "c": 3}
        for n in "abc":
            b.state(n)["release"].set()
        answers = await asyncio.gather(*pending)
        assert [r.code for r in answers] == [200] * 9
        assert b.in_flight() == {}


async def test_near_replicas_first_far_ones_when_near_are_busier():
    async with bed({"near": {"near": True}, "far1": {"near": False},
                    "far2": {"near": False}}) as b:
        for _ in range(6):
            assert (await b.fetch("/svc/s/echo")).headers["X-CNET-Replica"] == "near"
        held = asyncio.ensure_future(b.fetch("/svc/s/slow?s=hold"))
        await until(lambda: b.state("near")["started"] == 1, 10, "near busy")
        assert (await b.fetch("/svc/s/echo")).headers["X-CNET-Replica"] in ("far1", "far2")
        b.state("near")["release"].set()
        assert (await held).headers["X-CNET-Replica"] == "near"


async def test_unusable_replicas_are_skipped_at_once():
    async with bed({"a": {}, "b": {"near": False}}) as b:
        b.book.mark("s", "a", usable=False)
        for _ in range(4):
            assert (await b.fetch("/svc/s/echo")).headers["X-CNET-Replica"] == "b"
        assert b.state("a")["requests"] == 0
        b.book.mark("s", "b", usable=False)
        resp = await b.fetch("/svc/s/echo")
        assert resp.code == 503 and error(resp)["code"] == "no_replica"
        assert b.state("a")["requests"] == b.state("b")["requests"] - 4 == 0


# -- failures and retries --------------------------------------------------------------------

async def test_a_replica_that_dies_mid_request_is_retried_once_elsewhere():
    async with bed({"dying": {"near": True, "dies": True}, "ok": {"near": False}}) as b:
        resp = await b.fetch("/svc/s/slow?s=0")
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"
        assert b.state("dying")["started"] == b.state("ok")["started"] == 1
        # Passive health: the near replica is skipped now, though its port still answers.
        for _ in range(3):
            assert (await b.fetch("/svc/s/echo")).headers["X-CNET-Replica"] == "ok"
        assert b.state("dying")["requests"] == 1
        assert b.in_flight() == {}


async def test_a_replica_killed_with_sigkill_mid_request():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ECHO), "--port", str(port), "--name", "victim"],
                            stdout=subprocess.PIPE)
    try:
        await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        async with bed({"victim": {"near": True, "endpoint": f"http://127.0.0.1:{port}"},
                        "ok": {"near": False}}) as b:
            pending = asyncio.ensure_future(b.fetch("/svc/s/slow?s=hold"))

            async def victim_started():
                count = await b.client.fetch(f"http://127.0.0.1:{port}/count", raise_error=False)
                return count.code == 200 and json.loads(count.body)["started"] == 1
            deadline = asyncio.get_running_loop().time() + 10
            while not await victim_started():
                assert asyncio.get_running_loop().time() < deadline, "the victim got no request"
                await asyncio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            await until(lambda: b.state("ok")["started"] == 1, 10, "the retry on ok")
            b.state("ok")["release"].set()
            resp = await pending
            assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


async def test_a_post_is_not_retried_unless_the_set_says_posts_are_pure():
    async with bed({"dying": {"dies": True}, "ok": {"near": False}}) as b:
        resp = await b.fetch("/svc/s/slow?s=0", method="POST", body=b"x")
        assert resp.code == 502 and error(resp)["code"] == "bad_gateway"
        assert error(resp)["details"] == {"replicas_tried": ["dying"]}
        assert b.state("ok")["requests"] == 0
    async with bed({"dying": {"dies": True}, "ok": {"near": False}}, retry_post=True) as b:
        resp = await b.fetch("/svc/s/slow?s=0", method="POST", body=b"x")
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"
        assert b.state("ok")["posts"] == 1


async def test_a_refused_connection_is_retried_even_for_a_post():
    closed = f"http://127.0.0.1:{free_port()}"    # nothing listens there: nothing was sent
    async with bed({"gone": {"endpoint": closed}, "ok": {"near": False}}) as b:
        resp = await b.fetch("/svc/s/predict", method="POST", body=b"image")
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"
        b.book.mark("s", "ok", usable=False)
        resp = await b.fetch("/svc/s/predict", method="POST", body=b"image")
        assert resp.code == 503 and error(resp)["code"] == "no_replica"


async def test_a_retry_goes_to_a_member_failing_its_checks_rather_than_failing():
    """The only member passing its checks refuses (its node was just killed, and nobody knows
    yet): the retry goes to the member failing its checks (slow, on a loaded machine)."""
    closed = f"http://127.0.0.1:{free_port()}"
    async with bed({"gone": {"endpoint": closed}, "slow": {"healthy": False}},
                   retry_post=True) as b:
        for _ in range(3):
            resp = await b.fetch("/svc/s/predict", method="POST", body=b"image")
            assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "slow"
        assert b.state("slow")["requests"] == 3
        assert "gone" in service_router(b.app).chooser._down_until   # it was tried first
        b.book.mark("s", "slow", usable=False)             # stopped: nothing is left
        resp = await b.fetch("/svc/s/predict", method="POST", body=b"image")
        assert resp.code == 503 and error(resp)["code"] == "no_replica"


async def test_a_timeout_after_a_post_was_accepted_is_not_retried():
    async with bed({"slow": {}, "ok": {"near": False}}, svc_timeout=0.3) as b:
        resp = await b.fetch("/svc/s/slow?s=hold", method="POST", body=b"x")
        assert resp.code == 504 and error(resp)["code"] == "gateway_timeout"
        assert b.state("slow")["posts"] == 1 and b.state("ok")["requests"] == 0
        assert b.in_flight() == {}


async def test_a_timeout_of_a_get_is_retried_once_then_504():
    async with bed({"a": {}, "b": {}}, svc_timeout=0.3) as b:
        resp = await b.fetch("/svc/s/slow?s=hold")
        assert resp.code == 504 and error(resp)["code"] == "gateway_timeout"
        assert sorted(error(resp)["details"]["replicas_tried"]) == ["a", "b"]
        assert b.state("a")["started"] == b.state("b")["started"] == 1


# -- a replica that falls silent (its machine cut off: no answer, no reset) -----------------

@contextlib.asynccontextmanager
async def silent_bed(head: bytes = b"", **kwargs) -> AsyncIterator[tuple[Bed, Silent]]:
    """A silent near replica ``cut`` beside a far ``ok`` one; the router's read timeout (30 s)
    is beyond every wait of these tests, so an answer they get was not that timeout's."""
    silent = Silent(head)
    endpoint = await silent.start()
    try:
        async with bed({"cut": {"near": True, "endpoint": endpoint}, "ok": {"near": False}},
                       svc_timeout=30, **kwargs) as b:
            yield b, silent
    finally:
        await silent.stop()


async def test_a_request_in_flight_to_a_replica_marked_unusable_is_retried_on_another():
    async with silent_bed() as (b, silent):
        for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
            pending = asyncio.ensure_future(b.fetch("/svc/s/echo", method=method, body=body,
                                                    request_timeout=10))
            await asyncio.wait_for(silent.got_one.wait(), 10)
            assert b.in_flight() == {"cut": 1}
            b.book.mark("s", "cut", usable=False)          # its node is lost
            resp = await pending
            assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok", method
            assert json.loads(resp.body)["method"] == method
            assert b.in_flight() == {}
            b.book.mark("s", "cut", usable=True)           # back, for the next method
            service_router(b.app).chooser.reached("cut")
            silent.got_one.clear()
        assert silent.requests == 3 and b.state("ok")["requests"] == 3   # each once, no more


async def test_a_post_in_flight_is_retried_only_where_posts_are_pure():
    async with silent_bed() as (b, silent):
        pending = asyncio.ensure_future(b.fetch("/svc/s/predict", method="POST", body=b"image",
                                                request_timeout=10))
        await asyncio.wait_for(silent.got_one.wait(), 10)
        b.book.mark("s", "cut", usable=False)
        resp = await pending                               # its error at once, not a retry
        assert resp.code == 502 and error(resp)["code"] == "bad_gateway"
        assert error(resp)["details"] == {"replicas_tried": ["cut"]}
        assert "unusable" in error(resp)["message"]
        assert b.state("ok")["requests"] == 0 and b.in_flight() == {}
    async with silent_bed(retry_post=True) as (b, silent):
        pending = asyncio.ensure_future(b.fetch("/svc/s/predict", method="POST", body=b"image",
                                                request_timeout=10))
        await asyncio.wait_for(silent.got_one.wait(), 10)
        b.book.mark("s", "cut", usable=False)
        resp = await pending
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"
        assert json.loads(resp.body)["size"] == len(b"image")
        assert b.state("ok")["requests"] == 1


async def test_a_member_replaced_or_gone_cuts_its_requests_too():
    async with silent_bed() as (b, silent):
        pending = asyncio.ensure_future(b.fetch("/svc/s/echo", request_timeout=10))
        await asyncio.wait_for(silent.got_one.wait(), 10)
        svc = b.book.sets["s"]
        b.book.sets["s"] = replace(svc, replicas=tuple(r for r in svc.replicas if r.id != "cut"))
        b.book.mark("s", "ok")                             # the change, told to the router
        resp = await pending
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"


async def test_an_answer_already_begun_is_cut_for_the_client_not_retried():
    head = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 300_000)
    async with silent_bed(head=head) as (b, silent):
        chunks = []
        pending = asyncio.ensure_future(b.fetch("/svc/s/big", request_timeout=10,
                                                streaming_callback=chunks.append))
        await until(lambda: sum(map(len, chunks)) >= 256 * 1024, 10, "the answer begun")
        b.book.mark("s", "cut", usable=False)
        with pytest.raises(tornado.simple_httpclient.HTTPStreamClosedError):
            await pending                                  # the connection cut mid-answer
        assert sum(map(len, chunks)) < 1_000_000
        assert b.state("ok")["requests"] == 0 and b.in_flight() == {}


async def test_other_changes_leave_requests_in_flight_alone():
    async with silent_bed() as (b, silent):
        pending = asyncio.ensure_future(b.fetch("/svc/s/echo", request_timeout=10))
        await asyncio.wait_for(silent.got_one.wait(), 10)
        b.book.mark("s", "ok", usable=False)               # another member: nothing to cut
        b.book.mark("s", "cut", near=False)                # still usable
        b.book.mark("s", "cut", healthy=False)             # failed a check: slow, not gone
        service_router(b.app).changed("nope")       # a set with nothing in flight
        b.book.mark("s", "ok", usable=True)
        other = await b.fetch("/svc/s/echo")               # a whole round trip meanwhile
        assert other.headers["X-CNET-Replica"] == "ok"
        assert not pending.done() and b.in_flight() == {"cut": 1}
        b.book.mark("s", "cut", usable=False)
        resp = await pending
        assert resp.code == 200 and resp.headers["X-CNET-Replica"] == "ok"


async def test_without_the_watch_hook_a_silent_replica_waits_for_the_timeout():
    silent = Silent()
    endpoint = await silent.start()
    try:
        async with bed({"cut": {"endpoint": endpoint}, "ok": {"near": False}},
                       book=Book(silent=True), svc_timeout=0.5) as b:
            router = service_router(b.app)
            assert router._unwatch is None
            resp = await b.fetch("/svc/s/predict", method="POST", body=b"x")
            assert resp.code == 504 and error(resp)["code"] == "gateway_timeout"
    finally:
        await silent.stop()


async def test_closing_the_app_cuts_the_answers_it_was_making():
    async with silent_bed() as (b, silent):
        pending = asyncio.ensure_future(b.fetch("/svc/s/predict", method="POST", body=b"x"))
        await asyncio.wait_for(silent.got_one.wait(), 10)
        router = service_router(b.app)
        assert len(router._answers) == 1
        close_app(b.app)
        with pytest.raises(tornado.simple_httpclient.HTTPStreamClosedError):
            await asyncio.wait_for(pending, 10)   # cut: no answer made up
        await until(lambda: not router._answers, timeout=5)


async def test_closing_the_app_stops_watching():
    async with silent_bed() as (b, silent):
        assert len(b.book.watchers) == 1
    assert b.book.watchers == []


# -- bad input -------------------------------------------------------------------------------

async def test_unknown_and_malformed_sets_are_404():
    async with bed({"a": {}}) as b:
        for path in ("/svc/nope/echo", "/svc/nope", "/svc/", "/svc", "/svc/bad%20id/echo",
                     "/svc/%73/echo", "/svc/-x/echo", "/svc/" + "x" * 65 + "/echo"):
            resp = await b.fetch(path)
            assert resp.code == 404 and error(resp)["code"] == "not_found", path
        assert b.state("a")["requests"] == 0
    app = make_app(Web(node=None, hub=None, metrics=None, uploads=None, bus_endpoints=dict))
    assert "svc_router" not in app.settings   # made by the first /svc/ request, not before
    close_app(app)


async def test_an_unknown_method_is_405_and_never_forwarded():
    async with bed({"a": {}}) as b:
        for method in ("TRACE", "PROPFIND", "CONNECT"):
            answer = await raw(b.url, f"{method} /svc/s/echo HTTP/1.1\r\nHost: x\r\n"
                                      "Connection: close\r\n\r\n".encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 "), (method, head)
            assert b"\r\nAllow: GET, HEAD, POST, DELETE, PATCH, PUT, OPTIONS" in head
            assert json.loads(body)["error"]["code"] == "method_not_allowed"
        resp = await b.fetch("/svc/nope/echo", method="HEAD")
        assert resp.code == 404 and resp.body == b"" and int(resp.headers["Content-Length"]) > 0
        assert b.state("a")["requests"] == 0


async def test_svc_and_api_requests_share_a_kept_alive_connection():
    async with bed({"a": {}}) as b:
        requests = (b"GET /svc/s/echo HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /no-such-page.html HTTP/1.1\r\nHost: x\r\n\r\n"   # the UI's
                    b"POST /svc/s/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                    b"Expect: 100-continue\r\n\r\nabc"
                    b"GET /svc/s/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await raw(b.url, requests)   # pipelined: answered in order, one connection
        statuses = re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", answer)
        assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
                            b"HTTP/1.1 100 (Continue)", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
        assert answer.lower().count(b"x-cnet-replica: a\r\n") == 3
        assert b'"size": 3' in answer or b'"size":3' in answer
        assert b.state("a")["requests"] == 3


async def test_a_client_gone_before_its_body_is_whole_sends_nothing_on():
    async with bed({"a": {}}) as b:
        host, port = b.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /svc/s/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 10)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        resp = await b.fetch("/svc/s/echo")                # the router goes on serving
        assert resp.code == 200
        assert b.state("a")["requests"] == 1 and not service_router(b.app)._answers


async def test_a_set_without_a_trailing_path_reaches_the_root():
    async with bed({"a": {}}) as b:
        resp = await b.fetch("/svc/s")
        assert resp.code == 404 and resp.headers["X-CNET-Replica"] == "a"   # the echo has no /


async def test_path_traversal_does_not_leave_the_set():
    async with bed({"a": {}}) as b:
        for path in ("/svc/s/../../api/nodes", "/svc/s/%2e%2e/%2E%2E/api/nodes",
                     "/svc/s/./echo", "/svc/s/echo/..", "/svc/s/..%5c..%5capi", "/svc/s/a%00b"):
            answer = await raw(b.url, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 400 "), (path, answer[:80])
            assert b'"bad_path"' in answer
        assert b.state("a")["requests"] == 0


async def test_header_injection_does_not_reach_the_replica():
    async with bed({"a": {}}) as b:
        folded = await raw(b.url, b"GET /svc/s/echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n"
                                  b" X-Injected: b\r\nConnection: close\r\n\r\n")
        status, _, body = folded.partition(b"\r\n\r\n")
        if status.startswith(b"HTTP/1.1 200"):
            names = {k.lower() for k, _ in json.loads(body)["headers"]}
            assert "x-injected" not in names
        else:
            assert status.startswith(b"HTTP/1.1 400")
        bare_cr = await raw(b.url, b"GET /svc/s/echo HTTP/1.1\r\nHost: x\r\n"
                                   b"X-A: a\rX-Injected: b\r\nConnection: close\r\n\r\n")
        assert bare_cr.startswith(b"HTTP/1.1 400")
        resp = await b.fetch("/svc/s/echo", headers={"X-CNET-Replica": "forged"})
        assert resp.headers["X-CNET-Replica"] == "a"


async def test_a_body_over_the_limit_is_413_and_never_forwarded():
    async with bed({"a": {}}, svc_body_limit=64 * 1024) as b:
        resp = await b.fetch("/svc/s/predict", method="POST", body=b"x" * (64 * 1024 + 1))
        assert resp.code == 413 and error(resp)["code"] == "payload_too_large"

        def chunks(count: int):
            async def produce(write):
                for _ in range(count):
                    await write(b"y" * 8192)
            return produce
        resp = await b.fetch("/svc/s/predict", method="POST", body_producer=chunks(20))
        assert resp.code == 413 and error(resp)["code"] == "payload_too_large"
        resp = await b.fetch("/svc/s/predict", method="POST", body=b"x" * (64 * 1024))
        assert resp.code == 200 and json.loads(resp.body)["size"] == 64 * 1024
        resp = await b.fetch("/svc/s/predict", method="POST", body_producer=chunks(3))
        assert resp.code == 200 and json.loads(resp.body)["size"] == 3 * 8192   # chunked in
        assert b.state("a")["requests"] == 2


# -- on a real agent -------------------------------------------------------------------------

def test_a_real_agent_serves_svc_without_its_token_and_keeps_its_api_out_of_reach(make_agent):
    import requests
    agent = make_agent(config={"api": {"token": "svc-token"}})
    resp = requests.get(agent.url + "/svc/nope/predict", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert requests.get(agent.url + "/api/nodes", timeout=10).status_code == 401
    session = requests.Session()
    prepared = session.prepare_request(requests.Request("GET", agent.url + "/svc/x/../../api/nodes"))
    prepared.url = agent.url + "/svc/x/../../api/nodes"     # as sent, not tidied by the client
    resp = session.send(prepared, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_path"
