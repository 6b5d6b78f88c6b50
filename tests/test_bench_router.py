"""The bench's router program (tests/bench/router_proc.py) and its bare relay (relay_floor.py)
still start and route: the router reaches into the agent's lazily made /svc/ router, which a
change to make_app can break unseen (benches are run by hand)."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.bench.bench_replicas import echo_services, relay_floor, router


@pytest.mark.parametrize("max_idle", [None, 0])
def test_router_program_routes_to_its_replica(max_idle):
    with echo_services(1) as urls, router(urls, max_idle=max_idle) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/svc/bench/predict", body=b"abc")
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 200
            assert response.getheader("X-CNET-Replica") == "r0"
            assert body["size"] == 3
            conn.request("GET", "/svc/other/echo")
            response = conn.getresponse()
            error = json.loads(response.read())["error"]
            assert response.status == 404 and error["code"]
        finally:
            conn.close()


def test_relay_floor_relays_to_its_replica():
    """The bench's bare relay (its same-run floor) passes the body on and the answer back."""
    with echo_services(1) as urls, relay_floor(urls[0]) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for body in (b"abc", b"x" * 200_000):   # twice on one connection, one body large
                conn.request("POST", "/svc/bench/predict", body=body)
                response = conn.getresponse()
                assert response.status == 200
                assert json.loads(response.read())["size"] == len(body)
        finally:
            conn.close()
