"""Hostile and odd requests get S3 XML errors with S3's codes, never a reset or a bare answer:
OPTIONS, absolute- and asterisk-form targets, oversized keys and header sections, NUL and
control characters, broken framing, huge queries, bodies of every kind and content type."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET

import pytest
import requests

from .gateway_fixtures import GatewayProcess

NESTED_XML = b"<Delete>" + b"<Object>" * 100_000 + b"</Object>" * 100_000 + b"</Delete>"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    base = root / "data"
    (base / "k1").mkdir(parents=True)
    (base / "k1" / "a.txt").write_bytes(b"hello")
    gw = GatewayProcess(base, root).start()
    yield gw
    gw.stop()


def exchange(gateway: GatewayProcess, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes; read one whole answer (by its Content-Length) or until the gateway closes."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and len(body) >= _content_length(head):
                break
    return answer


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def s3_error(answer: bytes) -> tuple[int, str]:
    status, headers, body = parse(answer)
    assert headers["content-type"] == "application/xml", answer[:300]
    assert int(headers["content-length"]) == len(body)
    return status, ET.fromstring(body).findtext("Code")


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.mark.parametrize("headers, status, code", [
    ((), 400, "BadRequest"),
    (("Origin: http://example.org",), 400, "BadRequest"),
    (("Origin: http://example.org", "Access-Control-Request-Method: GET"), 403,
     "AccessForbidden"),
])
def test_options_as_s3_without_cors(gateway, headers, status, code):
    for path in ("/cnet/k1/a.txt", "/cnet", "/s3/cnet/k1/a.txt"):
        assert s3_error(exchange(gateway, request("OPTIONS", path, *headers))) == (status, code)


def test_absolute_form_targets_are_served_as_their_path(gateway):
    for target in (f"{gateway.url}/cnet/k1/a.txt", f"HTTP://127.0.0.1:{gateway.port}/cnet/k1/a.txt",
                   f"{gateway.url}/s3/cnet/k1/a.txt"):
        status, _, body = parse(exchange(gateway, request("GET", target)))
        assert (status, body) == (200, b"hello"), target
    assert s3_error(exchange(gateway, request("GET", f"{gateway.url}/cnet/nope"))) == \
        (404, "NoSuchKey")
    status, _, body = parse(exchange(gateway, request("GET", gateway.url)))
    assert status == 200 and b"<ListAllMyBucketsResult" in body


@pytest.mark.parametrize("target", ["*", "ftp://127.0.0.1/cnet/k1/a.txt", "cnet/k1/a.txt"])
def test_other_target_forms_are_invalid_requests(gateway, target):
    assert s3_error(exchange(gateway, request("OPTIONS", target))) == (400, "InvalidRequest")


@pytest.mark.parametrize("size", [1025, 8_000, 200_000, 900_000])
def test_oversized_keys_are_key_too_long(gateway, size):
    for mount in ("", "/s3"):
        answer = exchange(gateway, request("GET", f"{mount}/cnet/" + "k" * size))
        assert s3_error(answer) == (400, "KeyTooLongError")
        assert len(answer) < 4096                         # the key is not echoed whole
    status, headers, body = parse(exchange(gateway, request("HEAD", "/cnet/" + "k" * 200_000)))
    assert (status, body) == (400, b"")


@pytest.mark.parametrize("headers", [("X-Big: " + "v" * 9000,),
                                     tuple(f"X-Many-{i}: value" for i in range(2000)),
                                     ("X-Huge: " + "v" * 500_000,)])
def test_oversized_header_sections(gateway, headers):
    answer = exchange(gateway, request("GET", "/cnet/k1/a.txt", *headers))
    assert s3_error(answer) == (400, "RequestHeaderSectionTooLarge")


@pytest.mark.parametrize("raw", [
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /cnet/k1/a\x00.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /cnet/k1/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"GET /cnet?" + b"&".join(b"a%d=1" % i for i in range(1500)) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["nul-header", "nul-target", "control-header", "no-colon", "garbage", "http2",
        "no-host", "bad-host", "bad-length", "unequal-lengths", "gzip-te", "bad-chunk",
        "too-many-fields"])
def test_malformed_requests_are_s3_xml_400s(gateway, raw):
    status, code = s3_error(exchange(gateway, raw))
    assert status == 400
    assert code in ("InvalidRequest", "InvalidArgument")


def test_nul_and_bad_encodings_in_paths_and_queries(gateway):
    for target, code in (("/cnet/k1/a.txt%00", "InvalidArgument"),
                         ("/cnet/%ff%fe", "InvalidArgument"),
                         ("/cnet?prefix=%ff", "InvalidArgument"),
                         ("/cnet?list-type=2&max-keys=%00", "InvalidArgument"),
                         ("/cnet%00", "NoSuchBucket")):
        assert s3_error(exchange(gateway, request("GET", target)))[1] == code, target


@pytest.mark.parametrize("method, target, content_type, body", [
    ("POST", "/cnet?delete", "application/xml", NESTED_XML),
    ("POST", "/cnet?delete", "text/html; charset=../../etc/passwd", b"<x/>" * 1000),
    ("PUT", "/cnet/new.bin", "application/x-www-form-urlencoded", b"a=1&" * 50_000),
    ("PUT", "/cnet/new.json", "application/json", b"[" * 100_000),
    ("POST", "/cnet/k1/a.txt", "multipart/form-data; boundary=x", b"--x\r\n" * 10_000),
    ("DELETE", "/cnet/k1/a.txt", "image/jpeg", b"\x00" * 10_000),
])
def test_bodies_of_any_kind_are_refused_unread(gateway, method, target, content_type, body):
    """The answer comes from the head alone: the body is never sent here, let alone read."""
    head = request(method, target, f"Content-Type: {content_type}",
                   f"Content-Length: {len(body)}")
    assert s3_error(exchange(gateway, head)) == (405, "MethodNotAllowed")
    chunked = request(method, target, f"Content-Type: {content_type}",
                      "Transfer-Encoding: chunked")
    assert s3_error(exchange(gateway, chunked)) == (405, "MethodNotAllowed")


def test_odd_content_types_on_reads_change_nothing(gateway):
    for content_type in ("application/json", "multipart/form-data", "text/xml; charset=bogus"):
        response = requests.get(f"{gateway.url}/cnet/k1/a.txt", data=b"[[[[",
                                headers={"Content-Type": content_type}, timeout=5)
        assert (response.status_code, response.content) == (200, b"hello")


def test_unknown_methods_are_method_not_allowed(gateway):
    for method in ("PATCH", "PROPFIND", "TRACE", "CONNECT"):
        status, code = s3_error(exchange(gateway, request(method, "/cnet/k1/a.txt")))
        assert status in (400, 405), method
        assert code in ("MethodNotAllowed", "InvalidRequest"), method


def test_the_gateway_still_serves_after_all_that(gateway):
    assert requests.get(f"{gateway.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{gateway.url}/cnet/k1/a.txt", timeout=5).content == b"hello"
    assert gateway.proc.poll() is None
    assert "Traceback" not in gateway.log
