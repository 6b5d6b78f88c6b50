"""Data workloads on real agents: multipart uploads (file, directory), checksums, storage
accounting, limits, unsafe filenames, malformed bodies, aborted uploads and delete."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
import requests

from .harness import wait_for

BOUNDARY = "cnettestboundary0f3c9a"


# -- helpers ---------------------------------------------------------------------------------

def field(name: str, value: str) -> tuple:
    return ("field", name, value.encode())


def filepart(filename: bytes | str, content: bytes, name: str = "file",
             content_type: str | None = "application/octet-stream") -> tuple:
    raw = filename.encode() if isinstance(filename, str) else filename
    return ("file", name, raw, content, content_type)


def multipart(*parts: tuple, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body built byte by byte, so no client can tidy the filenames."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if part[0] == "field":
            _, name, value = part
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value
        else:
            _, name, filename, content, ctype = part
            out += f'Content-Disposition: form-data; name="{name}"; filename="'.encode()
            out += filename + b'"\r\n'
            if ctype:
                out += f"Content-Type: {ctype}\r\n".encode()
            out += b"\r\n" + content
        out += b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post_raw(agent, body: bytes, content_type: str | None = None) -> requests.Response:
    ctype = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return agent.api("POST", "/api/workloads", data=body, headers={"Content-Type": ctype})


def upload(agent, name: str, files: list[tuple[str, bytes]], expect: int = 201) -> dict:
    resp = agent.api("POST", "/api/workloads", data={"type": "data", "name": name},
                     files=[("file", (path, content)) for path, content in files])
    assert resp.status_code == expect, resp.text
    return resp.json()


def data_dir(agent) -> Path:
    return agent.state_dir / "data"


def staging(agent) -> list[Path]:
    root = data_dir(agent) / ".cnet-staging"
    return sorted(root.rglob("*")) if root.exists() else []


def objects(agent, workload_id: str | None = None) -> list[dict]:
    with sqlite3.connect(f"file:{agent.state_dir / 'cnet.db'}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        query = "SELECT * FROM data_objects"
        rows = conn.execute(query + (" WHERE workload_id = ?" if workload_id else ""),
                            (workload_id,) if workload_id else ()).fetchall()
    return sorted((dict(r) for r in rows), key=lambda r: r["key"])


def stored_dirs(agent) -> list[str]:
    return sorted(p.name for p in data_dir(agent).iterdir()
                  if p.is_dir() and p.name != ".cnet-staging")


def assert_error(resp: requests.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_nothing_kept(agent, storage: int = 0, workloads: int = 0) -> None:
    """No half object, no record, no reservation (waits: cleanup may run after the reply)."""
    def settled():
        return (agent.resources()["allocated"]["storage"] == storage and not staging(agent)
                and len(agent.api("GET", "/api/workloads?type=data").json()["workloads"])
                == workloads)
    wait_for(settled, timeout=15, message="the upload to leave nothing behind")
    assert len(stored_dirs(agent)) == workloads
    assert len({o["workload_id"] for o in objects(agent)}) == workloads


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawUpload:
    """A hand-driven HTTP upload on a socket: send part of a body, then stop or close."""

    def __init__(self, agent, headers: dict[str, str]):
        self.sock = socket.create_connection(("127.0.0.1", agent.port), timeout=30)
        head = "POST /api/workloads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.sock.sendall(head.encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_chunk(self, data: bytes) -> None:
        self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def response(self, timeout: float = 15) -> tuple[int, dict]:
        """Wait for the reply the agent sends before the body is complete."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, "no response from the agent"
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw) < raw.index(b"\r\n\r\n") + 4 + _length(raw):
            more = self.sock.recv(65536)
            if not more:
                break
            raw += more
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def close(self) -> None:
        self.sock.close()


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return int(value)
    return 0


# -- uploads ---------------------------------------------------------------------------------

