"""GPUs as devices, without a GPU: a fake NVML, a fake nvidia-smi on PATH, real agents.

Devices in the register (whole devices, specific ones, released, rebuilt after a restart), the
environment a process sees, the container create request as the engine receives it (through a
recording proxy in front of the Podman socket), the provider choice of the YOLO service and the
clear error, and the scheduler's and summaries' device counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnet import config as cnet_config
from cnet.candidates import NodeView, Snapshot
from cnet.devices import Device, DeviceTable, detect
from cnet.errors import BadRequest, InsufficientResources
from cnet.register import Register
from cnet.resources import Resources
from cnet.scheduler import Placement, schedule

from .harness import MODELS_DIR, REPO, free_port, wait_for

FAKE_SMI = REPO / "tests" / "fake_nvidia_smi"
UUIDS = ["GPU-11111111-aaaa", "GPU-22222222-bbbb"]
GIB = 1 << 30
TWO_GPUS = {"resources": {"gpu": 2, "gpus": [
    {"index": 0, "uuid": UUIDS[0], "name": "Fake A", "memory": "40GiB"},
    {"index": 1, "uuid": UUIDS[1], "name": "Fake B", "memory": "80GiB"}]}}


class FakeNVML:
    """The small NVML surface cnet/devices.py uses (pynvml's names), on made-up devices."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[Device], used: int = 5 * GIB, util: int = 37):
        self.devices, self.used, self.util = devices, used, util
        self.calls = 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetUUID(self, h):
        return h.uuid.encode()        # older pynvml returns bytes

    def nvmlDeviceGetName(self, h):
        return h.name

    def nvmlDeviceGetMemoryInfo(self, h):
        self.calls += 1
        return SimpleNamespace(total=h.memory, used=self.used, free=h.memory - self.used)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.util, memory=3)


DEVICES = [Device(0, UUIDS[0], "Fake A", 40 * GIB), Device(1, UUIDS[1], "Fake B", 80 * GIB)]


