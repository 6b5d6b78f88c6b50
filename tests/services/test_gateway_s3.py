"""The gateway over an agent database (``--index-db``): the seed's curl examples, boto3 for every
operation, conditional and range requests, S3 errors, refused writes and traversal attempts."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import time
import xml.etree.ElementTree as ET
from email.utils import formatdate

import botocore.exceptions
import pytest
import requests
from boto3.s3.transfer import TransferConfig

from .gateway_fixtures import GatewayProcess, create_agent_db, s3_client, store_object

NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
DATA_KEY = "d0c5a1e2"
BIG_SIZE = 5 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data directory and agent database with a few objects, and a gateway serving them."""
    root = tmp_path_factory.mktemp("gateway")
    base = root / "data"
    base.mkdir()
    conn = create_agent_db(root / "cnet.db")
    objects = {
        f"{DATA_KEY}/gw_test.txt": b"hello from the cnet gateway\n",
        f"{DATA_KEY}/images/a.jpg": b"\xff\xd8jpeg-a",
        f"{DATA_KEY}/images/b.jpg": b"\xff\xd8jpeg-b",
        f"{DATA_KEY}/deep/x/y/z.bin": bytes(range(256)),
        "other/space name+plus.txt": b"odd key",
        "other/\u4e2d\u6587.txt": "\u6c5f\u82cf".encode(),
        "big/blob.bin": os.urandom(BIG_SIZE),
    }
    etags = {key: store_object(conn, base, key, data,
                               content_type="text/plain" if key.endswith(".txt") else
                               "application/octet-stream", last_modified=1_700_000_000.25)
             for key, data in objects.items()}
    secret = root / "secret.txt"
    secret.write_bytes(b"TOP-SECRET")
    (base / DATA_KEY / "escape").symlink_to(secret)
    (base / DATA_KEY / "escape_dir").symlink_to(root)
    for key in (f"{DATA_KEY}/escape", f"{DATA_KEY}/escape_dir/secret.txt"):
        conn.execute("INSERT INTO data_objects VALUES (?, 'wl', ?, 10, 'x', 'y', 'text/plain', 0)",
                     (key, DATA_KEY))
    keys = sorted([*objects, f"{DATA_KEY}/escape", f"{DATA_KEY}/escape_dir/secret.txt"])
    gateway = GatewayProcess(base, root, index_db=root / "cnet.db").start()
    yield {"gateway": gateway, "base": base, "conn": conn, "objects": objects, "etags": etags,
           "keys": keys}
    gateway.stop()
    conn.close()


@pytest.fixture(scope="module")
def s3(world):
    return s3_client(world["gateway"].endpoint)


