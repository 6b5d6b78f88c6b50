"""S3 at the gateway's root as well as under ``/s3`` (boto3 with ``endpoint_url`` the bare
``http://host:port``), beside the gateway's own ``/health``, ``/info`` and ``/metrics``, also
when the bucket has one of their names."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import requests

from .gateway_fixtures import GatewayProcess, create_agent_db, s3_client, store_object

NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
OBJECTS = {"k1/a.txt": b"root a", "k1/sub/b.bin": b"\x00\x01b", "k2/c d+e.txt": b"odd key"}


def _world(root, bucket: str) -> GatewayProcess:
    base = root / "data"
    base.mkdir()
    conn = create_agent_db(root / "cnet.db")
    for key, data in OBJECTS.items():
        store_object(conn, base, key, data)
    conn.close()
    return GatewayProcess(base, root, bucket=bucket, index_db=root / "cnet.db").start()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = _world(tmp_path_factory.mktemp("root"), "cnet")
    yield gw
    gw.stop()


@pytest.mark.parametrize("mount", ["", "/s3"])
def test_boto3_at_the_root_and_under_s3(gateway, mount, tmp_path):
    s3 = s3_client(gateway.url + mount)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cnet"]
    s3.head_bucket(Bucket="cnet")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="cnet",
                                                        PaginationConfig={"PageSize": 1})
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == sorted(OBJECTS)
    v1 = s3.list_objects(Bucket="cnet", Prefix="k1/", Delimiter="/")
    assert [o["Key"] for o in v1["Contents"]] == ["k1/a.txt"]
    assert [p["Prefix"] for p in v1["CommonPrefixes"]] == ["k1/sub/"]
    for key, data in OBJECTS.items():
        assert s3.get_object(Bucket="cnet", Key=key)["Body"].read() == data
        assert s3.head_object(Bucket="cnet", Key=key)["ContentLength"] == len(data)
    assert s3.get_object(Bucket="cnet", Key="k1/a.txt", Range="bytes=1-3")["Body"].read() == b"oot"
    s3.download_file("cnet", "k2/c d+e.txt", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == b"odd key"


def test_root_paths_over_plain_http(gateway):
    listing = requests.get(f"{gateway.url}/cnet?list-type=2&prefix=k1/", timeout=5)
    assert listing.status_code == 200
    keys = [k.text for k in ET.fromstring(listing.content).findall("s3:Contents/s3:Key", NS)]
    assert keys == ["k1/a.txt", "k1/sub/b.bin"]
    assert requests.get(f"{gateway.url}/cnet/k1/a.txt", timeout=5).content == b"root a"
    assert requests.get(f"{gateway.url}/cnet/k2/c%20d%2Be.txt", timeout=5).content == b"odd key"
    service = ET.fromstring(requests.get(f"{gateway.url}/", timeout=5).content)
    assert service.findtext("s3:Buckets/s3:Bucket/s3:Name", namespaces=NS) == "cnet"


def test_own_endpoints(gateway):
    health = requests.get(f"{gateway.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["bucket"] == "cnet"
    info = requests.get(f"{gateway.url}/info", timeout=5).json()
    assert info["s3_paths"] == ["/", "/s3/"]
    assert info["auth"] == "none" and info["read_only"] is True
    requests.get(f"{gateway.url}/cnet/k1/a.txt", timeout=5)
    requests.get(f"{gateway.url}/cnet/missing", timeout=5)
    metrics = requests.get(f"{gateway.url}/metrics", timeout=5)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    lines = metrics.text.splitlines()
    assert any(line.startswith('cnet_gateway_requests_total{method="GET",code="404"} ')
               for line in lines)
    assert "cnet_gateway_objects 3" in lines
    sent = [line for line in lines if line.startswith("cnet_gateway_object_bytes_sent_total ")]
    assert int(sent[0].split()[1]) >= len(b"root a")


@pytest.mark.parametrize("bucket", ["health", "info", "metrics"])
def test_a_bucket_named_like_an_own_endpoint(tmp_path, bucket):
    """The plain unsigned GET of the path is the gateway's own; every S3 request is the bucket's."""
    gw = _world(tmp_path, bucket)
    try:
        own = requests.get(f"{gw.url}/{bucket}", timeout=5)
        assert own.status_code == 200
        assert own.headers["Content-Type"].startswith(("application/json", "text/plain"))
        for mount in ("", "/s3"):
            s3 = s3_client(gw.url + mount)
            s3.head_bucket(Bucket=bucket)
            assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == \
                sorted(OBJECTS)
            assert [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]] == \
                sorted(OBJECTS)
            assert s3.get_object(Bucket=bucket, Key="k1/a.txt")["Body"].read() == b"root a"
        slash = requests.get(f"{gw.url}/{bucket}/", timeout=5)
        assert slash.headers["Content-Type"] == "application/xml"
        assert requests.get(f"{gw.url}/health", timeout=5).json()["bucket"] == bucket
    finally:
        gw.stop()
