"""CurveZMQ: nodes with accepted keys join; a node with an unknown key never gets through."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bus import BusClient, BusNode, CurveKeys, Request, RequestTimeout, Sender, Watcher, generate_keys
from bus.refusals import fingerprint

from .harness import FAST, endpoints, running, status, subscribed, until


async def handle(request: Request, sender: Sender) -> dict:
    return {"from": sender.node_id}


def cluster_keys(tmp_path: Path) -> tuple[Path, Path]:
    """``good`` holds the cluster's keys; ``rogue`` a stranger's pair plus the cluster's public keys."""
    good, rogue = tmp_path / "keys", tmp_path / "rogue"
    for name in ("jiangsu", "nanjing", "client"):
        generate_keys(good, name)
    generate_keys(rogue, "nanjing2")
    for public in good.glob("*.key"):
        shutil.copy(public, rogue / public.name)
    return good, rogue


def test_key_files(tmp_path: Path) -> None:
    public, secret = generate_keys(tmp_path, "n1")
    assert public.name == "n1.key" and secret.name == "n1.key_secret"
    assert secret.stat().st_mode & 0o077 == 0
    keys = CurveKeys.load(tmp_path, "n1")
    assert len(keys.public) == 40 and keys.trusts(keys.public_text)
    with pytest.raises(OSError):
        CurveKeys.load(tmp_path, "missing")


async def test_curve_accepts_known_and_refuses_unknown_keys(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    good, rogue = cluster_keys(tmp_path)
    parent = BusNode("jiangsu", curve=CurveKeys.load(good, "jiangsu"), handler=handle, **FAST)
    async with running(parent):
        doc = parent.describe()
        assert doc["curve_key"] == CurveKeys.load(good, "jiangsu").public_text
        child = BusNode("nanjing", parent=endpoints(parent), curve=CurveKeys.load(good, "nanjing"),
                        snapshot=lambda: {"cpu": 2}, handler=handle, **FAST)
        stranger = BusNode("nanjing2", parent=endpoints(parent), curve=CurveKeys.load(rogue, "nanjing2"),
                           **FAST)
        async with running(child, stranger):
            await until(lambda: status(parent, "nanjing") == "alive")
            await until(lambda: parent.neighbour("nanjing").snapshot == {"cpu": 2})
            await subscribed(child, parent)                     # updates over the curve PUB/SUB
            assert (await parent.call("nanjing", "get")) == {"from": "jiangsu"}
            await until(lambda: "no welcome within" in caplog.text, 3.0, "the stranger gives up waiting")
            assert status(parent, "nanjing2") is None and status(stranger, "jiangsu") is None
            # Both sides say why: the refusing node names the key, the refused one the likely cause.
            stranger_key = CurveKeys.load(rogue, "nanjing2").public_text
            refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
            assert refusals and f"key {fingerprint(stranger_key)}" in refusals[0], caplog.text
            assert "Curve key is not accepted" in refusals[0]
            assert len(refusals) == 1          # once a minute per peer, not on every retry
            assert "is this node's Curve key among those it accepts?" in caplog.text
            # A client with an accepted key gets answers; a stranger's client does not.
            client_keys = CurveKeys.load(good, "client")
            async with BusClient(parent.router_endpoint, curve=client_keys, server_key=doc["curve_key"],
                                 timeout=2.0) as client:
                assert await client.call("get") == {"from": None}
            async with BusClient(parent.router_endpoint, curve=CurveKeys.load(rogue, "nanjing2"),
                                 server_key=doc["curve_key"], timeout=0.3) as bad_client:
                with pytest.raises(RequestTimeout):
                    await bad_client.call("get")
            watcher = Watcher(parent.pub_endpoint, curve=client_keys, server_key=doc["curve_key"])
            try:
                got = None
                for _ in range(50):             # the SUB joins late: publish until one arrives
                    parent.publish_event("tick", {"n": 1})
                    try:
                        got = await watcher.next(timeout=0.05)
                        break
                    except RequestTimeout:
                        continue
                assert got is not None and got.kind == "tick"
            finally:
                watcher.close()


async def test_a_node_without_keys_cannot_join_a_curve_node(tmp_path: Path) -> None:
    good, _ = cluster_keys(tmp_path)
    parent = BusNode("jiangsu", curve=CurveKeys.load(good, "jiangsu"), **FAST)
    async with running(parent):
        plain = BusNode("nanjing", parent=endpoints(parent), **FAST)
        async with running(plain):
            with pytest.raises(AssertionError):
                await until(lambda: status(parent, "nanjing"), 0.8)
