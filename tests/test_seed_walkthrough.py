"""The seed's REST walkthrough, verbatim, with real ``curl``, against the default topology
(``cnet cluster up topologies/jiangsu.yaml``) on the seed's fixed ports and /tmp paths.

Models aside: the mlmodel and opencv examples are left out (tests/test_mlmodel.py and the
service tests run them). test_seed_commands.py covers the seed's other command lines (make
build, bin/, config.yaml, the programs' --help and health); this covers its curl examples:
submit a process, list, get, stop and delete it, resources and nodes, a data upload with
``curl -F``, a datagateway over /tmp/cnet_data, and an S3 listing and download through it.

The ports (8080-8083, the buses' +1000/+2000, the gateway's 9091) and the root's
/tmp/cnet_storage.db and /tmp/cnet_data are fixed, so the test skips when any is in use, and
removes the /tmp paths afterwards (it only runs when they did not exist). The cluster's own
state goes to a temporary directory; ``cnet cluster down`` runs at the end whatever happens.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from .harness import REPO, wait_for

SEED = REPO.parent / "shared" / "seed" / "cnet-agent-seed.md"
NODE_PORTS = (8080, 8081, 8082, 8083)
PORTS = (*NODE_PORTS, *(p + 1000 for p in NODE_PORTS), *(p + 2000 for p in NODE_PORTS), 9091)
ROOT_PATHS = (Path("/tmp/cnet_storage.db"), Path("/tmp/cnet_storage.db-wal"),
              Path("/tmp/cnet_storage.db-shm"), Path("/tmp/cnet_storage.db.lock"),
              Path("/tmp/cnet_data"))
NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
GW_TEXT = b"hello from the cnet gateway\n"

# The seed's examples as it writes them ("\ " is a line continuation flattened to a space);
# {workload_id} and <data_key> are its placeholders, filled in from earlier answers.
SUBMIT_PROCESS = ("curl -X POST http://localhost:8080/api/workloads \\ -H \"Content-Type: "
                  "application/json\" \\ -d '{ \"name\": \"test-process\", \"type\": \"process\", "
                  "\"requirements\": { \"cpu\": 1.0, \"memory\": 536870912 }, \"config\": { "
                  "\"command\": \"sleep\", \"args\": [\"60\"] } }'")
LIST = "curl http://localhost:8080/api/workloads"
GET = "curl http://localhost:8080/api/workloads/{workload_id}"
STOP = "curl -X POST http://localhost:8080/api/workloads/{workload_id}/stop"
DELETE = "curl -X DELETE http://localhost:8080/api/workloads/{workload_id}"
RESOURCES = "curl http://localhost:8080/api/resources"
NODES = "curl http://localhost:8080/api/nodes"
HEALTH = "curl http://localhost:8080/api/health"
NANJING_RESOURCES = "curl http://localhost:8081/api/resources"
UPLOAD = ("curl -X POST http://localhost:8080/api/workloads \\ -H \"Content-Type: "
          "multipart/form-data\" \\ -F \"type=data\" \\ -F \"name=test-file\" \\ -F "
          "\"file=@./gw_test.txt\"")
DATAGATEWAY = ("curl -X POST http://localhost:8080/api/workloads \\ -H \"Content-Type: "
               "application/json\" \\ -d '{ \"name\": \"data-gateway\", \"type\": \"datagateway\", "
               "\"config\": { \"service_port\": 9091, \"service_host\": \"127.0.0.1\", "
               "\"base_path\": \"/tmp/cnet_data\", \"bucket\": \"cnet\" } }'")
GW_HEALTH = "curl http://127.0.0.1:9091/health"
GW_LIST = "curl \"http://127.0.0.1:9091/s3/cnet?list-type=2&prefix=<data_key>\""
GW_GET = "curl http://127.0.0.1:9091/s3/cnet/<data_key>/gw_test.txt"
EXAMPLES = (SUBMIT_PROCESS, LIST, GET, STOP, DELETE, RESOURCES, NODES, HEALTH, NANJING_RESOURCES,
            UPLOAD, DATAGATEWAY, GW_HEALTH, GW_LIST, GW_GET)


def unused(port: int) -> bool:
    """Nothing listens on the port (connections of a run just ended in TIME_WAIT are fine)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_examples_are_the_seeds():
    if not SEED.is_file():
        pytest.skip(f"the seed is not at {SEED}")
    text = SEED.read_text()
    missing = [line for line in EXAMPLES if line not in text]
    assert not missing, missing