def test_seed_data_example_verbatim(agent, tmp_path):
    """The seed's data `curl` example, run with real curl."""
    content = b"hello from the gateway test\n" * 100
    (tmp_path / "gw_test.txt").write_bytes(content)
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{agent.url}/api/workloads",
         "-H", "Content-Type: multipart/form-data",
         "-F", "type=data", "-F", "name=test-file", "-F", "file=@./gw_test.txt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    wl = json.loads(out.stdout)
    assert wl["status"] == "completed" and wl["type"] == "data" and wl["name"] == "test-file"
    assert wl["node_id"] == agent.node_id and wl["size"] == len(content)
    assert wl["data_key"].startswith("test-file-") and wl["id"] in wl["data_key"]
    assert wl["path"] == str(data_dir(agent) / wl["data_key"])
    assert wl["files"] == [{"path": "gw_test.txt", "size": len(content), "etag": md5(content),
                            "sha256": sha256(content)}]
    assert (Path(wl["path"]) / "gw_test.txt").read_bytes() == content
    assert wl["requirements"]["storage"] == len(content)
    [row] = objects(agent, wl["id"])
    assert row["key"] == f"{wl['data_key']}/gw_test.txt" and row["data_key"] == wl["data_key"]
    assert (row["size"], row["etag"], row["sha256"]) == (len(content), md5(content), sha256(content))
    assert row["content_type"] == "text/plain"
    assert agent.workload(wl["id"])["files"] == wl["files"]
    listed = agent.api("GET", "/api/workloads?type=data").json()["workloads"]
    assert [w["id"] for w in listed] == [wl["id"]]
    assert not staging(agent)


def test_directory_upload_with_checksums(agent):
    """Parts whose filenames carry relative paths (as a browser's directory upload sends)."""
    files = [("photos/readme.txt", b"a directory upload\n"),
             ("photos/2024/cat.bin", os.urandom(300_000)),
             ("photos/2024/deep/er/dog.json", b'{"dog": true}'),
             ("photos/empty.txt", b""),
             ("photos/\u5357\u4eac.txt", "\u6c5f\u82cf".encode())]
    wl = upload(agent, "my photos", files)
    total = sum(len(c) for _, c in files)
    assert wl["status"] == "completed" and wl["size"] == total and wl["file_count"] == len(files)
    assert wl["data_key"].startswith("my-photos-")
    root = Path(wl["path"])
    by_path = {f["path"]: f for f in wl["files"]}
    for path, content in files:
        assert (root / path).read_bytes() == content
        assert by_path[path] == {"path": path, "size": len(content), "etag": md5(content),
                                 "sha256": sha256(content)}
    rows = {r["key"]: r for r in objects(agent, wl["id"])}
    assert set(rows) == {f"{wl['data_key']}/{p}" for p, _ in files}
    for path, content in files:
        row = rows[f"{wl['data_key']}/{path}"]
        assert (row["etag"], row["sha256"], row["size"]) == (md5(content), sha256(content), len(content))
    assert rows[f"{wl['data_key']}/photos/2024/deep/er/dog.json"]["content_type"] == "application/json"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == \
        sorted(p for p, _ in files)
    assert not staging(agent)


def test_fields_may_follow_the_files(agent):
    body = multipart(filepart("late/a.txt", b"first"), filepart("late/b.txt", b"second"),
                     field("name", "fields-last"), field("type", "data"))
    resp = post_raw(agent, body)
    assert resp.status_code == 201, resp.text
    wl = resp.json()
    assert wl["name"] == "fields-last" and wl["size"] == len(b"firstsecond")
    assert (Path(wl["path"]) / "late/b.txt").read_bytes() == b"second"


