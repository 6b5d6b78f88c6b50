"""The S3 gateway's OpenAPI document (services/gateway/openapi.json, served at /openapi.json):
valid OpenAPI 3.1, naming every path the gateway routes, keeping the root-path rule for its own
names, and true of a live unsigned gateway, which schemathesis drives from it (XML bodies too:
they are read into the shape of the document's ``xml``-annotated schemas and checked)."""
from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import pytest
import requests

from services.gateway.app import OPENAPI, OWN_PATHS
from services.gateway.errors import STATUS_BY_CODE
from tests.test_openapi import fuzz

from .test_gateway_root import OBJECTS, _world

S3_PATHS = {path: {"get", "head", "options"} for mount in ("", "/s3")
            for path in (mount + "/", mount + "/{bucket}", mount + "/{bucket}/{key}")}
XML = "application/xml"
# Operations fuzzed with more examples than the rest: the listings and the object reads.
EXAMPLES = {"GET /{bucket}": (80, 30), "GET /{bucket}/{key}": (80, 20),
            "HEAD /{bucket}/{key}": (30, 10)}
FEW = (15, 5)
# A server error the document promises for input: an S3 subresource the gateway lacks.
EXPECTED_5XX = {"NotImplemented"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = _world(tmp_path_factory.mktemp("openapi"), "cnet")
    yield gw
    gw.stop()


def _deref(node: dict) -> dict:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = OPENAPI["components"][kind][name]
    return node


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(OPENAPI)
    assert OPENAPI["openapi"].startswith("3.1.")


def test_every_path_and_method_is_documented():
    """The gateway's own paths (GET only) and S3 at the root and under /s3."""
    documented = {path: set(item) - {"parameters"} for path, item in OPENAPI["paths"].items()}
    assert documented == {**{path: {"get"} for path in OWN_PATHS}, **S3_PATHS}


def test_every_error_response_is_the_s3_error_document():
    """4xx/5xx of GET and OPTIONS are S3 XML errors; HEAD answers have no body at all."""
    error = {XML: {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in OPENAPI["paths"].items():
        for method in {"get", "head", "options"} & set(item):
            for status, response in item[method]["responses"].items():
                response = _deref(response)
                if method == "head":
                    assert "content" not in response, (method, path, status)
                elif int(status) >= 400:
                    assert response.get("content") == error, (method, path, status)
    codes = _deref({"$ref": "#/components/schemas/Error"})["properties"]["Code"]["enum"]
    assert set(codes) == set(STATUS_BY_CODE)


def test_the_gateway_serves_its_document(gateway):
    resp = requests.get(f"{gateway.url}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    served = resp.json()
    assert served["servers"] == [{"url": gateway.url}]
    assert {k: v for k, v in served.items() if k != "servers"} == \
        {k: v for k, v in OPENAPI.items() if k != "servers"}
    # While no bucket has the name, the path is the gateway's own, a query or not.
    assert requests.get(f"{gateway.url}/openapi.json?list-type=2", timeout=10).json() == served


def test_a_bucket_named_openapi_json_keeps_the_root_path_rule(tmp_path):
    """As for /health: the plain unsigned GET is the document; any S3 request is the bucket's."""
    gw = _world(tmp_path, "openapi.json")
    try:
        assert requests.get(f"{gw.url}/openapi.json", timeout=5).json()["openapi"] == "3.1.0"
        listing = requests.get(f"{gw.url}/openapi.json?list-type=2", timeout=5)
        assert listing.status_code == 200 and listing.headers["Content-Type"] == XML
        keys = [e.text for e in ET.fromstring(listing.content).iter()
                if e.tag.endswith("}Key")]
        assert keys == sorted(OBJECTS)
        assert requests.head(f"{gw.url}/openapi.json", timeout=5).status_code == 200
        assert requests.get(f"{gw.url}/openapi.json/k1/a.txt", timeout=5).content == b"root a"
    finally:
        gw.stop()


def test_listing_parameters_xml_cannot_carry_are_refused(gateway):
    """Found by the fuzzing below: a prefix (marker, delimiter, start-after) with a control
    character was echoed into a listing no XML parser can read; with encoding-type=url it is
    percent-encoded, so only that form is served."""
    for name in ("prefix", "delimiter", "marker", "start-after"):
        resp = requests.get(f"{gateway.url}/cnet?list-type=2&{name}=k%0F", timeout=5)
        assert resp.status_code == 400, (name, resp.text)
        assert ET.fromstring(resp.content).findtext("Code") == "InvalidArgument"
        resp = requests.get(f"{gateway.url}/cnet?list-type=2&{name}=k%0F&encoding-type=url",
                            timeout=5)
        assert resp.status_code == 200, (name, resp.text)
        ET.fromstring(resp.content)


@pytest.mark.parametrize("value", ["a%0Ab", "%00", "%E4%B8%AD", "%7F"])
def test_response_overrides_that_are_no_header_value_are_refused(gateway, value):
    """A response-* override with a control character or beyond Latin-1 was a 500 (Tornado
    refuses the header); it is InvalidArgument, as the document says."""
    resp = requests.get(f"{gateway.url}/cnet/k1/a.txt?response-cache-control={value}", timeout=5)
    assert resp.status_code == 400 and \
        ET.fromstring(resp.content).findtext("Code") == "InvalidArgument"
    ok = requests.get(f"{gateway.url}/cnet/k1/a.txt?response-cache-control=no-cache%09x",
                      timeout=5)
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-cache\tx"


# -- XML bodies in the shape of the document's schemas -------------------------------------------

def _xml_shapes(doc: dict) -> tuple[dict, dict, dict]:
    """From the document's schemas: element name -> JSON type, element name -> whether it is a
    wrapped array (absent: not an array), root element name -> its namespace."""
    types: dict[str, str] = {}
    arrays: dict[str, bool] = {}
    roots: dict[str, str | None] = {}

    def walk(name: str, schema: dict) -> None:
        schema = _deref(schema)
        name = schema.get("xml", {}).get("name", name)
        if schema.get("type") == "array":
            arrays[name] = schema.get("xml", {}).get("wrapped", False)
            walk(name, schema["items"])
            return
        if "type" in schema:
            types.setdefault(name, schema["type"])
        for prop, sub in schema.get("properties", {}).items():
            walk(prop, sub)

    for name, schema in doc["components"]["schemas"].items():
        if "xml" in schema:
            roots[schema["xml"]["name"]] = schema["xml"].get("namespace")
        walk(name, schema)
    return types, arrays, roots


def xml_to_data(content: bytes, shapes: tuple[dict, dict, dict]):
    """An XML body as the JSON its ``xml``-annotated schema describes: child elements and
    attributes become properties, arrays are as their schema's ``xml.wrapped`` says, integers
    and booleans are typed; an unexpected root namespace shows up as an extra ``xmlns``."""
    types, arrays, roots = shapes

    def local(tag: str) -> tuple[str | None, str]:
        return tuple(tag[1:].split("}", 1)) if tag.startswith("{") else (None, tag)

    def scalar(name: str, text: str):
        if types.get(name) == "integer":
            return int(text) if text.lstrip("-").isdigit() else text
        if types.get(name) == "boolean":
            return {"true": True, "false": False}.get(text, text)
        return text

    def convert(elem: ET.Element):
        name = local(elem.tag)[1]
        if not len(elem) and not elem.attrib and types.get(name) != "object":
            return scalar(name, elem.text or "")
        out: dict = {local(attr)[1]: value for attr, value in elem.attrib.items()}
        for child in elem:
            child_name = local(child.tag)[1]
            if child_name not in arrays:
                out[child_name] = convert(child)
            elif arrays[child_name]:
                out[child_name] = [convert(item) for item in child]
            else:
                out.setdefault(child_name, []).append(convert(child))
        return out

    root = ET.fromstring(content)
    namespace, name = local(root.tag)
    data = convert(root)
    if name in roots and roots[name] != namespace and isinstance(data, dict):
        data["xmlns"] = namespace
    return data


@pytest.fixture
def xml_bodies():
    """schemathesis reads application/xml answers as the document's schemas describe them."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.core import deserialization

    shapes = _xml_shapes(OPENAPI)
    schemathesis.deserializer(XML)(lambda ctx, response: xml_to_data(response.content, shapes))
    yield
    deserialization._DESERIALIZERS.pop(XML, None)


def _narrowed(doc: dict, bucket: str, keys: list[str]) -> dict:
    """The document with {bucket} drawn from the live bucket and one that is not there, and
    {key} from the stored keys as well as anything, so that the fuzzing reaches real answers."""
    doc = copy.deepcopy(doc)
    params = doc["components"]["parameters"]
    params["bucket"]["schema"] = {"type": "string", "enum": [bucket, "no-such-bucket"]}
    params["key"]["schema"] = {"anyOf": [{"type": "string", "enum": keys},
                                         params["key"]["schema"]]}
    return doc


def test_a_live_gateway_keeps_to_its_document(gateway, xml_bodies):
    """No server error but the documented NotImplemented, every answer's status, content type,
    headers and (JSON or XML) body as documented, and the gateway still answers after."""
    import schemathesis
    from schemathesis import GenerationMode

    served = requests.get(f"{gateway.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(_narrowed(served, gateway.bucket, sorted(OBJECTS)))
    checks = [getattr(schemathesis.checks, name) for name in (
        "not_a_server_error", "status_code_conformance", "content_type_conformance",
        "response_schema_conformance", "response_headers_conformance",
        "negative_data_rejection")]
    failures: list[str] = []

    def send(case):
        resp = case.call(base_url=gateway.url, timeout=30)
        # ?acl and ?location answer before (and whatever) the other parameters say, as in S3:
        # invalid data beside them is rightly not rejected.
        subresource = {"acl", "location"} & set(case.query or {})
        try:
            case.validate_response(resp, checks=checks[1:-1] if subresource else checks[1:],
                                   transport_kwargs={"base_url": gateway.url})
        except (AssertionError, BaseExceptionGroup) as exc:   # schemathesis' FailureGroup
            failures.append(f"{case.operation.label}: {exc}\n{case.as_curl_command()}")
        code = ET.fromstring(resp.content).findtext("Code") if resp.content.startswith(b"<?xml") \
            and b"<Error>" in resp.content else None
        if resp.status_code >= 500 and code not in EXPECTED_5XX:
            failures.append(f"{case.operation.label}: {resp.status_code} {resp.text[:300]}\n"
                            f"{case.as_curl_command()}")
        return resp

    # Known answers first, so that each documented success and error body is checked.
    get_object, head_object = schema["/{bucket}/{key}"]["GET"], schema["/{bucket}/{key}"]["HEAD"]
    listing = schema["/s3/{bucket}"]["GET"]
    key = {"bucket": "cnet", "key": "k1/a.txt"}
    first = send(get_object.Case(path_parameters=key))
    assert first.status_code == 200, (first.status_code, first.text, first.request.url)
    etag = first.headers["etag"][0]   # schemathesis: lowercased names, lists of values
    for case, status in (
            (get_object.Case(path_parameters=key), 200),
            (get_object.Case(path_parameters=key, headers={"Range": "bytes=1-3"}), 206),
            (get_object.Case(path_parameters=key, headers={"If-None-Match": etag}), 304),
            (get_object.Case(path_parameters=key, headers={"If-Match": '"0"'}), 412),
            (get_object.Case(path_parameters=key, headers={"Range": "bytes=99-"}), 416),
            (get_object.Case(path_parameters=key, query={"acl": ""}), 200),
            (get_object.Case(path_parameters=key, headers={"x-amz-checksum-mode": "ENABLED"}), 200),
            (get_object.Case(path_parameters={"bucket": "cnet", "key": "k1/none"}), 404),
            (head_object.Case(path_parameters=key, headers={"Range": "bytes=-2"}), 206),
            (listing.Case(path_parameters={"bucket": "cnet"},
                          query={"list-type": "2", "delimiter": "/", "fetch-owner": "true",
                                 "max-keys": 1, "encoding-type": "url"}), 200),
            (listing.Case(path_parameters={"bucket": "cnet"}, query={"prefix": "k"}), 200),
            (listing.Case(path_parameters={"bucket": "cnet"}, query={"acl": ""}), 200),
            (listing.Case(path_parameters={"bucket": "cnet"}, query={"location": ""}), 200),
            (listing.Case(path_parameters={"bucket": "cnet"}, query={"max-keys": -1}), 400),
            (listing.Case(path_parameters={"bucket": "other"}), 404),
            (schema["/"]["GET"].Case(), 200),
            (schema["/{bucket}"]["OPTIONS"].Case(path_parameters={"bucket": "cnet"}, headers={
                "Origin": "http://x", "Access-Control-Request-Method": "GET"}), 403)):
        resp = send(case)
        assert resp.status_code == status, (case.operation.label, case.headers, case.query,
                                            resp.status_code, resp.text[:300])
    for result in schema.get_all_operations():
        operation = result.ok()
        positive, negative = EXAMPLES.get(operation.label.replace("/s3/", "/"), FEW)
        fuzz(send, operation, GenerationMode.POSITIVE, positive)
        fuzz(send, operation, GenerationMode.NEGATIVE, negative)
    assert not failures, "\n\n".join(failures[:20])
    assert requests.get(f"{gateway.url}/health", timeout=5).json()["status"] == "ok"
