"""datagateway workloads with the real ``cnet-gateway-data``: the seed's curl examples."""

from __future__ import annotations

import pytest
import requests

from .harness import deep_merge, free_port, free_port_range, wait_for
from .service_helpers import FAST_SERVICES, group_pids, port_is_free, wait_gone

ACCESS, SECRET = "GWAGENTKEY", "agent-secret/+KEY=xyz"


@pytest.fixture
def gw_agent(make_agent):
    return make_agent(config=deep_merge(FAST_SERVICES, {"services": {"port_range": list(free_port_range(41))}}))


def _seed_gateway(base_path: str, port: int) -> dict:
    """The seed's datagateway curl body (base path and port aside)."""
    return {"name": "data-gateway", "type": "datagateway",
            "config": {"service_port": port, "service_host": "127.0.0.1", "base_path": base_path,
                       "bucket": "cnet"}}


def _keys(endpoint: str, prefix: str = "") -> list[str]:
    resp = requests.get(f"{endpoint}/s3/cnet", params={"list-type": "2", "prefix": prefix},
                        timeout=10)
    assert resp.status_code == 200, resp.text
    return [part.split("</Key>")[0] for part in resp.text.split("<Key>")[1:]]


def test_seed_datagateway_example_runs_healthy_and_stops_cleanly(gw_agent):
    agent = gw_agent
    port = free_port()
    wl = agent.submit(_seed_gateway(str(agent.state_dir / "data"), port))
    assert wl["status"] == "running"
    assert wl["endpoint"] == f"http://127.0.0.1:{port}"
    assert wl["log_path"].endswith(f"gateway_service_{port}.log")
    health = requests.get(wl["endpoint"] + "/health", timeout=10)
    assert health.status_code == 200, health.text
    assert _keys(wl["endpoint"]) == []

    members = group_pids(wl["process_pid"])
    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    agent.wait_status(wl["id"], "stopped")
    wait_gone(members)
    assert port_is_free(port)


def test_seed_data_upload_is_listed_and_served_by_the_gateway(gw_agent, tmp_path):
    agent = gw_agent
    wl = agent.submit(_seed_gateway(str(agent.state_dir / "data"), free_port()))
    # The seed's data upload; the gateway lists from the agent's index, so it appears at once.
    sample = tmp_path / "gw_test.txt"
    sample.write_text("hello from cnet\n")
    with open(sample, "rb") as f:
        resp = agent.api("POST", "/api/workloads", data={"type": "data", "name": "test-file"},
                         files={"file": ("gw_test.txt", f)})
    assert resp.status_code == 201, resp.text
    data_key = resp.json()["data_key"]
    key = f"{data_key}/gw_test.txt"
    assert wait_for(lambda: key in _keys(wl["endpoint"], data_key), message=f"{key} listed")
    obj = requests.get(f"{wl['endpoint']}/s3/cnet/{key}", timeout=10)
    assert obj.status_code == 200 and obj.text == "hello from cnet\n"


def test_gateway_over_another_directory_lists_its_files(gw_agent, tmp_path):
    base = tmp_path / "exported"
    (base / "reports").mkdir(parents=True)
    (base / "reports" / "q1.csv").write_text("a,b\n1,2\n")
    (base / "readme.txt").write_text("hi\n")
    wl = gw_agent.submit(_seed_gateway(str(base), free_port()))
    assert wl["config"]["base_path"] == str(base)
    assert wait_for(lambda: _keys(wl["endpoint"]) == ["readme.txt", "reports/q1.csv"],
                    message="the directory's files listed")


def test_base_path_and_bucket_default_to_this_node(gw_agent):
    wl = gw_agent.submit({"name": "gw", "type": "datagateway", "config": {}})
    assert wl["status"] == "running"
    assert wl["config"]["bucket"] == "cnet"
    assert wl["config"]["base_path"] == str(gw_agent.state_dir / "data")
    assert requests.get(wl["endpoint"] + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("config, fragment", [
    ({"bucket": "Bad_Bucket"}, "bucket"),
    ({"bucket": "ab"}, "bucket"),
    ({"bucket": "a..b"}, "bucket"),
    ({"bucket": "192.168.1.10"}, "bucket"),
    ({"base_path": "/nonexistent/cnet-data"}, "base_path"),
    ({"access_key": ACCESS}, "secret_key"),
    ({"secret_key": SECRET}, "access_key"),
    ({"secret_key_file": "/etc/hostname"}, "access_key"),
    ({"access_key": ACCESS, "secret_key": SECRET, "secret_key_file": "/etc/hostname"}, "not both"),
    ({"access_key": ACCESS, "secret_key": "***"}, "secret_key"),
    ({"access_key": ACCESS, "secret_key": SECRET + "\n"}, "secret_key"),
    ({"access_key": ACCESS, "secret_key": ""}, "secret_key"),
    ({"access_key": ACCESS, "secret_key": 42}, "secret_key"),
    ({"access_key": "a/b", "secret_key": SECRET}, "access_key"),
    ({"access_key": ACCESS, "secret_key_file": "/nonexistent/secret"}, "secret_key_file"),
    ({"access_key": ACCESS, "secret_key": SECRET, "region": "us/east"}, "region"),
    ({"owner_id": "a\nb"}, "owner_id"),
    ({"base_path": None}, "base_path"),
    ({"access_key": None}, "access_key"),
    ({"access_key": ACCESS, "secret_key": None}, "secret_key"),
])
def test_bad_gateway_config_is_a_400(gw_agent, config, fragment):
    resp = gw_agent.api("POST", "/api/workloads",
                        json={"name": "gw", "type": "datagateway", "config": config})
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]["message"]
    assert SECRET not in resp.text                      # a bad secret is never quoted
    assert gw_agent.api("GET", "/api/workloads").json()["workloads"] == []