@pytest.fixture
def smi_path(tmp_path, monkeypatch):
    """A PATH whose nvidia-smi is the fake one (and the rest of PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(FAKE_SMI)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)
    return path


# -- detection ----------------------------------------------------------------------------

def test_nvml_first_then_nvidia_smi_then_none(smi_path, monkeypatch):
    found, source = detect(nvml=lambda: FakeNVML(DEVICES))
    assert source == "nvml" and found == DEVICES
    found, source = detect(nvml=lambda: None)
    assert source == "nvidia-smi"
    assert [(d.index, d.uuid, d.name, d.memory) for d in found] == [
        (0, "GPU-fake-0000", "Fake GPU A", 40 * GIB), (1, "GPU-fake-0001", "Fake GPU B", 40 * GIB)]
    monkeypatch.setenv("FAKE_NVIDIA_SMI_FAIL", "1")
    assert detect(nvml=lambda: None) == ([], "none")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert detect(nvml=lambda: None) == ([], "none")


def test_the_agent_does_not_import_nvml_at_start():
    import subprocess
    import sys

    code = ("import sys, cnet.agent, cnet.config, cnet.devices; "
            "print(any(m in sys.modules for m in ('pynvml', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_config_gpus_by_hand_by_count_and_detected(smi_path):
    cfg = cnet_config.from_dict({"agent": {"node_id": "a"}, **TWO_GPUS})
    assert cfg.capacity.gpu == 2 and [d.uuid for d in cfg.gpus] == UUIDS
    assert cfg.gpus[1].memory == 80 * GIB and cfg.gpus[1].name == "Fake B"
    # The seed's count: the first N detected (here by the fake nvidia-smi), numbered beyond.
    cfg = cnet_config.from_dict({"agent": {"node_id": "a", "resources": {"gpu": 3}}})
    assert [d.uuid for d in cfg.gpus] == ["GPU-fake-0000", "GPU-fake-0001", "2"]
    cfg = cnet_config.from_dict({"agent": {"node_id": "a"}})
    assert cfg.capacity.gpu == 2 and cfg.gpus[0].uuid == "GPU-fake-0000"
    assert cnet_config.from_dict({"agent": {"node_id": "a", "resources": {"gpu": 0}}}).gpus == []
    with pytest.raises(cnet_config.ConfigError, match="resources.gpu: 1 does not match"):
        cnet_config.from_dict({"agent": {"node_id": "a"},
                               "resources": {"gpu": 1, "gpus": TWO_GPUS["resources"]["gpus"]}})
    with pytest.raises(cnet_config.ConfigError, match=r"resources.gpus\[1\]: index 0"):
        cnet_config.from_dict({"agent": {"node_id": "a"},
                               "resources": {"gpus": [{"uuid": "GPU-x", "index": 0},
                                                      {"uuid": "GPU-y", "index": 0}]}})


# -- the register ------------------------------------------------------------------------

def _register(nvml=None) -> Register:
    return Register("n1", Resources(cpu=8, memory=16 * GIB, gpu=2, storage=GIB),
                    devices=DeviceTable(DEVICES, nvml=(lambda: nvml)))


def test_two_workloads_of_one_gpu_get_different_devices():
    reg = _register()
    reg.allocate("w1", Resources(gpu=1))
    reg.allocate("w2", Resources(gpu=1))
    assert reg.gpu_devices("w1") == [UUIDS[0]] and reg.gpu_devices("w2") == [UUIDS[1]]
    assert reg.available.gpu == 0
    with pytest.raises(InsufficientResources):
        reg.allocate("w3", Resources(gpu=1))
    assert reg.gpu_devices("w3") == []
    reg.release("w1")
    reg.allocate("w3", Resources(gpu=1))
    assert reg.gpu_devices("w3") == [UUIDS[0]]
    reg.release("w2"), reg.release("w3")
    reg.allocate("both", Resources(gpu=2))
    assert reg.gpu_devices("both") == UUIDS


def test_a_request_that_does_not_fit_takes_no_device():
    reg = _register()
    with pytest.raises(InsufficientResources):
        reg.allocate("big", Resources(cpu=100, gpu=1))
    assert reg.devices.free() == DEVICES


def test_fractional_gpus_are_a_400():
    with pytest.raises(BadRequest, match="gpu must be a whole number"):
        Resources.parse({"gpu": 0.5})


def test_adopt_rebuilds_the_recorded_devices():
    reg = _register()
    reg.adopt("w2", Resources(gpu=1), [UUIDS[1]])
    reg.adopt("w1", Resources(gpu=1), None)      # recorded before devices were: any free one
    assert reg.gpu_devices("w2") == [UUIDS[1]] and reg.gpu_devices("w1") == [UUIDS[0]]


def test_resources_show_each_device_holder_and_measured_use():
    nvml = FakeNVML(DEVICES)
    reg = _register(nvml)
    reg.allocate("w1", Resources(gpu=1))
    devices = reg.resources()["devices"]
    assert devices == [
        {"index": 0, "uuid": UUIDS[0], "name": "Fake A", "memory": 40 * GIB, "holder": "w1",
         "utilization": 37, "memory_used": 5 * GIB},
        {"index": 1, "uuid": UUIDS[1], "name": "Fake B", "memory": 80 * GIB, "holder": None,
         "utilization": 37, "memory_used": 5 * GIB}]
    reg.resources()
    assert nvml.calls == 2       # read at most once a second
    assert reg.devices.largest_free_memory() == 80 * GIB


# -- scheduling ------------------------------------------------------------------------------

def test_a_gpu_workload_goes_to_the_child_with_a_free_device_below_it():
    none = Resources(cpu=8, memory=16 * GIB, gpu=0, storage=GIB)
    nodes = [NodeView("root", "self", available=none, capacity=none),
             NodeView("mid-a", "child", available=none, capacity=none, subtree_free=none),
             NodeView("mid-b", "child", available=none, capacity=none,
                      subtree_nodes=frozenset({"leaf"}),
                      subtree_free=Resources(cpu=8, memory=16 * GIB, gpu=1, storage=GIB))]
    d = schedule(Resources(cpu=1, gpu=1), Placement(), Snapshot("root", nodes))
    assert [n.node_id for n in d.candidates] == ["mid-b"]
    assert "root: gpu 0 free device(s) < 1 requested" in d.reasons()


def test_summaries_carry_free_devices_and_their_largest_memory():
    from cnet.neighbours import LocalView, scheduler_snapshot, self_snapshot, summary

    reg = _register()
    reg.allocate("w1", Resources(gpu=1))
    local = LocalView("n1", "http://x", {}, reg, {}, 0.0)
    snap = self_snapshot(local)
    assert snap["available"]["gpu"] == 1 and snap["gpu_free_memory"] == 80 * GIB
    assert [d["holder"] for d in snap["devices"]] == ["w1", None]
    child = SimpleNamespace(status="alive", role="child", node_id="c1", snapshot={
        "available": {"gpu": 4}, "gpu_free_memory": 141 * GIB}, summary={
        "nodes": 2, "node_ids": ["c1", "c2"], "max_free": {"gpu": 4}, "reach_free": {"gpu": 4},
        "max_free_gpu_memory": 141 * GIB})
    out = summary(local, [child])
    assert out["max_free"]["gpu"] == 4 and out["max_free_gpu_memory"] == 141 * GIB
    view = {n.node_id: n for n in scheduler_snapshot(local, [child]).nodes}
    assert view["c1"].gpu_memory == 141 * GIB and view["n1"].gpu_memory == 80 * GIB


# -- real agents ----------------------------------------------------------------------------

def _gpu_agent(make_agent, node_id="gpu-node", config=None, env=None):
    from cnet.topology import deep_merge
    return make_agent(node_id, config=deep_merge(TWO_GPUS, config or {}), env=env)


def _env_probe(name: str, out: Path, gpu: int) -> dict:
    script = f'printf "%s" "${{CUDA_VISIBLE_DEVICES-unset}}" > {out}.tmp && mv {out}.tmp {out}; sleep 60'
    return {"name": name, "type": "process", "config": {"command": "sh", "args": ["-c", script]},
            "requirements": {"cpu": 0.1, "gpu": gpu}}


def test_processes_see_exactly_their_devices_and_keep_them_over_a_restart(make_agent, tmp_path):
    agent = _gpu_agent(make_agent)
    outs = [tmp_path / f"env{i}" for i in range(3)]
    w = [agent.submit(_env_probe(f"p{i}", out, gpu)) for i, (out, gpu) in enumerate(
        zip(outs, (1, 1, 0)))]
    assert w[0]["gpu_devices"] == [UUIDS[0]] and w[1]["gpu_devices"] == [UUIDS[1]]
    assert "gpu_devices" not in w[2]
    seen = [wait_for(lambda o=o: o.exists() and o.read_text() or (o.exists() and "<empty>"),
                     message=f"{o}") for o in outs]
    assert seen == [UUIDS[0], UUIDS[1], "<empty>"]   # set, and empty for no GPU
    third = agent.submit(_env_probe("p3", tmp_path / "env3", 1), expect=None)
    assert third["error"]["code"] == "insufficient_resources", third

    def holders():
        return [d["holder"] for d in agent.resources()["devices"]]
    assert holders() == [w[0]["id"], w[1]["id"]]
    assert agent.resources()["devices"][1]["memory"] == 80 * GIB
    subtree = agent.api("GET", "/api/nodes").json()["self"]["subtree"]
    assert subtree["max_free"]["gpu"] == 0 and subtree["max_free_gpu_memory"] == 0

    agent.kill()
    agent.start()
    assert holders() == [w[0]["id"], w[1]["id"]]
    assert agent.workload(w[1]["id"])["gpu_devices"] == [UUIDS[1]]
    agent.api("DELETE", f"/api/workloads/{w[0]['id']}")
    wait_for(lambda: holders() == [None, w[1]["id"]], message="device 0 released")
    w4 = agent.submit(_env_probe("p4", tmp_path / "env4", 1))
    assert w4["gpu_devices"] == [UUIDS[0]]


def test_devices_found_by_the_fake_nvidia_smi(make_agent, smi_path):
    agent = make_agent("smi-node", config={"resources": {"gpu": None}}, env={"PATH": smi_path})
    res = agent.resources()
    assert res["capacity"]["gpu"] == 2
    assert [d["uuid"] for d in res["devices"]] == ["GPU-fake-0000", "GPU-fake-0001"]
    assert res["devices"][0]["utilization"] is None   # no NVML: measured use unknown


# -- the YOLO service's provider ------------------------------------------------------------

def test_provider_choice():
    yolo = pytest.importorskip("services.inference.yolo")
    cuda, cpu = yolo.CUDA, yolo.CPU
    assert yolo.session_providers("cpu", None, [cuda, cpu]) == [cpu]
    assert yolo.session_providers("cuda", None, [cuda, cpu]) == [(cuda, {"device_id": 0}), cpu]
    assert yolo.session_providers("cuda", "cpu", [cpu]) == [cpu]
    with pytest.raises(yolo.ProviderUnavailable, match="gpu_provider_unavailable"):
        yolo.session_providers("cuda", None, [cpu])


@pytest.fixture
def model() -> str:
    path = MODELS_DIR / "yolo11n-320-int8.onnx"
    if not path.exists():
        pytest.skip(f"shared models not found ({path})")
    return str(path)


def test_mlmodel_on_a_gpu_without_the_cuda_provider(make_agent, model):
    from cnet.executors.mlmodel import cuda_provider_installed
    if cuda_provider_installed():
        pytest.skip("this node has onnxruntime-gpu: tests/gpu/check.sh covers it")
    agent = _gpu_agent(make_agent)
    spec = {"name": "yolo-gpu", "type": "mlmodel",
            "config": {"model_type": "yolo", "model_path": model, "service_port": free_port()},
            "requirements": {"cpu": 0.5, "gpu": 1}}
    resp = agent.api("POST", "/api/workloads", json=spec)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "gpu_provider_unavailable" and "gpu_fallback" in error["message"]
    assert agent.resources()["allocated"]["gpu"] == 0
    bad = agent.api("POST", "/api/workloads", json={
        **spec, "config": {**spec["config"], "gpu_fallback": "tpu"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_field"

    spec["config"]["gpu_fallback"] = "cpu"
    wl = agent.submit(spec)
    assert wl["status"] == "running" and wl["gpu_devices"] == [UUIDS[0]]
    import requests
    info = requests.get(wl["endpoint"] + "/info", timeout=10).json()
    assert info["provider"] == "CPUExecutionProvider" and info["gpu_devices"] == []
    logs = agent.api("GET", f"/api/workloads/{wl['id']}/logs").text
    assert f"--device {UUIDS[0]} --gpu-fallback cpu" in logs


# -- containers: the create request as the engine receives it --------------------------------

class RecordingProxy:
    """A unix-socket proxy in front of the engine's socket that keeps what clients send."""

    def __init__(self, upstream: str, path: Path):
        self.upstream, self.path = upstream, str(path)
        self.sent = bytearray()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_unix_server(self._client, self.path))
        self._ready.set()
        self.loop.run_forever()

    async def _shutdown(self):
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, reader, writer):
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.upstream), 10)

        async def pipe(src, dst, record):
            try:
                while data := await src.read(65536):
                    if record:
                        self.sent.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        pipes = [asyncio.ensure_future(pipe(reader, up_writer, True)),
                 asyncio.ensure_future(pipe(up_reader, writer, False))]
        try:
            await asyncio.gather(*pipes)
        finally:
            for task in pipes:
                task.cancel()

    def create_bodies(self) -> list[dict]:
        out, data, at = [], bytes(self.sent), 0
        while (at := data.find(b"/containers/create", at)) != -1:
            start = data.index(b"\r\n\r\n", at) + 4
            out.append(json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))[0])
            at = start
        return out