def test_large_chunked_upload_streams(agent):
    """A body without Content-Length (chunked), larger than one write batch."""
    content = os.urandom(3 * (1 << 20) + 12345)
    body = multipart(field("type", "data"), field("name", "chunked"), filepart("big.bin", content))

    def pieces():
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]
    resp = agent.api("POST", "/api/workloads", data=pieces(),
                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert resp.status_code == 201, resp.text
    wl = resp.json()
    assert wl["files"][0]["etag"] == md5(content) and wl["files"][0]["sha256"] == sha256(content)
    assert (Path(wl["path"]) / "big.bin").read_bytes() == content
    assert agent.resources()["allocated"]["storage"] == len(content)


def test_concurrent_uploads(agent):
    from concurrent.futures import ThreadPoolExecutor

    contents = [os.urandom(1_500_000 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda i: upload(agent, f"parallel {i}", [("p.bin", contents[i])]),
                             range(4)))
    assert len({wl["data_key"] for wl in done}) == 4
    for wl, content in zip(done, contents):
        assert (Path(wl["path"]) / "p.bin").read_bytes() == content
        assert wl["files"][0]["etag"] == md5(content)
    assert agent.resources()["allocated"]["storage"] == sum(len(c) for c in contents)
    assert not staging(agent)


# -- accounting, stop, delete, restart -------------------------------------------------------

def test_storage_accounting_stop_and_delete(agent):
    before = agent.resources()
    assert before["allocated"]["storage"] == 0
    content = os.urandom(250_000)
    wl = upload(agent, "accounted", [("blob.bin", content), ("more/x.txt", b"x" * 1000)])
    size = len(content) + 1000
    during = agent.resources()
    assert during["allocated"]["storage"] == size
    assert during["available"]["storage"] == before["available"]["storage"] - size

    stopped = agent.api("POST", f"/api/workloads/{wl['id']}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "completed"
    assert agent.resources()["allocated"]["storage"] == size

    resp = agent.api("DELETE", f"/api/workloads/{wl['id']}")
    assert resp.status_code == 200, resp.text
    assert agent.api("GET", f"/api/workloads/{wl['id']}").status_code == 404
    assert not Path(wl["path"]).exists()
    assert objects(agent, wl["id"]) == []
    after = agent.resources()
    assert after["allocated"]["storage"] == 0
    assert after["available"]["storage"] == before["available"]["storage"]
    assert_nothing_kept(agent)


def test_restart_keeps_data_and_its_reservation(agent):
    wl = upload(agent, "durable", [("keep.txt", b"kept across restarts")])
    agent.terminate()
    agent.start()
    assert agent.workload(wl["id"])["status"] == "completed"
    assert agent.resources()["allocated"]["storage"] == len(b"kept across restarts")
    assert (Path(wl["path"]) / "keep.txt").read_bytes() == b"kept across restarts"
    assert agent.api("DELETE", f"/api/workloads/{wl['id']}").status_code == 200
    assert_nothing_kept(agent)


def test_json_submission_of_data_is_refused(agent):
    resp = agent.api("POST", "/api/workloads", json={"name": "x", "type": "data"})
    assert_error(resp, 400, "multipart_required")
    assert_nothing_kept(agent)


# -- limits ----------------------------------------------------------------------------------

def test_upload_limit_declared_length_413(make_agent, tmp_path):
    agent = make_agent(config={"data": {"upload_limit": "64KiB"}})
    (tmp_path / "big.bin").write_bytes(os.urandom(3 << 20))
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", f"{agent.url}/api/workloads",
         "-F", "type=data", "-F", "name=too-big", "-F", "file=@./big.bin"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "413", out.stdout
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert_nothing_kept(agent)
    # Within the limit it works.
    upload(agent, "small", [("small.bin", b"s" * 60_000)])


def test_upload_limit_counted_while_streaming_413(make_agent):
    agent = make_agent(config={"data": {"upload_limit": "64KiB"}})
    raw = RawUpload(agent, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                            "Transfer-Encoding": "chunked"})
    body = multipart(field("type", "data"), field("name", "sneaky"),
                     filepart("big.bin", os.urandom(100_000)), close=False)
    raw.send_chunk(body)
    status, reply = raw.response()
    raw.close()
    assert status == 413 and reply["error"]["code"] == "payload_too_large"
    assert_nothing_kept(agent)


def test_larger_than_free_storage(make_agent):
    agent = make_agent(config={"resources": {"storage": 200_000}})
    kept = upload(agent, "fits", [("a.bin", b"a" * 120_000)])
    # Declared length beyond what is free: refused before anything is written.
    resp = agent.api("POST", "/api/workloads", data={"type": "data", "name": "no-room"},
                     files=[("file", ("b.bin", b"b" * 100_000))])
    error = assert_error(resp, 507, "insufficient_storage")
    assert "storage" in error["message"]
    assert_nothing_kept(agent, storage=120_000, workloads=1)
    # No declared length: refused while streaming, once the bytes outgrow the free space.
    raw = RawUpload(agent, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                            "Transfer-Encoding": "chunked"})
    raw.send_chunk(multipart(field("type", "data"), field("name", "no-room-either"),
                             filepart("c.bin", b"c" * 100_000), close=False))
    status, reply = raw.response()
    raw.close()
    assert status == 507 and reply["error"]["code"] == "insufficient_storage"
    assert_nothing_kept(agent, storage=120_000, workloads=1)
    assert agent.api("DELETE", f"/api/workloads/{kept['id']}").status_code == 200
    upload(agent, "fits-now", [("b.bin", b"b" * 150_000)])


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("filename", [
    b"/etc/passwd", b"../evil.txt", b"dir/../../evil.txt", b"dir/..", b"..",
    b"a\\b.txt", b"C:\\evil.txt", b"..\\evil.txt", b"bad\x00name.txt", b"", b"C:/evil.txt",
    b"a//b.txt", b"./a.txt", b"dir/",
])
def test_unsafe_filenames_400(agent, filename):
    body = multipart(field("type", "data"), field("name", "unsafe"),
                     filepart("fine.txt", b"staged before the bad part"),
                     filepart(filename, b"payload"))
    error = assert_error(post_raw(agent, body), 400, "invalid_filename")
    assert "file" in error["message"]
    assert_nothing_kept(agent)
    assert not any(p.name in ("evil.txt", "passwd") for p in agent.root.parent.rglob("*"))


