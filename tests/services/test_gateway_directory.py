"""The gateway over a plain directory (no ``--index-db``): the scanned index, its incremental
rescans, in-place rewrites noticed on GET, lazy ETags and symlinks."""

from __future__ import annotations

import hashlib
import os

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from tests.harness import wait_for

from .gateway_fixtures import GatewayProcess, s3_client

RESCAN = "0.2"


def md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def listing(s3, prefix: str = "") -> dict[str, tuple[int, str]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="data", Prefix=prefix)
    return {o["Key"]: (o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def tree(tmp_path):
    base = tmp_path / "served"
    files = {"readme.md": b"# hi\n", "photos/2024/cat.jpg": b"\xff\xd8cat",
             "photos/2024/dog.jpg": b"\xff\xd8dog", "empty.bin": b"",
             "\u6570\u636e/\u6587\u4ef6.txt": "\u5185\u5bb9".encode()}
    for key, data in files.items():
        (base / key).parent.mkdir(parents=True, exist_ok=True)
        (base / key).write_bytes(data)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"TOP-SECRET")
    (base / "leak.txt").symlink_to(outside)
    (base / "leakdir").symlink_to(tmp_path)
    (base / "alias.jpg").symlink_to(base / "photos/2024/cat.jpg")
    gateway = GatewayProcess(base, tmp_path, bucket="data",
                             extra_args=("--rescan-interval", RESCAN)).start()
    yield base, files, gateway
    gateway.stop()


def test_scanned_index_lists_and_serves(tree):
    base, files, gateway = tree
    s3 = s3_client(gateway.endpoint)
    expected = {key: (len(data), md5(data)) for key, data in files.items()}
    expected["alias.jpg"] = expected["photos/2024/cat.jpg"]
    assert listing(s3) == expected                     # symlinks out of the base are not listed
    top = s3.list_objects_v2(Bucket="data", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["photos/", "\u6570\u636e/"]
    for key, data in files.items():
        got = s3.get_object(Bucket="data", Key=key)
        assert got["Body"].read() == data
        assert got["ETag"] == md5(data)
    assert s3.head_object(Bucket="data", Key="readme.md")["ContentType"] == "text/markdown"
    for key in ("leak.txt", "leakdir/outside.txt"):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.get_object(Bucket="data", Key=key)
        assert info.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket="data", Key="empty.bin", Range="bytes=0-")
    assert info.value.response["Error"]["Code"] == "InvalidRange"


def test_new_and_removed_files_follow_rescans(tree):
    base, files, gateway = tree
    s3 = s3_client(gateway.endpoint)
    (base / "photos/2025").mkdir()
    (base / "photos/2025/new.jpg").write_bytes(b"new photo")
    (base / "later.txt").write_bytes(b"later")
    wait_for(lambda: {"photos/2025/new.jpg", "later.txt"} <= listing(s3).keys(),
             timeout=10, message="new files in the listing")
    assert listing(s3, "photos/2025/") == {"photos/2025/new.jpg": (9, md5(b"new photo"))}
    assert s3.get_object(Bucket="data", Key="later.txt")["Body"].read() == b"later"

    os.remove(base / "photos/2024/dog.jpg")
    os.rename(base / "later.txt", base / "renamed.txt")
    wait_for(lambda: "photos/2024/dog.jpg" not in listing(s3) and "renamed.txt" in listing(s3),
             timeout=10, message="removal and rename in the listing")
    assert "later.txt" not in listing(s3)
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket="data", Key="photos/2024/dog.jpg")


def test_rewrite_in_place_is_seen_by_get(tree):
    base, files, gateway = tree
    s3 = s3_client(gateway.endpoint)
    path = base / "readme.md"
    with open(path, "r+b") as handle:         # same directory entry: the dir mtime stays
        handle.write(b"# changed and longer\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    head = s3.head_object(Bucket="data", Key="readme.md")
    assert head["ETag"] == md5(b"# changed and longer\n")
    assert head["ContentLength"] == len(b"# changed and longer\n")
    assert listing(s3)["readme.md"] == (len(b"# changed and longer\n"),
                                        md5(b"# changed and longer\n"))


def test_download_file_from_directory(tree, tmp_path):
    base, _, gateway = tree
    data = os.urandom(3 * 1024 * 1024 + 5)
    (base / "large.bin").write_bytes(data)
    s3 = s3_client(gateway.endpoint)
    wait_for(lambda: "large.bin" in listing(s3), timeout=10, message="large.bin listed")
    target = tmp_path / "large.copy"
    s3.download_file("data", "large.bin", str(target),
                     Config=TransferConfig(multipart_threshold=1 << 20, multipart_chunksize=1 << 20))
    assert target.read_bytes() == data


def test_agent_bookkeeping_is_never_an_object(tmp_path):
    """The agent's staging dir and lock files in its data path are neither listed nor served."""
    base = tmp_path / "data"
    (base / "k1").mkdir(parents=True)
    (base / "k1" / "a.txt").write_bytes(b"kept")
    (base / ".cnet-staging" / "up1").mkdir(parents=True)
    (base / ".cnet-staging" / "up1" / "partial.bin").write_bytes(b"half")
    (base / ".cnet.lock").write_text("agent pid 1")
    gateway = GatewayProcess(base, tmp_path, bucket="data").start()
    try:
        s3 = s3_client(gateway.endpoint)
        assert set(listing(s3)) == {"k1/a.txt"}
        for key in (".cnet.lock", ".cnet-staging/up1/partial.bin"):
            with pytest.raises(botocore.exceptions.ClientError):
                s3.get_object(Bucket="data", Key=key)
    finally:
        gateway.stop()
