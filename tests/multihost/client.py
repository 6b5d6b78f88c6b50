"""Every HTTP and bus call of the multi-host tests, made from inside the client namespace.

Run as a program (``ip netns exec NS python client.py --netns /run/netns/NS --not INODE``) it
checks that it really is in that namespace and not the tests' own (the host's, whose inode is
``INODE``); else it refuses and exits 2. Then it answers
one JSON request per stdin line with one JSON reply per stdout line. :class:`NamespaceClient`
is the tests' side: it starts the program, checks what it says, and gives every call a timeout.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SUBNET = ipaddress.ip_network("10.77.0.0/24")   # netns.SUBNET (the program imports nothing of ours)
BUS_CALLS = {"submit", "list", "get", "stop", "delete", "logs", "nodes", "resources", "health"}


class CallError(Exception):
    """A call that got no answer (unreachable, timed out) or a bus error reply."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class Reply:
    """An HTTP answer, shaped like the part of ``requests.Response`` the tests use."""

    def __init__(self, status: int, text: str, body: Any):
        self.status_code, self.text, self._body = status, text, body

    def json(self) -> Any:
        if self._body is None:
            raise ValueError(f"not JSON: {self.text[:200]!r}")
        return self._body


class NamespaceClient:
    """The tests' handle on the client program in namespace ``ns``."""

    def __init__(self, ns: str, log: Path):
        self.ns, self.log = ns, log
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    def start(self, timeout: float = 30.0) -> None:
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}   # no proxies
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, __file__,
                 "--netns", f"/run/netns/{self.ns}", "--not", str(_inode("/proc/self/ns/net"))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
        self._buffer = b""
        hello = json.loads(self._read_line(time.monotonic() + timeout) or "{}")
        want = os.stat(f"/run/netns/{self.ns}").st_ino
        if hello.get("netns") != want or want == _inode("/proc/self/ns/net"):
            self.close()
            raise RuntimeError(f"the client program refused to run, or ran outside {self.ns}: {hello}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def call(self, request: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        line = self._read_line(time.monotonic() + timeout + 5)
        if not line:
            self.close()        # a fresh program for the next call
            raise CallError(f"no answer to {request.get('op')} within {timeout + 5:g} s")
        return json.loads(line)

    def _read_line(self, deadline: float) -> str:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return ""
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def http(self, method: str, url: str, *, json: Any = None, headers: dict | None = None,
             params: dict | None = None, timeout: float = 10.0,
             form: dict | None = None, files: dict | None = None) -> Reply:
        """``form`` and ``files`` (field: a file path the client program can read): a
        multipart/form-data body instead of JSON."""
        reply = self.call({"op": "http", "method": method, "url": url, "json": json,
                           "headers": headers or {}, "params": params, "timeout": timeout,
                           "form": form, "files": files}, timeout)
        if "error" in reply:
            raise CallError(reply["error"])
        return Reply(reply["status"], reply["text"], reply["json"])

    def bus(self, target: str, call: str, *args: Any, token: str | None = None,
            timeout: float = 10.0) -> Any:
        """``SyncClient(target).<call>(*args)`` in the client namespace."""
        reply = self.call({"op": "bus", "target": target, "call": call, "args": list(args),
                           "token": token, "timeout": timeout}, timeout)
        if "error" in reply:
            raise CallError(reply["error"], reply.get("status", 0), reply.get("code", ""))
        return reply["result"]


# -- the program, inside the namespace ---------------------------------------------------


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _checked_url(url: str) -> str:
    host = urlsplit(url).hostname or ""
    address = ipaddress.ip_address(host)   # names are refused too: nothing to resolve
    if address not in SUBNET and not address.is_loopback:
        raise ValueError(f"refusing to send to {host}: outside {SUBNET} and loopback")
    return url


class Program:
    def __init__(self) -> None:
        import requests

        self.session = requests.Session()
        self.session.trust_env = False      # no proxy, no netrc: straight to the address
        self.clients: dict[tuple, Any] = {}

    def http(self, req: dict) -> dict:
        files = {field: open(path, "rb") for field, path in (req.get("files") or {}).items()}
        try:
            resp = self.session.request(req["method"], _checked_url(req["url"]),
                                        json=req["json"], headers=req["headers"],
                                        params=req["params"], timeout=req["timeout"],
                                        data=req.get("form"), files=files or None)
        finally:
            for handle in files.values():
                handle.close()
        try:
            body = resp.json()
        except ValueError:
            body = None
        return {"status": resp.status_code, "text": resp.text, "json": body}

    def bus(self, req: dict) -> dict:
        from cnet.client import ClientError, SyncClient

        if req["call"] not in BUS_CALLS:
            raise ValueError(f"unknown bus call {req['call']!r}")
        _checked_url(f"http://{req['target']}")
        key = (req["target"], req["token"], req["timeout"])
        if key not in self.clients:
            self.clients[key] = SyncClient(req["target"], token=req["token"], timeout=req["timeout"])
        try:
            return {"result": getattr(self.clients[key], req["call"])(*req["args"])}
        except ClientError as exc:
            return {"error": str(exc), "status": exc.status, "code": exc.code}

    def handle(self, req: dict) -> dict:
        try:
            return self.http(req) if req.get("op") == "http" else self.bus(req)
        except Exception as exc:    # the test sees it as the call's error; we keep serving
            return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", required=True, help="/run/netns/NAME this must run in")
    parser.add_argument("--not", type=int, required=True, dest="host",
                        help="the inode of the host's network namespace, where it must not run")
    args = parser.parse_args()
    here = _inode("/proc/self/ns/net")
    if here != _inode(args.netns) or here == args.host:
        print(json.dumps({"refused": f"not inside {args.netns}"}), flush=True)
        return 2
    program = Program()
    print(json.dumps({"netns": here}), flush=True)
    for line in sys.stdin:
        print(json.dumps(program.handle(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