def curl(line: str, cwd: Path, **fill: str) -> bytes:
    """Run one example in bash as written, its continuations restored; return curl's stdout."""
    for name, value in fill.items():
        line = line.replace("{%s}" % name, value).replace(f"<{name}>", value)
    script = line.replace("\\ ", "\\\n")
    result = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 0, (script, result.returncode, result.stderr[-2000:])
    return result.stdout


def curl_json(line: str, cwd: Path, **fill: str):
    out = curl(line, cwd, **fill)
    try:
        return json.loads(out)
    except ValueError:
        pytest.fail(f"`{line}` did not answer JSON: {out[:500]!r}")


@pytest.fixture
def cluster(tmp_path):
    """The default topology up from a private copy of topologies/, its state in tmp_path."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    busy = [port for port in PORTS if not unused(port)]
    if busy:
        pytest.skip(f"the seed's fixed ports are in use here: {busy}")
    taken = [str(path) for path in ROOT_PATHS if os.path.lexists(path)]
    if taken:
        pytest.skip(f"the root's seed paths already exist (another agent's?): {taken}")
    shutil.copytree(REPO / "topologies", tmp_path / "topologies")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def cnet_cluster(action: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cnet", "cluster", action, "topologies/jiangsu.yaml",
             "--state-dir", str(tmp_path / "run")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        up = cnet_cluster("up", 180)
        assert up.returncode == 0, up.stdout + up.stderr
        yield tmp_path
    finally:
        try:
            down = cnet_cluster("down", 120)
            assert down.returncode == 0, down.stdout + down.stderr
            wait_for(lambda: all(unused(port) for port in PORTS), timeout=30,
                     message="the seed's ports to be free after `cnet cluster down`")
        finally:
            for path in ROOT_PATHS:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    path.unlink()


def test_the_seeds_walkthrough(cluster):
    cwd = cluster
    health = curl_json(HEALTH, cwd)
    assert health["status"] == "healthy", health
    wait_for(lambda: {c["node_id"] for c in requests.get(
        "http://127.0.0.1:8080/api/nodes", timeout=5).json()["children"]} == {"nanjing"},
        timeout=60, message="nanjing to show as jiangsu's child")

    # A process: submit, list, get, stop, delete.
    submitted = curl_json(SUBMIT_PROCESS, cwd)
    workload_id = submitted["id"]
    assert submitted["status"] == "running", submitted
    listed = curl_json(LIST, cwd)
    items = listed if isinstance(listed, list) else listed.get("workloads", listed.get("items"))
    assert workload_id in {w["id"] for w in items}, listed
    got = curl_json(GET, cwd, workload_id=workload_id)
    assert (got["id"], got["name"], got["type"]) == (workload_id, "test-process", "process")
    curl_json(STOP, cwd, workload_id=workload_id)
    stopped = curl_json(GET, cwd, workload_id=workload_id)
    assert stopped["status"] in ("stopped", "completed"), stopped
    curl_json(DELETE, cwd, workload_id=workload_id)
    assert requests.get(f"http://127.0.0.1:8080/api/workloads/{workload_id}",
                        timeout=5).status_code == 404

    # Resources here and at nanjing, and the nodes the root sees.
    resources = curl_json(RESOURCES, cwd)
    assert resources["node_id"] == "jiangsu" and resources["capacity"]["cpu"] == 8.0, resources
    assert curl_json(NANJING_RESOURCES, cwd)["node_id"] == "nanjing"
    nodes = curl_json(NODES, cwd)
    assert nodes["parent"] is None and [c["node_id"] for c in nodes["children"]] == ["nanjing"]

    # A data upload (curl -F from the current directory) lands in /tmp/cnet_data.
    (cwd / "gw_test.txt").write_bytes(GW_TEXT)
    data = curl_json(UPLOAD, cwd)
    data_key = data.get("data_key") or (data.get("result") or {}).get("data_key") \
        or (data.get("config") or {}).get("data_key")
    assert data_key, data
    assert (Path("/tmp/cnet_data") / data_key / "gw_test.txt").read_bytes() == GW_TEXT

    # A datagateway over /tmp/cnet_data, then S3 through it.
    gateway = curl_json(DATAGATEWAY, cwd)
    assert gateway["status"] == "running" and "9091" in gateway.get("endpoint", ""), gateway
    wait_for(lambda: requests.get("http://127.0.0.1:9091/health", timeout=2).ok, timeout=30,
             message="the data gateway on 9091")
    assert curl_json(GW_HEALTH, cwd)["status"] == "ok"
    listing = ET.fromstring(curl(GW_LIST, cwd, data_key=data_key))
    keys = [key.text for key in listing.findall("s3:Contents/s3:Key", NS)]
    assert keys == [f"{data_key}/gw_test.txt"], keys
    assert curl(GW_GET, cwd, data_key=data_key) == GW_TEXT
