"""SigV4 on the gateway: AWS's published example, boto3-signed requests and presigned URLs
accepted; unsigned, wrongly signed, out-of-scope and expired requests refused (AccessDenied)."""

from __future__ import annotations

import calendar
import xml.etree.ElementTree as ET

import botocore.exceptions
import pytest
import requests

from services.gateway.sigv4 import Credentials, SignatureError, verify_request

from .gateway_fixtures import GatewayProcess, create_agent_db, s3_client, store_object

ACCESS, SECRET = "GWTESTACCESSKEY", "gw/test+secret/KEY"

# docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html, "GET Object".
AWS_EXAMPLE = {
    "creds": Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    "headers": {
        "host": ["examplebucket.s3.amazonaws.com"], "range": ["bytes=0-9"],
        "x-amz-content-sha256": [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
        "x-amz-date": ["20130524T000000Z"],
        "authorization": [
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"]},
    "now": calendar.timegm((2013, 5, 24, 0, 5, 0)),
}


def test_aws_published_example_verifies():
    verify_request(AWS_EXAMPLE["creds"], method="GET", raw_path="/test.txt", query=[],
                   headers=AWS_EXAMPLE["headers"], now=AWS_EXAMPLE["now"])


@pytest.mark.parametrize("change", ["path", "range", "secret", "clock", "region"])
def test_aws_example_altered_is_refused(change):
    creds, headers = AWS_EXAMPLE["creds"], dict(AWS_EXAMPLE["headers"])
    path, now = "/test.txt", AWS_EXAMPLE["now"]
    if change == "path":
        path = "/test.txt2"
    elif change == "range":
        headers["range"] = ["bytes=0-10"]
    elif change == "secret":
        creds = Credentials(creds.access_key, "wrong")
    elif change == "clock":
        now += 3600
    elif change == "region":
        creds = Credentials(creds.access_key, creds.secret_key, region="eu-west-1")
    with pytest.raises(SignatureError):
        verify_request(creds, method="GET", raw_path=path, query=[], headers=headers, now=now)


@pytest.fixture(scope="module")
def signed_gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigv4")
    base = root / "data"
    conn = create_agent_db(root / "cnet.db")
    store_object(conn, base, "k1/gw_test.txt", b"signed content")
    store_object(conn, base, "k1/dir/odd name~(1).txt", b"odd")
    gateway = GatewayProcess(base, root, index_db=root / "cnet.db", extra_args=(
        "--access-key", ACCESS, "--secret-key", SECRET, "--region", "us-east-1")).start()
    yield gateway
    gateway.stop()
    conn.close()


def access_denied(call) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    if error["Error"].get("Code") != "403":                 # HEAD errors carry no body
        assert error["Error"]["Code"] == "AccessDenied"


def test_boto3_signed_requests_work(signed_gateway, tmp_path):
    s3 = s3_client(signed_gateway.endpoint, access_key=ACCESS, secret_key=SECRET)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cnet"]
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket="cnet", Prefix="k1/", Delimiter="/", PaginationConfig={"PageSize": 1})
    entries = [(o["Key"] if "Key" in o else o["Prefix"]) for page in pages
               for o in page.get("Contents", []) + page.get("CommonPrefixes", [])]
    assert entries == ["k1/dir/", "k1/gw_test.txt"]
    assert s3.head_object(Bucket="cnet", Key="k1/gw_test.txt")["ContentLength"] == 14
    ranged = s3.get_object(Bucket="cnet", Key="k1/gw_test.txt", Range="bytes=0-5")
    assert ranged["Body"].read() == b"signed"
    assert s3.get_object(Bucket="cnet", Key="k1/dir/odd name~(1).txt")["Body"].read() == b"odd"
    s3.download_file("cnet", "k1/gw_test.txt", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == b"signed content"


def test_unsigned_and_wrongly_signed_are_refused(signed_gateway):
    anonymous = s3_client(signed_gateway.endpoint)
    wrong = s3_client(signed_gateway.endpoint, access_key=ACCESS, secret_key="not-the-secret")
    stranger = s3_client(signed_gateway.endpoint, access_key="SOMEONEELSE", secret_key=SECRET)
    elsewhere = s3_client(signed_gateway.endpoint, access_key=ACCESS, secret_key=SECRET,
                          region="eu-central-1")
    for client in (anonymous, wrong, stranger, elsewhere):
        access_denied(lambda c=client: c.list_objects_v2(Bucket="cnet"))
        access_denied(lambda c=client: c.get_object(Bucket="cnet", Key="k1/gw_test.txt"))
        access_denied(lambda c=client: c.head_object(Bucket="cnet", Key="k1/gw_test.txt"))
    response = requests.get(f"{signed_gateway.endpoint}/cnet/k1/gw_test.txt", timeout=5)
    assert response.status_code == 403
    assert ET.fromstring(response.content).findtext("Code") == "AccessDenied"
    assert b"signed content" not in response.content
    assert requests.get(f"{signed_gateway.url}/health", timeout=5).status_code == 200


def test_presigned_urls(signed_gateway):
    s3 = s3_client(signed_gateway.endpoint, access_key=ACCESS, secret_key=SECRET)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "cnet",
                                                          "Key": "k1/gw_test.txt"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in url
    response = requests.get(url, timeout=5)
    assert (response.status_code, response.content) == (200, b"signed content")
    ranged = requests.get(url, headers={"Range": "bytes=7-"}, timeout=5)   # unsigned header: fine
    assert (ranged.status_code, ranged.content) == (206, b"content")
    tampered = url.replace("k1/gw_test.txt", "k1/dir/odd%20name~%281%29.txt")
    assert requests.get(tampered, timeout=5).status_code == 403
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert requests.get(forged, timeout=5).status_code == 403
    listing = s3.generate_presigned_url("list_objects_v2", Params={"Bucket": "cnet",
                                                                   "Prefix": "k1/"})
    assert b"k1/gw_test.txt" in requests.get(listing, timeout=5).content


def test_presigned_expiry_is_enforced():
    creds = Credentials(ACCESS, SECRET)
    query = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
             ("X-Amz-Credential", f"{ACCESS}/20240101/us-east-1/s3/aws4_request"),
             ("X-Amz-Date", "20240101T000000Z"), ("X-Amz-Expires", "60"),
             ("X-Amz-SignedHeaders", "host"), ("X-Amz-Signature", "0" * 64)]
    headers = {"host": ["127.0.0.1"]}
    with pytest.raises(SignatureError, match="expired"):
        verify_request(creds, method="GET", raw_path="/s3/cnet/k", query=query, headers=headers,
                       now=calendar.timegm((2024, 1, 1, 0, 2, 0)))
    with pytest.raises(SignatureError, match="does not match"):
        verify_request(creds, method="GET", raw_path="/s3/cnet/k", query=query, headers=headers,
                       now=calendar.timegm((2024, 1, 1, 0, 0, 30)))


# -- at the root, SigV2, and the secret from a file ------------------------------------------

def test_signed_requests_at_the_root(signed_gateway):
    s3 = s3_client(signed_gateway.url, access_key=ACCESS, secret_key=SECRET)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cnet"]
    assert s3.get_object(Bucket="cnet", Key="k1/dir/odd name~(1).txt")["Body"].read() == b"odd"
    assert s3.get_bucket_acl(Bucket="cnet")["Grants"] == [{
        "Grantee": {"ID": "cnet", "DisplayName": "cnet", "Type": "CanonicalUser"},
        "Permission": "READ"}]
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "cnet",
                                                          "Key": "k1/gw_test.txt"})
    assert url.startswith(f"{signed_gateway.url}/cnet/")
    assert requests.get(url, timeout=5).content == b"signed content"
    access_denied(lambda: s3_client(signed_gateway.url).get_object(Bucket="cnet",
                                                                  Key="k1/gw_test.txt"))