def test_seed_data_and_gateway_walkthrough_with_real_curl(gw_agent, tmp_path):
    """The seed's data section, every command run with curl as written (ports and paths aside)."""
    import json
    import subprocess

    def curl(*args: str) -> str:
        done = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True,
                              text=True, timeout=90, cwd=tmp_path, check=True)
        return done.stdout

    agent, port = gw_agent, free_port()
    (tmp_path / "gw_test.txt").write_text("seed gateway test\n")
    uploaded = json.loads(curl("-X", "POST", f"{agent.url}/api/workloads",
                               "-H", "Content-Type: multipart/form-data",
                               "-F", "type=data", "-F", "name=test-file", "-F", "file=@./gw_test.txt"))
    assert uploaded["status"] == "completed"
    data_key = uploaded["data_key"]
    gateway = json.loads(curl("-X", "POST", f"{agent.url}/api/workloads",
                              "-H", "Content-Type: application/json", "-d", json.dumps({
                                  "name": "data-gateway", "type": "datagateway",
                                  "config": {"service_port": port, "service_host": "127.0.0.1",
                                             "base_path": str(agent.state_dir / "data"),
                                             "bucket": "cnet"}})))
    assert gateway["endpoint"] == f"http://127.0.0.1:{port}"
    assert json.loads(curl(f"http://127.0.0.1:{port}/health"))["status"] == "ok"
    listing = curl(f"http://127.0.0.1:{port}/s3/cnet?list-type=2&prefix={data_key}")
    assert f"<Key>{data_key}/gw_test.txt</Key>" in listing
    assert curl(f"http://127.0.0.1:{port}/s3/cnet/{data_key}/gw_test.txt") == "seed gateway test\n"


def test_gateway_of_a_wildcard_agent_answers_at_the_advertised_address(make_agent):
    agent = make_agent(config=deep_merge(FAST_SERVICES, {
        "agent": {"address": "0.0.0.0", "advertise_address": "127.0.0.2"},
        "services": {"port_range": list(free_port_range(11))}}))
    wl = agent.submit({"name": "gw", "type": "datagateway", "config": {}})  # no service_host
    assert wl["status"] == "running"
    assert wl["endpoint"] == f"http://127.0.0.2:{wl['port']}"
    assert requests.get(wl["endpoint"] + "/health", timeout=10).status_code == 200
    assert _keys(wl["endpoint"]) == []
    assert agent.api("GET", "/api/nodes").json()["self"]["address"] == f"http://127.0.0.2:{agent.port}"


# -- S3 at the endpoint, and keys through the agent ------------------------------------------


def _upload(agent, tmp_path, name: str = "gw_test.txt", text: str = "keyed data\n") -> str:
    sample = tmp_path / name
    sample.write_text(text)
    with open(sample, "rb") as f:
        resp = agent.api("POST", "/api/workloads", data={"type": "data", "name": "f"},
                         files={"file": (name, f)})
    assert resp.status_code == 201, resp.text
    return f"{resp.json()['data_key']}/{name}"


def test_endpoint_is_an_s3_endpoint_for_boto3(gw_agent, tmp_path):
    import botocore.exceptions

    from .services.gateway_fixtures import s3_client

    key = _upload(gw_agent, tmp_path)
    wl = gw_agent.submit({"name": "gw", "type": "datagateway", "config": {}})
    assert wl["s3_endpoint"] == wl["endpoint"] == f"http://127.0.0.1:{wl['port']}"
    s3 = s3_client(wl["endpoint"])
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cnet"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="cnet")["Contents"]] == [key]
    assert s3.get_object(Bucket="cnet", Key=key)["Body"].read() == b"keyed data\n"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.head_object(Bucket="cnet", Key=key + ".missing")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # The mount of old keeps working.
    assert s3_client(wl["endpoint"] + "/s3").get_object(Bucket="cnet", Key=key)["Body"].read() \
        == b"keyed data\n"


def _nowhere_holds(agent, wl: dict, secret: str) -> None:
    """The secret is in no API answer, log, command line or database file of the agent."""
    needle = secret.encode()
    for path in (f"/api/workloads/{wl['id']}", "/api/workloads", f"/api/workloads/{wl['id']}/logs"):
        resp = agent.api("GET", path)
        assert resp.status_code == 200 and needle not in resp.content, path
    import psutil

    for pid in {wl["process_pid"], agent.proc.pid}:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            assert secret not in " ".join(proc.cmdline()), proc
            assert secret not in " ".join(f"{k}={v}" for k, v in proc.environ().items())
    state = agent.state_dir
    for path in [agent.output, *state.rglob("*")]:
        if path.is_file() and ".cnet-secrets" not in path.parts:
            assert needle not in path.read_bytes(), path