def test_duplicate_and_conflicting_paths_400(agent):
    same = multipart(field("type", "data"), field("name", "dup"),
                     filepart("a.txt", b"1"), filepart("a.txt", b"2"))
    assert_error(post_raw(agent, same), 400, "invalid_filename")
    clash = multipart(field("type", "data"), field("name", "dup"),
                      filepart("a", b"1"), filepart("a/b.txt", b"2"))
    assert_error(post_raw(agent, clash), 400, "invalid_filename")
    assert_nothing_kept(agent)


@pytest.mark.parametrize("case", [
    "no_boundary", "garbage", "missing_name", "missing_type", "no_file", "wrong_type",
    "unknown_field", "truncated", "file_without_filename", "no_disposition", "bad_boundary",
])
def test_malformed_multipart_400(agent, case):
    good = [field("type", "data"), field("name", "m"), filepart("f.txt", b"data")]
    ctype = None
    if case == "no_boundary":
        body, ctype = multipart(*good), "multipart/form-data"
    elif case == "bad_boundary":
        body, ctype = multipart(*good), "multipart/form-data; boundary=\"\""
    elif case == "garbage":
        body = b"this is not a multipart body at all\r\n" * 100
    elif case == "missing_name":
        body = multipart(good[0], good[2])
    elif case == "missing_type":
        body = multipart(good[1], good[2])
    elif case == "no_file":
        body = multipart(good[0], good[1])
    elif case == "wrong_type":
        body = multipart(field("type", "process"), good[1], good[2])
    elif case == "unknown_field":
        body = multipart(*good, field("colour", "blue"))
    elif case == "truncated":
        body = multipart(*good, close=False)
    elif case == "file_without_filename":
        body = multipart(good[0], good[1], field("file", "inline text"))
    else:  # no_disposition
        body = multipart(*good).replace(b'Content-Disposition: form-data; name="name"',
                                        b"X-Other: 1", 1)
    resp = post_raw(agent, body, ctype)
    assert_error(resp, 400)
    assert_nothing_kept(agent)


# -- aborted uploads -------------------------------------------------------------------------