def _sigv2_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                        config=Config(signature_version="s3", retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))


@pytest.mark.parametrize("mount", ["", "/s3"])
def test_sigv2_is_refused_as_unsupported(signed_gateway, mount):
    endpoint = signed_gateway.url + mount
    v2 = _sigv2_client(endpoint)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        v2.get_object(Bucket="cnet", Key="k1/gw_test.txt")
    error = info.value.response["Error"]
    assert error["Code"] == "AccessDenied"
    assert "Signature Version 2 is not supported" in error["Message"]
    url = v2.generate_presigned_url("get_object", Params={"Bucket": "cnet",
                                                          "Key": "k1/gw_test.txt"})
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    for response in (requests.get(url, timeout=5),
                     requests.get(f"{endpoint}/cnet/k1/gw_test.txt", timeout=5,
                                  headers={"Authorization": f"AWS {ACCESS}:c2lnbmF0dXJl"})):
        assert response.status_code == 403
        root = ET.fromstring(response.content)
        assert root.findtext("Code") == "AccessDenied"
        assert "Signature Version 4" in root.findtext("Message")
        assert b"signed content" not in response.content


def test_is_sigv2():
    from services.gateway.sigv4 import is_sigv2

    assert is_sigv2([], {"authorization": ["AWS AK:sig"]})
    assert is_sigv2([("AWSAccessKeyId", "AK"), ("Expires", "1"), ("Signature", "s")], {})
    assert not is_sigv2([], {"authorization": ["AWS4-HMAC-SHA256 Credential=..."]})
    assert not is_sigv2([("X-Amz-Signature", "s")], {})


