"""Models named as data stored on another node (cnet/model_cache.py, cnet/ops/data.py): the
node that runs the service fetches the file over the bus into its content-addressed cache,
checks its sha256, reuses it, fetches a corrupt copy again and evicts unused entries (LRU)."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
from collections import Counter
from pathlib import Path

import pytest
import requests

from cnet import model_cache
from cnet.data_locator import CHUNK, EARLIER_CHUNK, ModelRef
from cnet.errors import BadRequest, CnetError, InsufficientResources
from cnet.model_cache import CACHE_ALLOCATION
from cnet.ops import Stop, Submit
from cnet.ops import data as data_ops

from .harness import MODELS_DIR, deep_merge, free_port_range, process_spec
from .service_helpers import FAST_SERVICES

YOLO_MODEL = MODELS_DIR / "yolo11n-320-int8.onnx"
TREE = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}}
MB = 1 << 20


def services() -> dict:
    return deep_merge(FAST_SERVICES, {"services": {"port_range": list(free_port_range(21))}})


async def upload(agent, name: str, files: dict[str, Path | bytes]) -> dict:
    """Store ``files`` ({relative path: file or bytes}) as a data upload on ``agent``, through
    the same streaming intake as ``POST /api/workloads``; the data workload's runtime."""
    boundary = "cnet-test-boundary-7f3a"
    upload = await agent.uploads.begin(f"multipart/form-data; boundary={boundary}", 0)
    head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in (("type", "data"), ("name", name)))
    await upload.feed(head.encode())
    for rel, content in files.items():
        await upload.feed((f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                           f'filename="{rel}"\r\nContent-Type: application/octet-stream\r\n\r\n')
                          .encode())
        if isinstance(content, bytes):
            await upload.feed(content)
        else:
            with open(content, "rb") as f:
                while block := f.read(MB):
                    await upload.feed(block)
        await upload.feed(b"\r\n")
    await upload.feed(f"--{boundary}--\r\n".encode())
    return (await upload.finish()).runtime


def yolo_spec(data_key: str, path: str, name: str = "yolo-from-data") -> dict:
    return {"name": name, "type": "mlmodel", "placement": {"node": "nanjing"},
            "config": {"model_type": "yolo", "model": {"data_key": data_key, "path": path},
                       "workers": 1, "threads": 1},
            "requirements": {"cpu": 1.0, "memory": 1 << 30}}


@pytest.fixture
def chunk_reads(monkeypatch) -> Counter:
    """How many chunks each node read from its own store (every fetch answer is one)."""
    reads: Counter = Counter()
    real = data_ops.read_chunk

    async def counted(manager, ref, offset, length):
        reads[manager.node_id] += 1
        return await real(manager, ref, offset, length)
    monkeypatch.setattr(data_ops, "read_chunk", counted)
    return reads