def _half_upload(agent, total: int = 8 << 20) -> RawUpload:
    """Declare a big upload, send part of it, and wait until the agent is writing it."""
    head = multipart(field("type", "data"), field("name", "half"), close=False)
    head += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="dir/half.bin"\r\n\r\n').encode()
    before = agent.api("GET", "/api/workloads?type=data").json()["workloads"]
    raw = RawUpload(agent, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                            "Content-Length": str(len(head) + total + 100)})
    raw.send(head)
    # More than one writer batch: the multipart parser may hold back a tail that could be the
    # start of a boundary, so exactly one batch's worth might never make a batch due.
    from cnet.upload_staging import BATCH_BYTES
    block = os.urandom(1 << 20)
    for _ in range(BATCH_BYTES // len(block) + 1):
        raw.send(block)

    def writing():
        parts = [p for p in staging(agent) if p.suffix == ".part"]
        return parts and parts[0].stat().st_size >= (1 << 20)
    wait_for(writing, timeout=15, message="the agent to stage the upload")
    assert agent.resources()["allocated"]["storage"] > 0   # reserved while it arrives
    assert agent.api("GET", "/api/workloads?type=data").json()["workloads"] == before
    return raw


def test_client_disconnect_mid_upload_leaves_nothing(agent):
    raw = _half_upload(agent)
    raw.close()
    assert_nothing_kept(agent)
    upload(agent, "after", [("ok.txt", b"the agent still takes uploads")])


def test_stalled_upload_is_dropped(make_agent):
    """A client that stays connected but stops sending does not hold its reservation."""
    # Long enough that a loaded machine still shows the upload staged before it is dropped.
    agent = make_agent(config={"data": {"idle_timeout": 6.0}})
    raw = _half_upload(agent)
    try:
        assert_nothing_kept(agent)
        raw.sock.settimeout(15)
        assert raw.sock.recv(1) == b""  # the agent closed the connection
    finally:
        raw.close()
    upload(agent, "after", [("ok.txt", b"the agent still takes uploads")])


def test_agent_killed_mid_upload_leaves_nothing_after_restart(agent):
    kept = upload(agent, "before-crash", [("kept.txt", b"k" * 5000)])
    raw = _half_upload(agent)
    agent.kill()
    raw.close()
    assert staging(agent)   # the crash left a staged upload behind ...
    agent.start()
    assert_nothing_kept(agent, storage=5000, workloads=1)   # ... which the restart swept
    assert stored_dirs(agent) == [kept["data_key"]]
    assert agent.workload(kept["id"])["status"] == "completed"


def test_sweep_settles_what_a_crash_left(tmp_path):
    """The start-up sweep on each crash point of an upload's commit and of a delete."""
    from cnet.executors.data import TARGET_MARKER, DataLayout

    layout = DataLayout(tmp_path)

    def staged(name: str, marker: str | None = None) -> Path:
        path = layout.staging / name
        (path / "tree").mkdir(parents=True)
        (path / "0.part").write_bytes(b"partial")
        if marker:
            (path / TARGET_MARKER).write_text(marker)
        return path

    def stored(data_key: str) -> Path:
        (tmp_path / data_key).mkdir()
        (tmp_path / data_key / "f.txt").write_text(data_key)
        return tmp_path / data_key

    staged("aaa1")                                   # cut short while receiving
    staged("bbb2", marker="up-bbb2")                 # moved into place, never recorded
    orphan = stored("up-bbb2")
    staged("ccc3", marker="ok-ccc3")                 # recorded; only its staging dir is left
    recorded = stored("ok-ccc3")
    (layout.deleted_dir("ddd4") / "f.txt").parent.mkdir(parents=True)   # delete cut short
    (layout.deleted_dir("ddd4") / "f.txt").write_text("half")          # mid-way, record `deleting`
    (layout.deleted_dir("eee5")).mkdir()                                # delete cut short, record gone
    not_moved = stored("del-fff6")       # delete cut short before its files moved (`deleting`)

    layout.sweep({"ccc3": "ok-ccc3", "ddd4": "del-ddd4", "fff6": "del-fff6"})

    assert list(layout.staging.iterdir()) == []
    assert not orphan.exists()
    assert (recorded / "f.txt").read_text() == "ok-ccc3"
    assert not (tmp_path / "del-ddd4").exists()      # a half-deleted tree is never moved back
    assert (not_moved / "f.txt").exists()            # left to the Manager's retry of the delete
