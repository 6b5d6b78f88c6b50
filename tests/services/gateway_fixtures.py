"""Test helpers for the S3 gateway: a real ``cnet-gateway-data`` process on a free port, an agent-style
``data_objects`` database, and boto3 clients pointed at the gateway."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore
import requests
from botocore.config import Config

from tests.harness import REPO, free_port, wait_for

# The documented contract (cnet/store.py): the table the agent writes and the gateway reads.
DATA_OBJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_objects (
    key           TEXT PRIMARY KEY,
    workload_id   TEXT NOT NULL,
    data_key      TEXT NOT NULL,
    size          INTEGER NOT NULL,
    etag          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL DEFAULT 'application/octet-stream',
    last_modified REAL NOT NULL
);
"""
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class GatewayProcess:
    """One gateway subprocess; ``url`` is its root, ``endpoint`` the S3 endpoint (``.../s3``)."""

    def __init__(self, base_path: Path, log_dir: Path, *, bucket: str = "cnet",
                 index_db: Path | None = None, extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.url}/s3"
        self.bucket = bucket
        self.args = [sys.executable, "-m", "services.gateway.main", "--port", str(self.port),
                     "--host", "127.0.0.1", "--base-path", str(base_path), "--bucket", bucket,
                     *(["--index-db", str(index_db)] if index_db else []), *extra_args]
        self.log_path = log_dir / f"gateway_{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=START_TIMEOUT, message=f"gateway health ({self.log})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log}")
        return requests.get(f"{self.url}/health", timeout=1).status_code == 200

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


def create_agent_db(path: Path) -> sqlite3.Connection:
    """A database with the agent's ``data_objects`` table, in WAL mode, autocommitting."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(DATA_OBJECTS_SCHEMA)
    return conn


def store_object(conn: sqlite3.Connection, base: Path, key: str, data: bytes, *,
                 content_type: str = "application/octet-stream",
                 last_modified: float | None = None) -> str:
    """Write an object as the agent does (file under base, then its row); return its hex MD5."""
    path = base / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    etag = hashlib.md5(data).hexdigest()
    conn.execute(
        "INSERT OR REPLACE INTO data_objects (key, workload_id, data_key, size, etag, sha256,"
        " content_type, last_modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (key, "wl-" + key.split("/")[0], key.split("/")[0], len(data), etag,
         hashlib.sha256(data).hexdigest(), content_type,
         time.time() if last_modified is None else last_modified))
    return etag


def s3_client(endpoint: str, *, access_key: str | None = None, secret_key: str | None = None,
              region: str = "us-east-1"):
    """boto3 S3 client with path-style addressing; unsigned unless keys are given."""
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                    signature_version="s3v4" if access_key else botocore.UNSIGNED)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config,
                        aws_access_key_id=access_key or "unused",
                        aws_secret_access_key=secret_key or "unused")


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    os.utime(path)
