"""Advertised addresses: how a node's is chosen, and that endpoints and /api/nodes name it."""

from __future__ import annotations

import socket

import pytest
import requests

from cnet import config
from cnet.addresses import advertised_host, route_source
from cnet.config import ConfigError, from_dict

from .harness import deep_merge, free_port_range
from .service_helpers import FAST_SERVICES, fake_install

ADVERTISED = "127.0.0.2"  # loopback, yet not where a loopback agent would say it is
RESOURCES = {"cpu": 4.0, "gpu": 0, "memory": 1 << 30, "storage": 1 << 30}


def _config(tmp_path, **agent) -> config.Config:
    return from_dict({"agent": {"node_id": "nanjing", "state_dir": str(tmp_path), **agent},
                      "resources": RESOURCES})


class _Probe:
    """A stand-in for ``route_source``: answers from a table and records what it was asked."""

    def __init__(self, routes: dict[str, str | None]):
        self.routes, self.asked = routes, []

    def __call__(self, host: str, port: int) -> str | None:
        self.asked.append((host, port))
        return self.routes.get(host)


def _hostname() -> str:
    return "nanjing.example"


# -- how the address is chosen ----------------------------------------------------------


def test_a_loopback_agent_advertises_loopback_as_before(tmp_path):
    cfg = _config(tmp_path, address="127.0.0.1", port=8081)
    assert cfg.advertise == "127.0.0.1" and cfg.advertise_address is None
    assert cfg.url == cfg.public_url == "http://127.0.0.1:8081"


def test_advertise_address_wins_over_the_bind_address(tmp_path):
    for address in ("0.0.0.0", "127.0.0.1", "::"):
        cfg = _config(tmp_path, address=address, port=8081, advertise_address="nanjing.lan")
        assert cfg.advertise == "nanjing.lan" and cfg.url == "http://nanjing.lan:8081"
    assert _config(tmp_path, advertise_address="[fd00::7]").url == "http://[fd00::7]:8080"


def test_a_specific_bind_address_is_advertised_without_probing():
    probe = _Probe({})
    assert advertised_host("10.1.2.3", None, ["10.9.9.9:8080"], probe=probe) == "10.1.2.3"
    assert probe.asked == []


def test_a_wildcard_agent_advertises_the_interface_that_reaches_its_parent_or_peers():
    probe = _Probe({"parent.lan": None, "10.0.0.8": "10.0.0.5", "10.0.0.9": "10.0.0.6"})
    found = advertised_host("0.0.0.0", None, ["parent.lan:8080", "10.0.0.8:8082", "10.0.0.9:8083"],
                            probe=probe, hostname=_hostname)
    assert found == "10.0.0.5"
    assert probe.asked == [("parent.lan", 8080), ("10.0.0.8", 8082)]  # first answer wins
    v6 = _Probe({"fd00::1": "fd00::5"})
    assert advertised_host("::", None, ["[fd00::1]:8080"], probe=v6, hostname=_hostname) == "fd00::5"


def test_a_route_over_loopback_or_none_at_all_falls_back_to_the_host_name():
    probe = _Probe({"127.0.0.1": "127.0.0.1", "localhost": "::1", "10.0.0.8": "0.0.0.0"})
    neighbours = ["127.0.0.1:8080", "localhost:8082", "10.0.0.8:8083", "nowhere:1"]
    assert advertised_host("0.0.0.0", None, neighbours, probe=probe,
                           hostname=_hostname) == "nanjing.example"
    assert len(probe.asked) == 4
    assert advertised_host("0.0.0.0", None, [], probe=probe, hostname=_hostname) == "nanjing.example"


def test_the_route_probe_sends_nothing_and_names_the_local_address():
    assert route_source("127.0.0.1", 9) == "127.0.0.1"   # UDP connect(): a route, not a packet
    assert route_source("no-such-host.invalid", 9) is None


def test_a_wildcard_agent_with_a_local_parent_advertises_its_host_name(tmp_path):
    cfg = _config(tmp_path, address="0.0.0.0")
    assert cfg.advertise == socket.gethostname()
    cfg = from_dict({"agent": {"node_id": "nanjing", "address": "0.0.0.0", "state_dir": str(tmp_path)},
                     "resources": RESOURCES, "parent": {"address": "127.0.0.1:8080"}})
    assert cfg.advertise == socket.gethostname()


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "[::]", "", "  ", 5, True, "http://nanjing",
                                   "nanjing:8080", "10.0.0.5:8080", "nan jing", "nanjing/api"])
def test_a_bad_advertise_address_is_a_config_error_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"^agent\.advertise_address: "):
        _config(tmp_path, address="0.0.0.0", advertise_address=value)


# -- a real agent on every interface ---------------------------------------------------


@pytest.fixture
def wildcard_agent(make_agent, tmp_path):
    """An agent bound to 0.0.0.0 that advertises 127.0.0.2; its services are the fake."""
    env, _flags = fake_install(tmp_path)
    return make_agent(env=env, config=deep_merge(FAST_SERVICES, {
        "agent": {"address": "0.0.0.0", "advertise_address": ADVERTISED},
        "services": {"port_range": list(free_port_range(21))}}))


def _service(**config) -> dict:
    return {"name": "svc", "type": "opencv", "config": {"cascade_type": "face", **config},
            "requirements": {"cpu": 0.5, "memory": 1 << 20}}


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def test_services_of_a_wildcard_agent_are_reachable_at_the_advertised_address(wildcard_agent):
    agent = wildcard_agent
    view = agent.api("GET", "/api/nodes").json()
    assert view["self"]["address"] == f"http://{ADVERTISED}:{agent.port}"
    assert agent.api("GET", "/api/health").json()["address"] == f"http://{ADVERTISED}:{agent.port}"

    wl = agent.submit(_service())  # no service_host: it binds where the agent does
    assert "service_host" not in wl["config"]
    assert wl["endpoint"] == f"http://{ADVERTISED}:{wl['port']}"
    assert _answers(wl["endpoint"]) and _answers(f"http://127.0.0.1:{wl['port']}")

    wide = agent.submit(_service(service_host="0.0.0.0"))
    assert wide["endpoint"] == f"http://{ADVERTISED}:{wide['port']}" and _answers(wide["endpoint"])

    local = agent.submit(_service(service_host="127.0.0.1"))  # explicit: bound and named as given
    assert local["endpoint"] == f"http://127.0.0.1:{local['port']}" and _answers(local["endpoint"])
    assert not _answers(f"http://{ADVERTISED}:{local['port']}")


def test_a_service_placed_on_a_wildcard_child_is_returned_at_the_parent_with_its_address(
        make_cluster, monkeypatch, tmp_path):
    """The issue's case: placed on nanjing, shown at jiangsu, with nanjing's address."""
    env, _flags = fake_install(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    services = deep_merge(FAST_SERVICES, {"services": {"port_range": list(free_port_range(11))}})
    wildcard = {"agent": {"address": "0.0.0.0", "advertise_address": ADVERTISED}}
    cluster = make_cluster({"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}, config=services,
                           node_config={"nanjing": wildcard})
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    child = root.api("GET", "/api/nodes").json()["children"][0]
    assert child["node_id"] == "nanjing" and child["address"] == f"http://{ADVERTISED}:{nanjing.port}"

    wl = root.submit({**_service(), "placement": {"node": "nanjing"}})
    assert wl["node_id"] == "nanjing"
    port = nanjing.workload(wl["id"])["port"]
    assert wl["endpoint"] == f"http://{ADVERTISED}:{port}" and _answers(wl["endpoint"])
    assert root.workload(wl["id"])["endpoint"] == wl["endpoint"]