def entries(cache) -> list[str]:
    """The cache's entries (its index of names left out)."""
    return sorted(p.name for p in cache.root.iterdir() if p.name != model_cache.NAMES)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_model_stored_on_another_node_is_fetched_checked_cached_and_reused(
        inprocess_cluster, chunk_reads):
    if not YOLO_MODEL.is_file():
        pytest.skip(f"shared models not found ({YOLO_MODEL}; set CNET_MODELS_DIR)")
    async with inprocess_cluster(TREE, config=services()) as cluster:
        stored = await upload(cluster["jiangsu"], "yolo11n", {"yolo11n.onnx": YOLO_MODEL})
        key, sha = stored["data_key"], sha256_of(YOLO_MODEL)

        first = (await cluster.run("jiangsu", Submit(workload=yolo_spec(key, "yolo11n.onnx"))))
        wl = first["workload"]
        assert (wl["status"], wl["node_id"]) == ("running", "nanjing"), wl.get("message")
        nanjing = cluster["nanjing"]
        cached = nanjing.config.state_dir / "models" / sha
        assert cached.is_file() and sha256_of(cached) == sha
        assert wl["model_sha256"] == sha and wl["model_file"] == str(cached)
        health = requests.get(wl["endpoint"] + "/health", timeout=10).json()
        assert health["model"] == str(cached)             # the service runs on the cached copy
        chunks = chunk_reads["jiangsu"]
        assert chunks == -(-YOLO_MODEL.stat().st_size // model_cache.CHUNK)
        assert nanjing.models.stats()["fetches"] == 1
        storage = nanjing.register.resources()["allocated"]["storage"]
        assert storage == YOLO_MODEL.stat().st_size       # the cache counts against storage

        second = await cluster.run("jiangsu", Submit(workload=yolo_spec(key, "yolo11n.onnx",
                                                                        "second")))
        assert second["workload"]["status"] == "running"
        assert chunk_reads["jiangsu"] == chunks           # no fetch: the cached copy was used
        assert nanjing.models.stats()["fetches"] == 1

        nanjing = await cluster.restart("nanjing")        # the services keep running
        assert {w.id for w in nanjing.manager.live.values()} == {wl["id"], second["workload"]["id"]}
        third = await cluster.run("nanjing", Submit(workload=yolo_spec(key, "yolo11n.onnx",
                                                                       "third")))
        assert third["workload"]["status"] == "running"
        assert chunk_reads["jiangsu"] == chunks and nanjing.models.stats()["hits"] == 1

        for done in (wl, second["workload"], third["workload"]):
            await cluster.run("nanjing", Stop(id=done["id"]))
        cached.write_bytes(b"not the model at all")       # a corrupt entry ...
        fourth = await cluster.run("jiangsu", Submit(workload=yolo_spec(key, "yolo11n.onnx",
                                                                        "fourth")))
        assert fourth["workload"]["status"] == "running"  # ... is noticed and fetched again
        assert chunk_reads["jiangsu"] == 2 * chunks and sha256_of(cached) == sha
        assert nanjing.register.resources()["allocated"]["storage"] == YOLO_MODEL.stat().st_size


async def test_a_model_nowhere_in_the_tree_is_a_clear_error_that_leaves_nothing(
        inprocess_cluster):
    async with inprocess_cluster(TREE, config=services()) as cluster:
        with pytest.raises(CnetError) as caught:
            await cluster.run("jiangsu", Submit(workload=yolo_spec("no-such-key", "m.onnx")))
        assert (caught.value.code, caught.value.status) == ("model_not_found", 404)
        assert "no-such-key/m.onnx" in caught.value.message
        for agent in cluster.agents.values():
            assert agent.manager.list() == [] and agent.register.allocated.is_zero()


async def test_the_model_field_is_checked_where_it_is_submitted(inprocess_cluster):
    async with inprocess_cluster({"jiangsu": {}}) as cluster:
        bad = [{"data_key": "k", "path": "../etc/passwd"}, {"data_key": "K!", "path": "m"},
               {"data_key": "k"}, {"data_key": "k", "path": "m", "extra": 1}, "k/m"]
        for model in bad:
            spec = yolo_spec("k", "m")
            spec["config"]["model"] = model
            with pytest.raises(BadRequest):
                await cluster.run("jiangsu", Submit(workload=spec))
        both = yolo_spec("k", "m")
        both["config"]["model_path"] = "/tmp/m.onnx"
        with pytest.raises(BadRequest, match="not both"):
            await cluster.run("jiangsu", Submit(workload=both))


async def test_eviction_is_least_recently_used_and_never_of_an_entry_in_use(
        inprocess_cluster, chunk_reads):
    small = {"resources": {"storage": int(2.5 * MB)}}
    async with inprocess_cluster(TREE, node_config={"nanjing": small}) as cluster:
        blobs = {name: os.urandom(MB) for name in ("a", "b", "c")}
        stored = await upload(cluster["jiangsu"], "models", blobs)
        refs = {name: ModelRef(stored["data_key"], name) for name in blobs}
        sha = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
        nanjing = cluster["nanjing"]
        cache = nanjing.models

        async def user(name: str) -> str:
            """A live workload on nanjing (an entry it acquires is in use while it runs)."""
            placed = await cluster.run("nanjing", Submit(workload=process_spec(name, cpu=0.1)))
            return placed["workload"]["id"]

        one, two = await user("one"), await user("two")
        await cache.acquire(one, refs["a"])
        await cache.acquire(two, refs["b"])
        assert nanjing.register.resources()["allocated"]["storage"] == 2 * MB
        assert nanjing.register._allocations[CACHE_ALLOCATION].storage == 2 * MB

        await cluster.run("nanjing", Stop(id=one))           # "a" is no longer in use
        three = await user("three")
        entry = await cache.acquire(three, refs["c"])        # room made by evicting "a" only
        assert entry.path.read_bytes() == blobs["c"]
        assert entries(cache) == sorted([sha["b"], sha["c"]])
        assert nanjing.register.resources()["allocated"]["storage"] == 2 * MB

        four = await user("four")
        with pytest.raises(InsufficientResources, match="in use"):
            await cache.acquire(four, refs["a"])             # "b" and "c" are both in use
        assert entries(cache) == sorted([sha["b"], sha["c"]])
        assert nanjing.register.resources()["allocated"]["storage"] == 2 * MB

        await cluster.run("nanjing", Stop(id=two))
        os.utime(cache.root / sha["c"], (1, 1))              # "c" looks oldest, but is in use
        await cache.acquire(four, refs["a"])                 # so "b" goes
        assert entries(cache) == sorted([sha["a"], sha["c"]])
        assert cache.stats()["fetches"] == 4 and chunk_reads["jiangsu"] == 4


async def test_a_holder_of_an_earlier_version_is_fetched_from_in_its_smaller_chunks(
        inprocess_cluster, chunk_reads, monkeypatch):
    """A node of an earlier CNET1 serves chunks of at most 1 MiB and refuses a larger one
    (invalid_argument): the fetch, which asks its first chunk alone, goes on in 1 MiB chunks."""
    async with inprocess_cluster(TREE) as cluster:
        blobs = {name: os.urandom(5 * MB + 123) for name in ("now", "earlier")}
        stored = await upload(cluster["jiangsu"], "models", blobs)
        models = cluster["nanjing"].models
        entry = await models.acquire("w1", ModelRef(stored["data_key"], "now"))
        assert entry.path.read_bytes() == blobs["now"]
        assert chunk_reads["jiangsu"] == -(-len(blobs["now"]) // CHUNK) == 2
        monkeypatch.setattr(data_ops, "MAX_CHUNK", EARLIER_CHUNK)   # jiangsu as it was
        entry = await models.acquire("w2", ModelRef(stored["data_key"], "earlier"))
        assert entry.path.read_bytes() == blobs["earlier"]
        assert chunk_reads["jiangsu"] == 2 + 6 and models.stats()["fetches"] == 2


async def test_a_cache_that_cannot_be_written_is_a_clear_error_that_leaves_nothing(
        inprocess_cluster):
    async with inprocess_cluster(TREE) as cluster:
        stored = await upload(cluster["jiangsu"], "models", {"a": os.urandom(3 * MB)})
        nanjing = cluster["nanjing"]
        placed = await cluster.run("nanjing", Submit(workload=process_spec("user", cpu=0.1)))
        # Files of this process may not grow past 2 MB for a while: the fetch's writes fail
        # (EFBIG) as on a full disk.
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MB, limits[1]))
        try:
            with pytest.raises(CnetError) as caught:
                await nanjing.models.acquire(placed["workload"]["id"],
                                             ModelRef(stored["data_key"], "a"))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
        assert caught.value.code == "storage_error", caught.value.message
        assert "cannot write model" in caught.value.message
        assert entries(nanjing.models) == [] and nanjing.models.stats()["entries"] == 0
        assert nanjing.register.resources()["allocated"]["storage"] == 0