def test_an_open_gateway_serves_whatever_the_signature(tmp_path):
    base = tmp_path / "data"
    (base / "k").mkdir(parents=True)
    (base / "k" / "f.txt").write_bytes(b"open")
    gateway = GatewayProcess(base, tmp_path).start()
    try:
        assert _sigv2_client(gateway.url).get_object(Bucket="cnet", Key="k/f.txt")[
            "Body"].read() == b"open"
    finally:
        gateway.stop()


def test_secret_key_file(tmp_path):
    base = tmp_path / "data"
    (base / "k").mkdir(parents=True)
    (base / "k" / "f.txt").write_bytes(b"from a file")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    gateway = GatewayProcess(base, tmp_path, extra_args=(
        "--access-key", ACCESS, "--secret-key-file", str(secret_file))).start()
    try:
        assert SECRET not in " ".join(gateway.args)
        s3 = s3_client(gateway.url, access_key=ACCESS, secret_key=SECRET)
        assert s3.get_object(Bucket="cnet", Key="k/f.txt")["Body"].read() == b"from a file"
        access_denied(lambda: s3_client(gateway.url, access_key=ACCESS, secret_key=SECRET + "\n")
                      .get_object(Bucket="cnet", Key="k/f.txt"))
        assert SECRET not in gateway.log
    finally:
        gateway.stop()


@pytest.mark.parametrize("where, ok", [("base/secret", False), ("base/k/secret", False),
                                       ("base/.cnet-secrets/secret", True), ("empty", False),
                                       ("missing", False)])
def test_secret_key_file_checks(tmp_path, where, ok):
    import subprocess
    import sys

    from tests.harness import REPO

    base = tmp_path / "base"
    (base / "k").mkdir(parents=True)
    path = tmp_path / where
    if where != "missing":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("" if where == "empty" else SECRET)
    args = [sys.executable, "-m", "services.gateway.main", "--base-path", str(base),
            "--access-key", ACCESS, "--secret-key-file", str(path), "--port", "0"]
    if ok:
        from services.gateway.main import parse_args

        assert parse_args(args[3:]).secret_key == SECRET
        return
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--secret-key-file" in done.stderr
    assert SECRET not in done.stderr