def test_keys_through_the_agent(gw_agent, tmp_path):
    import botocore.exceptions

    from .services.gateway_fixtures import s3_client

    agent = gw_agent
    key = _upload(agent, tmp_path)
    wl = agent.submit({"name": "gw", "type": "datagateway",
                       "config": {"access_key": ACCESS, "secret_key": SECRET}})
    assert wl["status"] == "running"
    assert wl["config"]["access_key"] == ACCESS
    assert wl["config"]["secret_key"] == "***"
    assert wl["config"]["region"] == "us-east-1"
    signed = s3_client(wl["endpoint"], access_key=ACCESS, secret_key=SECRET)
    assert signed.get_object(Bucket="cnet", Key=key)["Body"].read() == b"keyed data\n"
    assert [o["Key"] for o in signed.list_objects_v2(Bucket="cnet")["Contents"]] == [key]
    for client in (s3_client(wl["endpoint"]),
                   s3_client(wl["endpoint"], access_key=ACCESS, secret_key="***")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket="cnet", Key=key)
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert requests.get(wl["endpoint"] + "/health", timeout=10).json()["auth"] is True
    secret_file = agent.state_dir / ".cnet-secrets" / f"gateway-{wl['id']}.key"
    assert secret_file.read_text() == SECRET
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.parent.stat().st_mode & 0o777 == 0o700
    _nowhere_holds(agent, wl, SECRET)

    # A resubmission with the same id is the same workload (the secret is not compared).
    again = agent.api("POST", "/api/workloads", json={
        "id": wl["id"], "name": "gw", "type": "datagateway",
        "config": {"access_key": ACCESS, "secret_key": SECRET}})
    assert again.status_code == 200, again.text
    assert again.json()["process_pid"] == wl["process_pid"]

    assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    agent.wait_status(wl["id"], "stopped")
    assert not secret_file.exists()


def test_a_keyed_gateway_survives_agent_restart_and_its_own_crash(gw_agent, tmp_path):
    import os
    import signal

    from .service_helpers import wait_restarted
    from .services.gateway_fixtures import s3_client

    agent = gw_agent
    key = _upload(agent, tmp_path)
    wl = agent.submit({"name": "gw", "type": "datagateway",
                       "config": {"access_key": ACCESS, "secret_key": SECRET}})
    agent.terminate()
    signed = s3_client(wl["endpoint"], access_key=ACCESS, secret_key=SECRET)
    assert signed.get_object(Bucket="cnet", Key=key)["Body"].read() == b"keyed data\n"
    agent.start()
    adopted = agent.wait_status(wl["id"], "running")
    assert adopted["process_pid"] == wl["process_pid"]
    os.kill(wl["process_pid"], signal.SIGKILL)
    restarted = wait_restarted(agent, wl["id"], 1, wl["process_pid"])
    assert restarted["endpoint"] == wl["endpoint"]
    wait_for(lambda: requests.get(wl["endpoint"] + "/health", timeout=5).status_code == 200,
             message="the restarted gateway")
    assert signed.get_object(Bucket="cnet", Key=key)["Body"].read() == b"keyed data\n"
    unsigned = requests.get(f"{wl['endpoint']}/cnet/{key}", timeout=10)
    assert unsigned.status_code == 403
    _nowhere_holds(agent, restarted, SECRET)


def test_secret_key_file_through_the_agent(gw_agent, tmp_path):
    from .services.gateway_fixtures import s3_client

    key = _upload(gw_agent, tmp_path)
    secret_file = tmp_path / "gateway.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    wl = gw_agent.submit({"name": "gw", "type": "datagateway", "config": {
        "access_key": ACCESS, "secret_key_file": str(secret_file), "region": "eu-central-1"}})
    assert wl["config"]["secret_key_file"] == str(secret_file)
    assert "secret_key" not in wl["config"]
    signed = s3_client(wl["endpoint"], access_key=ACCESS, secret_key=SECRET,
                       region="eu-central-1")
    assert signed.get_object(Bucket="cnet", Key=key)["Body"].read() == b"keyed data\n"
    assert signed.get_bucket_location(Bucket="cnet")["LocationConstraint"] == "eu-central-1"
    _nowhere_holds(gw_agent, wl, SECRET)


def test_a_secret_key_file_inside_the_served_path_is_refused(gw_agent, tmp_path):
    base = tmp_path / "served"
    base.mkdir()
    (base / "secret.txt").write_text(SECRET)
    resp = gw_agent.api("POST", "/api/workloads", json={
        "name": "gw", "type": "datagateway", "config": {
            "base_path": str(base), "access_key": ACCESS,
            "secret_key_file": str(base / "secret.txt")}})
    assert resp.status_code == 400, resp.text
    assert "served" in resp.json()["error"]["message"]
