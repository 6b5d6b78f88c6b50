"""Models named as data on real agents, beyond ``{"data_key", "path"}`` (tests/test_model_cache.py):
``model_url`` on a CNET data gateway, an opencv custom cascade as data, the existence check
before placing (nothing delegated, nothing reserved) and the preference for nodes that already
hold the model (the data node, a node with a cached copy, also after its restart)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections import Counter
from pathlib import Path

import cv2
import pytest
import requests

from cnet import ops
from cnet.errors import BadRequest, CnetError
from cnet.executors.launcher import BIN_DIR_ENV
from cnet.ops import Stop, Submit

from .harness import deep_merge, free_port_range, process_spec
from .service_helpers import FAKE_SERVICE, FAST_SERVICES
from .test_mlmodel import _predict
from .test_model_cache import upload

TREE = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suzhou": {"parent": "jiangsu"}}
MB = 1 << 20
BLOB = os.urandom(3 * MB + 123)      # a "model": the fake yolo service runs on any file
SHA = hashlib.sha256(BLOB).hexdigest()


def services() -> dict:
    return deep_merge(FAST_SERVICES, {"services": {"port_range": list(free_port_range(31))}})


@pytest.fixture
def fake_yolo(tmp_path, monkeypatch) -> None:
    """``cnet-inference-yolo`` is tests/fake_service.py (it takes any model file); the gateway
    and the opencv service stay the real programs."""
    bin_dir, flags = tmp_path / "fake-bin", tmp_path / "fake-flags"
    bin_dir.mkdir()
    flags.mkdir()
    script = bin_dir / "cnet-inference-yolo"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVICE}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv(BIN_DIR_ENV, str(bin_dir))
    monkeypatch.setenv("FAKE_SERVICE_DIR", str(flags))


@pytest.fixture
def delegations(monkeypatch) -> Counter:
    """How many delegations each node was asked to place."""
    asked: Counter = Counter()
    real = ops.Delegate.run

    async def counted(self, node, caller):
        asked[node.node_id] += 1
        return await real(self, node, caller)
    monkeypatch.setattr(ops.Delegate, "run", counted)
    return asked


def yolo(name: str, placement: dict, cpu: float = 1.0, **model) -> dict:
    return {"name": name, "type": "mlmodel", "placement": placement,
            "config": {"model_type": "yolo", **model}, "requirements": {"cpu": cpu}}


def gateway(bucket: str, **config) -> dict:
    return {"name": f"gw-{bucket}", "type": "datagateway", "placement": {"node": "jiangsu"},
            "config": {"bucket": bucket, **config}, "requirements": {"cpu": 0.1}}


async def submitted(cluster, where: str, spec: dict) -> dict:
    wl = (await cluster.run(where, Submit(workload=spec)))["workload"]
    assert wl["status"] == "running", wl.get("message")
    return wl


async def test_a_model_url_on_a_gateway_at_the_root_is_fetched_to_a_leaf(inprocess_cluster,
                                                                         fake_yolo):
    async with inprocess_cluster(TREE, config=services()) as cluster:
        stored = await upload(cluster["jiangsu"], "detector", {"weights/model.onnx": BLOB})
        key = f"{stored['data_key']}/weights/model.onnx"
        gw = await submitted(cluster, "jiangsu", gateway("models"))
        served = requests.get(f"{gw['endpoint']}/models/{key}", timeout=10)
        assert served.status_code == 200 and served.content == BLOB   # the same object

        wl = await submitted(cluster, "jiangsu", yolo("by-url", {"node": "nanjing"},
                                                      model_url=f"s3://models/{key}"))
        nanjing = cluster["nanjing"]
        cached = nanjing.config.state_dir / "models" / SHA
        assert (wl["node_id"], wl["model_sha256"], wl["model_file"]) == ("nanjing", SHA,
                                                                         str(cached))
        assert wl["config"]["model_url"] == f"s3://models/{key}"
        assert cached.read_bytes() == BLOB
        assert nanjing.models.stats()["fetches"] == 1

        # The same file named as data: the copy fetched through the URL serves it.
        again = await submitted(cluster, "jiangsu", yolo(
            "by-key", {"node": "nanjing"},
            model={"data_key": stored["data_key"], "path": "weights/model.onnx"}))
        assert again["model_sha256"] == SHA
        assert nanjing.models.stats() == {"entries": 1, "bytes": len(BLOB), "fetches": 1,
                                          "hits": 1}


BAD_URLS = ["http://models/k/m.onnx", "s3://", "s3://models", "s3://models/", "s3:/models/k/m",
            "s3://models/k/../m.onnx", "s3://models/k//m.onnx", "s3://models/./m", "s3://Bad_Bucket/k/m",
            "s3://models/k/.cnet-staging/m", "s3://models/k/m\x00", 42, None, ["s3://models/k/m"]]


async def test_a_bad_model_url_is_a_400_at_submit_that_changes_nothing(inprocess_cluster,
                                                                       delegations):
    async with inprocess_cluster(TREE) as cluster:
        for url in BAD_URLS:
            with pytest.raises(BadRequest) as caught:
                await cluster.run("jiangsu", Submit(workload=yolo("bad", {}, model_url=url)))
            assert caught.value.code == "invalid_field" and "model_url" in caught.value.message
        both = yolo("both", {}, model_url="s3://models/k/m", model_path="/tmp/m.onnx")
        with pytest.raises(BadRequest, match="not both"):
            await cluster.run("jiangsu", Submit(workload=both))
        for url in ("s3://models/k/m", 7):
            cascade = {"name": "c", "type": "opencv", "config": {"model_url": url,
                                                               "model": {"data_key": "k", "path": "m"}}}
            with pytest.raises(BadRequest):
                await cluster.run("jiangsu", Submit(workload=cascade))
        assert not delegations
        for agent in cluster.agents.values():
            assert agent.manager.list() == [] and agent.register.allocated.is_zero()


async def test_a_model_missing_from_the_tree_is_a_404_before_anything_is_placed(
        inprocess_cluster, fake_yolo, delegations):
    async with inprocess_cluster(TREE, config=services()) as cluster:
        stored = await upload(cluster["suzhou"], "detector", {"model.onnx": BLOB})
        dk = stored["data_key"]
        await submitted(cluster, "jiangsu", gateway("models"))
        other = cluster.root / "elsewhere"
        other.mkdir()
        await submitted(cluster, "jiangsu", gateway("scanned", base_path=str(other)))
        before = {name: (len(a.manager.list()), a.register.allocated) for name, a in
                  cluster.agents.items()}
        cases = [
            ({"model_url": "s3://nobucket/k/m.onnx"}, "no CNET data gateway serving bucket nobucket"),
            ({"model_url": f"s3://models/{dk}/other.onnx"}, f"has no object {dk}/other.onnx"),
            # suzhou stores it, but the gateway serving "models" is on jiangsu
            ({"model_url": f"s3://models/{dk}/model.onnx"}, f"has no object {dk}/model.onnx"),
            ({"model_url": "s3://scanned/k/m.onnx"}, "not from the node's data store"),
            ({"model": {"data_key": dk, "path": "nope.onnx"}}, f"{dk}/nope.onnx is not stored"),
            ({"model": {"data_key": "no-such-key", "path": "m.onnx"}}, "no-such-key/m.onnx"),
        ]
        for model, words in cases:
            for strategy in ("local_first", "spread"):
                spec = yolo("missing", {"strategy": strategy}, **model)
                with pytest.raises(CnetError) as caught:
                    await cluster.run("jiangsu", Submit(workload=spec))
                assert (caught.value.code, caught.value.status) == ("model_not_found", 404)
                assert words in caught.value.message, caught.value.message
            # A cascade too, and submitted at a leaf.
            cascade = {"name": "c", "type": "opencv", "config": model}
            with pytest.raises(CnetError) as caught:
                await cluster.run("nanjing", Submit(workload=cascade))
            assert caught.value.code == "model_not_found" and words in caught.value.message
        assert not delegations                       # it never left the node it was sent to
        assert {name: (len(a.manager.list()), a.register.allocated) for name, a in
                cluster.agents.items()} == before


async def test_placement_prefers_the_node_storing_the_model(inprocess_cluster, fake_yolo):
    sizes = {"jiangsu": 2.0, "nanjing": 64.0, "suzhou": 4.0}
    node_config = {n: {"resources": {"cpu": cpu}} for n, cpu in sizes.items()}
    async with inprocess_cluster(TREE, config=services(), node_config=node_config) as cluster:
        stored = await upload(cluster["suzhou"], "detector", {"model.onnx": BLOB})
        model = {"data_key": stored["data_key"], "path": "model.onnx"}
        for strategy in ("least_loaded", "spread", "local_first"):
            # Without a model, the emptiest node takes it; with it, the node storing it does.
            plain = await submitted(cluster, "jiangsu", process_spec(f"p-{strategy}", cpu=3.0,
                                    placement={"strategy": strategy}))
            assert plain["node_id"] == "nanjing"
            wl = await submitted(cluster, "jiangsu", yolo(f"m-{strategy}", {"strategy": strategy},
                                                          cpu=3.0, model=model))
            assert wl["node_id"] == "suzhou"
            for done in (plain, wl):
                await cluster.run("jiangsu", Stop(id=done["id"]))
            await cluster.settle()
        # Pinned elsewhere, the pin wins: the model is fetched there.
        pinned = await submitted(cluster, "jiangsu", yolo("pinned", {"node": "nanjing"}, cpu=3.0,
                                                          model=model))
        assert pinned["node_id"] == "nanjing" and cluster["nanjing"].models.stats()["fetches"] == 1


async def test_placement_prefers_a_node_with_a_cached_copy_also_after_its_restart(
        inprocess_cluster, fake_yolo):
    sizes = {"jiangsu": 2.0, "nanjing": 64.0, "suzhou": 4.0}
    node_config = {n: {"resources": {"cpu": cpu}} for n, cpu in sizes.items()}
    async with inprocess_cluster(TREE, config=services(), node_config=node_config) as cluster:
        stored = await upload(cluster["jiangsu"], "detector", {"model.onnx": BLOB})
        await submitted(cluster, "jiangsu", gateway("models"))
        url = f"s3://models/{stored['data_key']}/model.onnx"
        first = await submitted(cluster, "jiangsu", yolo("first", {"node": "suzhou"}, model_url=url))
        await cluster.run("jiangsu", Stop(id=first["id"]))   # its copy stays in suzhou's cache
        suzhou = await cluster.restart("suzhou")
        await cluster.settle()
        for i, model in enumerate(({"model_url": url},
                                   {"model": {"data_key": stored["data_key"], "path": "model.onnx"}})):
            wl = await submitted(cluster, "jiangsu", yolo(f"again-{i}", {"strategy": "least_loaded"},
                                                          cpu=3.0, **model))
            assert wl["node_id"] == "suzhou"           # not nanjing, the emptiest
            await cluster.run("jiangsu", Stop(id=wl["id"]))
            await cluster.settle()
        assert suzhou.models.stats()["fetches"] == 0 and suzhou.models.stats()["hits"] == 2


async def test_an_opencv_custom_cascade_named_as_data_detects_like_the_bundled_one(
        inprocess_cluster, astronaut_b64):
    bundled = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    async with inprocess_cluster(TREE, config=services()) as cluster:
        stored = await upload(cluster["jiangsu"], "cascades", {"face.xml": bundled,
                                                               "broken.xml": b"<not a cascade/>"})
        plain = await submitted(cluster, "jiangsu", {
            "name": "bundled", "type": "opencv", "placement": {"node": "nanjing"},
            "config": {"cascade_type": "face"}, "requirements": {"cpu": 0.5}})
        custom = await submitted(cluster, "jiangsu", {
            "name": "custom", "type": "opencv", "placement": {"node": "nanjing"},
            "config": {"model": {"data_key": stored["data_key"], "path": "face.xml"}},
            "requirements": {"cpu": 0.5}})
        cached = cluster["nanjing"].config.state_dir / "models" / custom["model_sha256"]
        assert cached.read_bytes() == bundled.read_bytes()
        info = requests.get(custom["endpoint"] + "/health", timeout=10).json()
        assert info["model"] == str(cached)
        expected = _predict(plain["endpoint"], astronaut_b64)
        got = _predict(custom["endpoint"], astronaut_b64)
        assert got["count"] == 1 and got["detections"] == expected["detections"]

        with pytest.raises(CnetError) as caught:        # a file that is no cascade
            await cluster.run("jiangsu", Submit(workload={
                "name": "broken", "type": "opencv", "placement": {"node": "nanjing"},
                "config": {"model": {"data_key": stored["data_key"], "path": "broken.xml"}}}))
        # The start failed on nanjing (pinned): the answer says why.
        assert "nanjing: service_start_failed" in caught.value.message
        assert "not a cascade classifier file" in caught.value.message
        assert [w.name for w in cluster["nanjing"].manager.list() if w.live] == ["bundled", "custom"]


async def test_a_retry_that_comes_while_the_model_is_located_gets_the_same_workload(
        inprocess_cluster, fake_yolo):
    async with inprocess_cluster(TREE, config=services()) as cluster:
        stored = await upload(cluster["suzhou"], "detector", {"model.onnx": BLOB})
        model = {"data_key": stored["data_key"], "path": "model.onnx"}
        for placement in ({}, {"strategy": "spread"}):     # staying here, and delegated
            spec = {**yolo("twice", placement, model=model), "id": f"twice-{len(placement)}"}
            first, second = await asyncio.gather(
                cluster.run("jiangsu", Submit(workload=spec)),
                cluster.run("jiangsu", Submit(workload=spec)))
            assert first["workload"]["id"] == second["workload"]["id"] == spec["id"]
            statuses = {first["workload"]["status"], second["workload"]["status"]}
            assert "running" in statuses and statuses <= {"pending", "running"}  # the retry
            live = [w.id for a in cluster.agents.values() for w in a.manager.list() if w.live]
            assert live.count(spec["id"]) == 1


async def test_a_node_that_does_not_answer_the_survey_does_not_hold_up_the_placement(
        inprocess_cluster, fake_yolo, monkeypatch):
    tree = {**TREE, "pukou": {"parent": "nanjing"}}
    real = ops.Locate.run
    stuck = asyncio.Event()            # never set: pukou never answers a locate

    async def silent_below_the_holder(self, node, caller):
        if node.node_id == "pukou":
            await stuck.wait()
        return await real(self, node, caller)
    async with inprocess_cluster(tree, config=services()) as cluster:
        stored = await upload(cluster["nanjing"], "detector", {"model.onnx": BLOB})
        monkeypatch.setattr(ops.Locate, "run", silent_below_the_holder)
        spec = yolo("placed", {"strategy": "spread"},
                    model={"data_key": stored["data_key"], "path": "model.onnx"})
        # The survey past nanjing waits on pukou; the check stops at nanjing, and the placement
        # goes on with what it found (a bound only so that a regression fails, not hangs).
        wl = (await asyncio.wait_for(cluster.run("jiangsu", Submit(workload=spec)), 60))["workload"]
        assert (wl["status"], wl["node_id"]) == ("running", "nanjing"), wl.get("message")


@pytest.mark.parametrize("args", [
    {"bucket": "models", "key": "k/../m"}, {"bucket": "models"}, {"bucket": 7, "key": "k/m"},
    {"bucket": "Models", "key": "k/m"}, {"data_key": "k", "path": "m", "survey": "yes"},
    {"data_key": "k"}, {"data_key": "k", "path": "/etc/passwd"}])
def test_a_locate_with_bad_arguments_from_a_node_is_refused(args):
    with pytest.raises(BadRequest):
        ops.Locate.parse(args)


def test_a_locate_names_what_it_asks_for_the_same_way_on_every_hop():
    for args in ({"bucket": "models", "key": "k/m.onnx"}, {"data_key": "k", "path": "m.onnx"},
                 {"data_key": "k", "path": "m.onnx", "survey": True}):
        assert ops.Locate.parse(args).args() == args
