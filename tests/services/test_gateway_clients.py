"""Real S3 clients against the ``endpoint`` of datagateway workloads, as the agent returns it:
aws-cli (v1 and v2 where installed), rclone and s3cmd (Debian packages ``awscli``, ``rclone``,
``s3cmd``; a test whose binary is absent is skipped), and boto3, each unsigned against an open
gateway and SigV4-signed against one started with keys. The commands are the README's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.harness import AgentProcess, deep_merge, free_port_range
from tests.service_helpers import FAST_SERVICES

from .gateway_fixtures import s3_client

ACCESS, SECRET = "GWCLIENTKEY", "client/secret+KEY=1"
FILES = {"gw_test.txt": b"hello from cnet\n", "photos/cat one.jpg": b"\xff\xd8cat",
         "photos/dog.jpg": b"\xff\xd8dog"}
RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    agent = AgentProcess(root, "jiangsu", deep_merge(
        FAST_SERVICES, {"services": {"port_range": list(free_port_range(11))}})).start()
    yield agent
    agent.cleanup()


@pytest.fixture(scope="module")
def data_key(agent, tmp_path_factory) -> str:
    """One data upload of FILES (a directory, with relative paths)."""
    src = tmp_path_factory.mktemp("upload")
    files = []
    for name, body in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(body)
        files.append(("file", (name, open(src / name, "rb"))))
    try:
        resp = agent.api("POST", "/api/workloads", data={"type": "data", "name": "photos"},
                         files=files)
    finally:
        for _field, (_name, handle) in files:
            handle.close()
    assert resp.status_code == 201, resp.text
    return resp.json()["data_key"]


@pytest.fixture(scope="module")
def gateways(agent, data_key) -> dict[str, dict]:
    """An open and a keyed datagateway workload over this node's data."""
    open_gw = agent.submit({"name": "open-gw", "type": "datagateway", "config": {}})
    keyed = agent.submit({"name": "keyed-gw", "type": "datagateway",
                          "config": {"access_key": ACCESS, "secret_key": SECRET}})
    for wl in (open_gw, keyed):
        assert wl["status"] == "running" and wl["s3_endpoint"] == wl["endpoint"]
    return {"open": open_gw, "keyed": keyed}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No AWS or rclone settings of this machine (a CA bundle, a profile) leak into a client."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RCLONE_", "S3CMD"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
            "RCLONE_CONFIG": str(home / "none.conf"), **extra}


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


DEBIAN = {"aws": "awscli", "rclone": "rclone", "s3cmd": "s3cmd"}


def binary(name: str) -> str:
    """The client's path (``name`` a program or a path), or skip the test saying what is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {DEBIAN[os.path.basename(name)]})")
    return path


def aws_binaries() -> list[str]:
    """Every distinct aws-cli on this machine: the one on PATH and Debian's."""
    found = []
    for path in (shutil.which("aws"), "/usr/bin/aws"):
        if path and os.path.isfile(path) and os.path.realpath(path) not in map(
                os.path.realpath, found):
            found.append(path)
    return found or ["aws"]


# -- aws-cli ---------------------------------------------------------------------------------