def raw_get(gateway: GatewayProcess, path: str, headers: dict | None = None,
            method: str = "GET") -> tuple[int, dict, bytes]:
    """A request whose path goes out byte for byte (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def error_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


# -- the seed's curl examples ----------------------------------------------------------------

def test_seed_curl_examples(world):
    url = world["gateway"].url
    health = requests.get(f"{url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["index"] == "database"

    listing = requests.get(f"{url}/s3/cnet?list-type=2&prefix={DATA_KEY}", timeout=5)
    assert listing.status_code == 200
    root = ET.fromstring(listing.content)
    keys = [node.text for node in root.findall("s3:Contents/s3:Key", NS)]
    assert keys == [k for k in world["keys"] if k.startswith(DATA_KEY)]
    assert root.findtext("s3:KeyCount", namespaces=NS) == str(len(keys))
    assert root.findtext("s3:IsTruncated", namespaces=NS) == "false"

    body = requests.get(f"{url}/s3/cnet/{DATA_KEY}/gw_test.txt", timeout=5)
    assert body.status_code == 200
    assert body.content == world["objects"][f"{DATA_KEY}/gw_test.txt"]
    assert body.headers["ETag"] == f'"{world["etags"][f"{DATA_KEY}/gw_test.txt"]}"'


# -- boto3 -----------------------------------------------------------------------------------

def test_boto3_list_buckets_and_location(s3):
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cnet"]
    s3.head_bucket(Bucket="cnet")
    assert s3.get_bucket_location(Bucket="cnet")["LocationConstraint"] is None
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.list_objects_v2(Bucket="nope")
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_boto3_paginator_lists_everything(world, s3):
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="cnet", PaginationConfig={"PageSize": 2}))
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert keys == world["keys"]
    assert len(pages) == (len(keys) + 1) // 2
    first = pages[0]["Contents"][0]
    assert first["Key"] == "big/blob.bin"
    assert first["Size"] == BIG_SIZE
    assert first["ETag"] == f'"{world["etags"]["big/blob.bin"]}"'
    assert first["LastModified"].timestamp() == pytest.approx(1_700_000_000.25)


def test_boto3_paginator_with_delimiter(s3):
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="cnet", Prefix=f"{DATA_KEY}/", Delimiter="/", PaginationConfig={"PageSize": 1}))
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    assert keys == [f"{DATA_KEY}/escape", f"{DATA_KEY}/gw_test.txt"]
    assert prefixes == [f"{DATA_KEY}/deep/", f"{DATA_KEY}/escape_dir/", f"{DATA_KEY}/images/"]
    top = s3.list_objects_v2(Bucket="cnet", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["big/", f"{DATA_KEY}/", "other/"]
    assert "Contents" not in top


def test_boto3_list_v1_and_start_after(s3, world):
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket="cnet",
                                                        PaginationConfig={"PageSize": 3}))
    assert [o["Key"] for page in v1 for o in page.get("Contents", [])] == world["keys"]
    after = s3.list_objects_v2(Bucket="cnet", StartAfter="other/")
    assert [o["Key"] for o in after["Contents"]] == ["other/space name+plus.txt",
                                                     "other/\u4e2d\u6587.txt"]


def test_boto3_odd_keys_roundtrip(s3, world):
    for key in ("other/space name+plus.txt", "other/\u4e2d\u6587.txt"):
        listed = s3.list_objects_v2(Bucket="cnet", Prefix=key)
        assert [o["Key"] for o in listed["Contents"]] == [key]
        assert s3.get_object(Bucket="cnet", Key=key)["Body"].read() == world["objects"][key]


def test_boto3_head_and_get(s3, world):
    key = f"{DATA_KEY}/gw_test.txt"
    head = s3.head_object(Bucket="cnet", Key=key)
    assert head["ContentLength"] == len(world["objects"][key])
    assert head["ETag"] == f'"{world["etags"][key]}"'
    assert head["ContentType"] == "text/plain"
    assert head["AcceptRanges"] == "bytes"
    assert head["LastModified"].timestamp() == 1_700_000_000
    got = s3.get_object(Bucket="cnet", Key=key)
    assert got["Body"].read() == world["objects"][key]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.head_object(Bucket="cnet", Key=f"{DATA_KEY}/missing")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_boto3_get_with_checksum_validation(s3, world):
    key = "big/blob.bin"
    got = s3.get_object(Bucket="cnet", Key=key, ChecksumMode="ENABLED")
    expected = base64.b64encode(hashlib.sha256(world["objects"][key]).digest()).decode()
    assert got["ChecksumSHA256"] == expected
    assert got["Body"].read() == world["objects"][key]     # botocore verifies while reading


def test_boto3_ranges(s3, world):
    data = world["objects"]["big/blob.bin"]
    for spec, expected in (("bytes=0-9", data[:10]), ("bytes=100-", data[100:]),
                           ("bytes=-7", data[-7:]), (f"bytes=10-{BIG_SIZE * 2}", data[10:])):
        got = s3.get_object(Bucket="cnet", Key="big/blob.bin", Range=spec)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["Body"].read() == expected
        assert got["ContentRange"].endswith(f"/{BIG_SIZE}")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="cnet", Key="big/blob.bin", Range=f"bytes={BIG_SIZE}-")
    assert info.value.response["Error"]["Code"] == "InvalidRange"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_boto3_download_file_uses_ranged_gets(s3, world, tmp_path):
    target = tmp_path / "blob.bin"
    config = TransferConfig(multipart_threshold=1024 * 1024, multipart_chunksize=1024 * 1024,
                            max_concurrency=4)
    s3.download_file("cnet", "big/blob.bin", str(target), Config=config)
    assert target.read_bytes() == world["objects"]["big/blob.bin"]
    assert "206 GET /s3/cnet/big/blob.bin" in world["gateway"].log


def test_boto3_writes_refused(s3):
    calls = [lambda: s3.put_object(Bucket="cnet", Key="new.txt", Body=b"x"),
             lambda: s3.put_object(Bucket="cnet", Key="big.bin", Body=b"x" * (5 << 20)),
             lambda: s3.delete_object(Bucket="cnet", Key=f"{DATA_KEY}/gw_test.txt"),
             lambda: s3.create_bucket(Bucket="cnet2"),
             lambda: s3.create_multipart_upload(Bucket="cnet", Key="m")]
    for call in calls:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "MethodNotAllowed"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 405


def test_rows_written_after_start_appear_at_once(world, s3):
    key = f"fresh-{time.monotonic_ns()}/new.txt"
    etag = store_object(world["conn"], world["base"], key, b"just stored")
    listed = s3.list_objects_v2(Bucket="cnet", Prefix=key.split("/")[0])
    assert [(o["Key"], o["ETag"]) for o in listed["Contents"]] == [(key, f'"{etag}"')]
    assert s3.get_object(Bucket="cnet", Key=key)["Body"].read() == b"just stored"
    world["conn"].execute("DELETE FROM data_objects WHERE key = ?", (key,))
    assert "Contents" not in s3.list_objects_v2(Bucket="cnet", Prefix=key.split("/")[0])
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket="cnet", Key=key)          # the file alone is not an object


# -- listing parameters over plain HTTP ------------------------------------------------------

def test_listing_parameters(world):
    url = f"{world['gateway'].url}/s3/cnet"
    page = requests.get(url, params={"list-type": "2", "max-keys": "2"}, timeout=5)
    root = ET.fromstring(page.content)
    assert root.findtext("s3:IsTruncated", namespaces=NS) == "true"
    assert root.findtext("s3:KeyCount", namespaces=NS) == "2"
    token = root.findtext("s3:NextContinuationToken", namespaces=NS)
    nxt = ET.fromstring(requests.get(url, params={"list-type": "2", "max-keys": "1",
                                                  "continuation-token": token}, timeout=5).content)
    assert nxt.findtext("s3:ContinuationToken", namespaces=NS) == token
    assert nxt.findtext("s3:Contents/s3:Key", namespaces=NS) == world["keys"][2]

    encoded = ET.fromstring(requests.get(url, params={"list-type": "2", "prefix": "other/",
                                                      "encoding-type": "url"}, timeout=5).content)
    assert [k.text for k in encoded.findall("s3:Contents/s3:Key", NS)] == [
        "other/space%20name%2Bplus.txt", "other/%E4%B8%AD%E6%96%87.txt"]

    over = ET.fromstring(requests.get(url, params={"list-type": "2", "max-keys": "5000"},
                                      timeout=5).content)
    assert over.findtext("s3:MaxKeys", namespaces=NS) == "1000"

    limit = ET.fromstring(requests.get(url, params={"list-type": "2", "max-keys": "2147483647"},
                                       timeout=5).content)
    assert limit.findtext("s3:MaxKeys", namespaces=NS) == "1000"

    for params in ({"max-keys": "-1"}, {"max-keys": "ten"}, {"max-keys": "2147483648"},
                   {"max-keys": str(2**64)}, {"max-keys": "1e3"}, {"continuation-token": "%%%"},
                   {"continuation-token": base64.urlsafe_b64encode(b"k" * 2000).decode()},
                   {"encoding-type": "base64"}, {"list-type": "3"}):
        bad = requests.get(url, params={"list-type": "2", **params}, timeout=5)
        assert bad.status_code == 400, params
        assert error_code(bad.content) == "InvalidArgument"

    unsupported = requests.get(f"{url}?versioning", timeout=5)
    assert unsupported.status_code == 501
    assert error_code(unsupported.content) == "NotImplemented"


def test_error_document_shape(world):
    response = requests.get(f"{world['gateway'].url}/s3/cnet/{DATA_KEY}/nothing-here", timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(response.content)
    assert root.tag == "Error"
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("Message")
    assert root.findtext("Resource") == f"/s3/cnet/{DATA_KEY}/nothing-here"
    assert root.findtext("RequestId") == response.headers["x-amz-request-id"]


# -- conditional and range requests ----------------------------------------------------------

def test_conditional_requests(world):
    gateway = world["gateway"]
    key = f"{DATA_KEY}/gw_test.txt"
    path = f"/s3/cnet/{key}"
    etag = f'"{world["etags"][key]}"'
    before = formatdate(1_700_000_000 - 60, usegmt=True)
    after = formatdate(1_700_000_000 + 60, usegmt=True)
    exact = formatdate(1_700_000_000, usegmt=True)
    cases = [
        ({"If-None-Match": etag}, 304), ({"If-None-Match": '"other"'}, 200),
        ({"If-None-Match": "*"}, 304), ({"If-Modified-Since": after}, 304),
        ({"If-Modified-Since": exact}, 304), ({"If-Modified-Since": before}, 200),
        ({"If-Match": etag}, 200), ({"If-Match": '"other"'}, 412),
        ({"If-Unmodified-Since": before}, 412), ({"If-Unmodified-Since": after}, 200),
        ({"If-Match": etag, "If-Unmodified-Since": before}, 200),
        ({"If-None-Match": '"other"', "If-Modified-Since": after}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
    ]
    for method in ("GET", "HEAD"):
        for headers, expected in cases:
            status, response_headers, body = raw_get(gateway, path, headers, method)
            assert status == expected, (method, headers)
            if status == 304:
                assert body == b""
                assert response_headers["Etag"] == etag
            if status == 412 and method == "GET":
                assert error_code(body) == "PreconditionFailed"


def test_range_requests(world):
    gateway = world["gateway"]
    data = world["objects"][f"{DATA_KEY}/deep/x/y/z.bin"]
    path = f"/s3/cnet/{DATA_KEY}/deep/x/y/z.bin"
    for spec, start, end in (("bytes=0-0", 0, 0), ("bytes=10-19", 10, 19), ("bytes=250-", 250, 255),
                             ("bytes=-6", 250, 255), ("bytes=-1000", 0, 255),
                             ("bytes=200-999", 200, 255)):
        status, headers, body = raw_get(gateway, path, {"Range": spec})
        assert status == 206, spec
        assert headers["Content-Range"] == f"bytes {start}-{end}/256"
        assert headers["Content-Length"] == str(end - start + 1)
        assert body == data[start:end + 1]
    for spec in ("bytes=256-", "bytes=300-400", "bytes=-0"):
        status, headers, body = raw_get(gateway, path, {"Range": spec})
        assert status == 416, spec
        assert headers["Content-Range"] == "bytes */256"
        assert error_code(body) == "InvalidRange"
    for spec in ("bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=x-y"):
        status, _, body = raw_get(gateway, path, {"Range": spec})
        assert (status, body) == (200, data), spec
    etag = f'"{world["etags"][f"{DATA_KEY}/deep/x/y/z.bin"]}"'
    status, _, body = raw_get(gateway, path, {"Range": "bytes=0-1", "If-Range": etag})
    assert (status, body) == (206, data[:2])
    status, _, body = raw_get(gateway, path, {"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert (status, body) == (200, data)
    status, headers, body = raw_get(gateway, path, {"Range": "bytes=0-9"}, method="HEAD")
    assert (status, headers["Content-Length"], body) == (206, "10", b"")


# -- safety ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/s3/cnet/../secret.txt",
    f"/s3/cnet/{DATA_KEY}/../../secret.txt",
    f"/s3/cnet/{DATA_KEY}/%2e%2e/%2e%2e/secret.txt",
    f"/s3/cnet/{DATA_KEY}/%2E%2E%2F%2E%2E%2Fsecret.txt",
    f"/s3/cnet/{DATA_KEY}/..%2f..%2fsecret.txt",
    "/s3/cnet/%2e%2e%2fsecret.txt",
    "/s3/cnet//etc/passwd",
    "/s3/cnet/%2Fetc%2Fpasswd",
    f"/s3/cnet/{DATA_KEY}/gw_test.txt%00.jpg",
    f"/s3/cnet/{DATA_KEY}/./gw_test.txt",
    f"/s3/cnet/{DATA_KEY}//gw_test.txt",
    f"/s3/cnet/{DATA_KEY}/escape",
    f"/s3/cnet/{DATA_KEY}/escape_dir/secret.txt",
    "/s3/../secret.txt",
    "/s3/%2e%2e/secret.txt",
    "/s3/cnet/%ff%fe",
])
def test_traversal_is_refused(world, path):
    for method in ("GET", "HEAD"):
        status, _, body = raw_get(world["gateway"], path, method=method)
        assert status in (400, 403, 404), (method, path, status)
        assert b"TOP-SECRET" not in body
        if method == "GET":
            assert error_code(body) in ("InvalidArgument", "NoSuchKey", "NoSuchBucket")


def test_symlink_escape_is_not_listed_as_readable(world, s3):
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="cnet", Key=f"{DATA_KEY}/escape")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"


def test_write_methods_refused_raw(world):
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        status, headers, body = raw_get(world["gateway"], f"/s3/cnet/{DATA_KEY}/gw_test.txt",
                                        method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
        assert error_code(body) == "MethodNotAllowed"
    assert (world["base"] / DATA_KEY / "gw_test.txt").read_bytes() == \
        world["objects"][f"{DATA_KEY}/gw_test.txt"]


def test_unknown_paths_are_s3_errors(world):
    for path in ("/nothing", "/s3/nothing/key", "/favicon.ico"):
        response = requests.get(f"{world['gateway'].url}{path}", timeout=5)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == "application/xml"
        assert error_code(response.content) == "NoSuchBucket"


# -- owner and ACLs --------------------------------------------------------------------------

def owners(body: bytes) -> list[tuple[str, str]]:
    root = ET.fromstring(body)
    return [(node.findtext("s3:ID", namespaces=NS), node.findtext("s3:DisplayName", namespaces=NS))
            for node in root.findall("s3:Contents/s3:Owner", NS)]


def test_owner_in_listings(world, s3):
    url = f"{world['gateway'].url}/cnet"
    prefix = {"prefix": f"{DATA_KEY}/images/"}
    assert owners(requests.get(url, params={"list-type": "2", **prefix}, timeout=5).content) == []
    fetched = requests.get(url, params={"list-type": "2", "fetch-owner": "true", **prefix},
                           timeout=5)
    assert owners(fetched.content) == [("cnet", "cnet")] * 2
    v1 = requests.get(url, params=prefix, timeout=5)
    assert owners(v1.content) == [("cnet", "cnet")] * 2
    listed = s3.list_objects_v2(Bucket="cnet", FetchOwner=True, **{"Prefix": prefix["prefix"]})
    assert [o["Owner"] for o in listed["Contents"]] == [{"ID": "cnet", "DisplayName": "cnet"}] * 2
    assert s3.list_objects(Bucket="cnet", Prefix=prefix["prefix"])["Contents"][0]["Owner"] == \
        {"ID": "cnet", "DisplayName": "cnet"}
    assert s3.list_buckets()["Owner"] == {"ID": "cnet", "DisplayName": "cnet"}


def test_acls_are_canned_read_only(world, s3):
    for acl in (s3.get_bucket_acl(Bucket="cnet"),
                s3.get_object_acl(Bucket="cnet", Key=f"{DATA_KEY}/gw_test.txt")):
        assert acl["Owner"] == {"ID": "cnet", "DisplayName": "cnet"}
        grants = {(g["Grantee"]["Type"], g["Grantee"].get("ID") or g["Grantee"].get("URI"),
                   g["Permission"]) for g in acl["Grants"]}
        assert grants == {("CanonicalUser", "cnet", "READ"),
                          ("Group", "http://acs.amazonaws.com/groups/global/AllUsers", "READ")}
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object_acl(Bucket="cnet", Key=f"{DATA_KEY}/missing")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    for call in (lambda: s3.put_bucket_acl(Bucket="cnet", ACL="private"),
                 lambda: s3.put_object_acl(Bucket="cnet", Key=f"{DATA_KEY}/gw_test.txt",
                                           ACL="private")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "MethodNotAllowed"


def test_owner_is_configurable(tmp_path):
    base = tmp_path / "data"
    (base / "k").mkdir(parents=True)
    (base / "k" / "f.txt").write_bytes(b"x")
    gateway = GatewayProcess(base, tmp_path, extra_args=(
        "--owner-id", "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",
        "--owner-name", "ops@example")).start()
    try:
        s3 = s3_client(gateway.url)
        expected = {"ID": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",
                    "DisplayName": "ops@example"}
        assert s3.list_objects_v2(Bucket="cnet", FetchOwner=True)["Contents"][0]["Owner"] == \
            expected
        assert s3.get_bucket_acl(Bucket="cnet")["Owner"] == expected
        assert s3.list_buckets()["Owner"] == expected
    finally:
        gateway.stop()