def _podman_socket() -> str | None:
    from .test_container import _engine_url
    url = _engine_url()
    return url.removeprefix("unix://") if url and url.startswith("unix://") else None


def test_a_container_gets_its_devices_by_uuid_in_the_create_request(make_agent, tmp_path):
    from .test_container import IMAGE, engine  # noqa: F401 -- skip without Podman and image
    socket_path = _podman_socket()
    if socket_path is None or not Path(socket_path).exists():
        pytest.skip("no Podman socket: bash .ci/podman-up; source /tmp/cnet-podman/env")
    node_id = f"gpu-ct-{uuid.uuid4().hex[:6]}"
    with RecordingProxy(socket_path, tmp_path / "proxy.sock") as proxy:
        agent = _gpu_agent(make_agent, node_id, config={
            "container": {"engine_url": f"unix://{proxy.path}"}})
        spec = {"name": "c-gpu", "type": "container",
                "config": {"image": IMAGE, "command": ["sleep", "30"]},
                "requirements": {"gpu": 1}}
        resp = agent.api("POST", "/api/workloads", json=spec)
        try:
            body = proxy.create_bodies()[-1]
            requests_ = body["HostConfig"]["DeviceRequests"]
            assert requests_ == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [UUIDS[0]],
                                  "Capabilities": [["gpu"]], "Options": {}}]
            assert f"CUDA_VISIBLE_DEVICES={UUIDS[0]}" in body["Env"]
            assert f"NVIDIA_VISIBLE_DEVICES={UUIDS[0]}" in body["Env"]
            # This host has no NVIDIA runtime: the engine may refuse; the error is clean and
            # nothing is held. If it ran, the workload holds its device.
            if resp.status_code == 201:
                assert resp.json()["gpu_devices"] == [UUIDS[0]]
            else:
                error = resp.json()["error"]
                assert resp.status_code in (400, 502) and error["code"].startswith("engine_")
                assert "GPU" in error["message"], error
                assert agent.resources()["allocated"]["gpu"] == 0
            plain = agent.api("POST", "/api/workloads", json={**spec, "requirements": {}})
            body = proxy.create_bodies()[-1]
            assert not body["HostConfig"].get("DeviceRequests")
            assert "CUDA_VISIBLE_DEVICES=" in body["Env"]
            assert "NVIDIA_VISIBLE_DEVICES=void" in body["Env"]
            assert plain.status_code == 201, plain.text
        finally:
            import docker
            client = docker.DockerClient(base_url=f"unix://{socket_path}")
            for c in client.containers.list(all=True, filters={"label": f"cnet.node_id={node_id}"}):
                c.remove(force=True)
            client.close()