@pytest.mark.parametrize("aws", aws_binaries())
@pytest.mark.parametrize("which", ["open", "keyed"])
def test_aws_cli(gateways, data_key, tmp_path, aws, which):
    aws = binary(aws)
    wl = gateways[which]
    if which == "open":
        env, auth = clean_env(tmp_path / "home"), ["--no-sign-request"]
    else:
        env, auth = clean_env(tmp_path / "home", AWS_ACCESS_KEY_ID=ACCESS,
                              AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1"), []
    base = [aws, "--endpoint-url", wl["endpoint"], "--region", "us-east-1", *auth]
    listed = run([*base, "s3", "ls", "--recursive", f"s3://cnet/{data_key}/"], env, tmp_path)
    assert {line.split(None, 3)[3] for line in listed.splitlines()} == \
        {f"{data_key}/{name}" for name in FILES}
    assert run([*base, "s3", "cp", f"s3://cnet/{data_key}/gw_test.txt", "-"], env, tmp_path) \
        == FILES["gw_test.txt"].decode()
    run([*base, "s3", "sync", f"s3://cnet/{data_key}/photos", "photos"], env, tmp_path)
    assert (tmp_path / "photos" / "cat one.jpg").read_bytes() == FILES["photos/cat one.jpg"]
    head = json.loads(run([*base, "s3api", "head-object", "--bucket", "cnet", "--key",
                           f"{data_key}/photos/dog.jpg"], env, tmp_path))
    assert head["ContentLength"] == len(FILES["photos/dog.jpg"])
    acl = json.loads(run([*base, "s3api", "get-bucket-acl", "--bucket", "cnet"], env, tmp_path))
    assert acl["Owner"] == {"DisplayName": "cnet", "ID": "cnet"}
    if which == "keyed":
        refused = subprocess.run([aws, "--endpoint-url", wl["endpoint"], "--no-sign-request",
                                  "s3", "ls", "s3://cnet/"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert refused.returncode != 0 and "AccessDenied" in refused.stderr


def test_aws_cli_presign(gateways, data_key, tmp_path):
    """aws-cli v2 presigns with SigV4 (the URL works); v1 with SigV2 (refused, saying so)."""
    wl = gateways["keyed"]
    env = clean_env(tmp_path / "home", AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
                    AWS_DEFAULT_REGION="us-east-1")
    for aws in map(binary, aws_binaries()):
        url = run([aws, "--endpoint-url", wl["endpoint"], "s3", "presign",
                   f"s3://cnet/{data_key}/gw_test.txt"], env, tmp_path).strip()
        response = requests.get(url, timeout=10)
        if "X-Amz-Signature=" in url:
            assert (response.status_code, response.content) == (200, FILES["gw_test.txt"])
        else:
            assert response.status_code == 403
            assert b"Signature Version 2 is not supported" in response.content


# -- rclone ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["open", "keyed"])
def test_rclone(gateways, data_key, tmp_path, which):
    rclone = binary("rclone")
    wl = gateways[which]
    keys = {"RCLONE_CONFIG_GW_ACCESS_KEY_ID": ACCESS,
            "RCLONE_CONFIG_GW_SECRET_ACCESS_KEY": SECRET} if which == "keyed" else {}
    env = clean_env(tmp_path / "home", RCLONE_CONFIG_GW_TYPE="s3",
                    RCLONE_CONFIG_GW_PROVIDER="Other", RCLONE_CONFIG_GW_ENDPOINT=wl["endpoint"],
                    **keys)
    listed = run([rclone, "lsf", "-R", "--files-only", f"gw:cnet/{data_key}"], env, tmp_path)
    assert sorted(listed.splitlines()) == sorted(FILES)
    assert run([rclone, "cat", f"gw:cnet/{data_key}/gw_test.txt"], env, tmp_path) == \
        FILES["gw_test.txt"].decode()
    run([rclone, "copy", f"gw:cnet/{data_key}", "copy"], env, tmp_path)
    for name, body in FILES.items():
        assert (tmp_path / "copy" / name).read_bytes() == body
    run([rclone, "check", f"gw:cnet/{data_key}", "copy"], env, tmp_path)


# -- s3cmd -----------------------------------------------------------------------------------

def s3cmd_config(path: Path, endpoint: str, *, sigv2: bool = False) -> Path:
    host = endpoint.removeprefix("http://")
    path.write_text(f"[default]\naccess_key = {ACCESS}\nsecret_key = {SECRET}\n"
                    f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\n"
                    f"bucket_location = us-east-1\nsignature_v2 = {sigv2}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("which", ["open", "keyed"])
def test_s3cmd(gateways, data_key, tmp_path, which):
    s3cmd = binary("s3cmd")
    wl = gateways[which]
    env = clean_env(tmp_path / "home")
    base = [s3cmd, "-c", str(s3cmd_config(tmp_path / "s3cfg", wl["endpoint"]))]
    listed = run([*base, "ls", "-r", f"s3://cnet/{data_key}/"], env, tmp_path)
    assert {line.split("s3://", 1)[1] for line in listed.splitlines()} == \
        {f"cnet/{data_key}/{name}" for name in FILES}
    run([*base, "get", "--force", f"s3://cnet/{data_key}/photos/cat one.jpg", "cat.jpg"],
        env, tmp_path)
    assert (tmp_path / "cat.jpg").read_bytes() == FILES["photos/cat one.jpg"]
    info = run([*base, "info", f"s3://cnet/{data_key}/gw_test.txt"], env, tmp_path)
    assert "cnet: READ" in info
    run([*base, "sync", f"s3://cnet/{data_key}/", "synced/"], env, tmp_path)
    assert (tmp_path / "synced" / "photos" / "dog.jpg").read_bytes() == FILES["photos/dog.jpg"]
    if which == "keyed":
        sigv2 = [s3cmd, "-c", str(s3cmd_config(tmp_path / "s3cfg2", wl["endpoint"], sigv2=True))]
        refused = subprocess.run([*sigv2, "ls", f"s3://cnet/{data_key}/"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert refused.returncode != 0
        assert "Signature Version 2 is not supported" in refused.stderr + refused.stdout
        url = run([*base, "signurl", f"s3://cnet/{data_key}/gw_test.txt", "+300"], env,
                  tmp_path).strip()
        assert b"Signature Version 2" in requests.get(url, timeout=10).content


# -- boto3 -----------------------------------------------------------------------------------

def test_boto3(gateways, data_key, tmp_path):
    import botocore.exceptions

    unsigned = s3_client(gateways["open"]["endpoint"])
    signed = s3_client(gateways["keyed"]["endpoint"], access_key=ACCESS, secret_key=SECRET)
    for s3 in (unsigned, signed):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket="cnet", Prefix=f"{data_key}/", PaginationConfig={"PageSize": 1})
        assert sorted(o["Key"] for page in pages for o in page.get("Contents", [])) == \
            sorted(f"{data_key}/{name}" for name in FILES)
        s3.download_file("cnet", f"{data_key}/photos/cat one.jpg", str(tmp_path / "cat.jpg"))
        assert (tmp_path / "cat.jpg").read_bytes() == FILES["photos/cat one.jpg"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3_client(gateways["keyed"]["endpoint"]).list_objects_v2(Bucket="cnet")
    assert info.value.response["Error"]["Code"] == "AccessDenied"
