"""The agent's OpenAPI document (cnet/openapi.json, served at /api/openapi.json): valid OpenAPI 3.1,
naming every route the agent serves, and true of a live agent, which schemathesis drives from it."""

from __future__ import annotations

import time

import pytest
import requests
import tornado.web

from cnet import __version__
from cnet.api import OnFirstUse, Web, make_app, openapi_document

from .harness import free_port_range
from .service_helpers import fake_install

TOKEN = "openapi-test-token"
METHODS = ("get", "post", "put", "patch", "delete")
LIVE = ("pending", "running", "stopping")
OPENAPI = openapi_document()
# Server errors the document promises for a reason (a full node, an engine that is down), by code.
EXPECTED_5XX = {"insufficient_resources", "no_free_port", "engine_unavailable", "engine_error",
                "unavailable", "service_not_installed", "insufficient_storage"}


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(OPENAPI)
    assert OPENAPI["openapi"].startswith("3.1.")
    assert OPENAPI["info"]["version"] == __version__


def served_routes(app: tornado.web.Application, params: dict[str, str]) -> dict[str, set[str]]:
    """Every path an app routes (catch-alls aside) -> the methods its handler answers;
    ``params`` names each path parameter's pattern (``{"([^/]+)": "{id}"}``)."""
    routes = {}
    for rule in app.wildcard_router.rules:
        path = rule.matcher.regex.pattern.rstrip("$").replace("/?", "").replace("\\.", ".")
        if ".*" in path:
            continue
        for pattern, name in params.items():
            path = path.replace(pattern, name)
        handler = rule.target.target()[0] if isinstance(rule.target, OnFirstUse) else rule.target
        routes[path] = {m for m in METHODS
                        if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}
    return routes


def documented_routes(doc: dict) -> dict[str, set[str]]:
    return {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}


def not_error_shaped(doc: dict) -> list[tuple[str, str, str]]:
    """Every documented 4xx/5xx response (method, path, status) whose body is not the
    document's Error schema."""
    def deref(node: dict) -> dict:
        while "$ref" in node:
            *_, kind, name = node["$ref"].split("/")
            node = doc["components"][kind][name]
        return node

    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return [(method, path, status) for path, item in doc["paths"].items()
            for method in set(item) & set(METHODS)
            for status, response in item[method]["responses"].items()
            if int(status) >= 400 and deref(response).get("content") != error]


def test_every_route_and_method_is_documented():
    """The document and make_app cannot drift apart: the same paths, the same methods."""
    app = make_app(Web(node=None, hub=None, metrics=None, uploads=None, bus_endpoints=dict))
    assert documented_routes(OPENAPI) == served_routes(app, {"([^/]+)": "{id}"})


def test_every_error_response_is_the_error_shape():
    assert not_error_shaped(OPENAPI) == []


def test_the_agent_serves_its_document_without_a_token(make_agent):
    agent = make_agent(config={"api": {"token": TOKEN}})
    resp = requests.get(agent.url + "/api/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    served = resp.json()
    assert served["servers"] == [{"url": agent.url}]
    assert {k: v for k, v in served.items() if k != "servers"} == \
        {k: v for k, v in OPENAPI.items() if k != "servers"}


def test_undocumented_methods_are_405_errors(make_agent):
    agent = make_agent()
    for path, item in OPENAPI["paths"].items():
        if path == "/api/events":
            continue   # see test_the_event_stream_answers_plain_http_with_json_errors
        url = agent.url + path.replace("{id}", "no-such-id")
        for method in set(METHODS) - set(item):
            resp = requests.request(method, url, timeout=10)
            assert resp.status_code == 405, (method, path, resp.status_code)
            assert resp.json()["error"]["code"] == "method_not_allowed"


def test_the_event_stream_answers_plain_http_with_json_errors(make_agent):
    agent = make_agent()
    for method, status in (("GET", 400), ("POST", 405), ("DELETE", 405)):
        resp = requests.request(method, agent.url + "/api/events", timeout=10)
        assert resp.status_code == status
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json()["error"]["code"]


def _validator(name: str):
    """A validator of one of the document's schemas (its $refs resolved in the document), with
    ECMA-262 patterns as JSON Schema has them (Python's re lets ``$`` match before a final
    newline); jsonschema_rs is what schemathesis validates with."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.Draft202012Validator({**OPENAPI, "$ref": f"#/components/schemas/{name}"})


def test_the_examples_fit_their_schemas():
    submission = _validator("WorkloadSubmission")
    examples = OPENAPI["paths"]["/api/workloads"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    assert sorted(examples) == ["container", "datagateway", "mlmodel", "opencv", "process"]
    for example in examples.values():
        submission.validate(example["value"])
    _validator("Error").validate(OPENAPI["components"]["schemas"]["Error"]["example"])


# Submissions the document forbids: each is a 400 from the agent, and changes nothing.
FORBIDDEN = {
    "a process without config": {"name": "p", "type": "process"},
    "a process without command": {"name": "p", "type": "process", "config": {"args": ["1"]}},
    "a blank name": {"name": "  ", "type": "opencv"},
    "a data workload as JSON": {"name": "d", "type": "data"},
    "an unknown field": {"name": "p", "type": "opencv", "colour": 2},
    "replicas on a process": {"name": "p", "type": "process", "config": {"command": "true"},
                              "replicas": 2},
    "no replicas": {"name": "p", "type": "opencv", "replicas": 0},
    "a replica count as a string": {"name": "p", "type": "opencv", "replicas": "2"},
    "a negative requirement": {"name": "p", "type": "opencv", "requirements": {"cpu": -1}},
    "a null cascade": {"name": "p", "type": "opencv", "config": {"cascade_type": None}},
    "a bad bucket": {"name": "g", "type": "datagateway", "config": {"bucket": "A_B"}},
    "an id with a space": {"name": "p", "type": "opencv", "id": "a b"},
    "a model both as a path and as data": {
        "name": "m", "type": "mlmodel", "config": {
            "model_type": "yolo", "model_path": "/m.onnx", "model": {"data_key": "k", "path": "m"}}},
}
# Bugs this document's fuzzing found (500s, or a 201 for a bad id): each is a 400 now.
FIXED_BUGS = {
    "a null gateway bucket (was a 500: check_bucket_name(None))":
        {"name": "g", "type": "datagateway", "config": {"bucket": None}},
    "an id with a trailing newline (was a 201: ID_RE's $ matched before a final newline)":
        {"name": "p", "type": "process", "id": "abc\n", "config": {"command": "true"}},
    "a service_host IDNA cannot encode (was a 500: getaddrinfo's UnicodeError)":
        {"name": "o", "type": "opencv", "config": {"service_host": "a..b"}},
}


def _refused(agent, body: dict) -> None:
    before = agent.api("GET", "/api/workloads").json()["workloads"]
    resp = agent.api("POST", "/api/workloads", json=body)
    assert resp.status_code == 400, resp.text
    _validator("Error").validate(resp.json())
    assert agent.api("GET", "/api/workloads").json()["workloads"] == before


def test_what_the_document_forbids_is_refused(make_agent):
    agent = make_agent()
    for body in FORBIDDEN.values():
        assert list(_validator("WorkloadSubmission").iter_errors(body)), body
        _refused(agent, body)


@pytest.mark.parametrize("what", list(FIXED_BUGS))
def test_bugs_the_fuzzing_found_stay_fixed(make_agent, what):
    _refused(make_agent(), FIXED_BUGS[what])


# -- a live agent, driven from the document -------------------------------------------------

# Examples per operation and mode (valid requests, then invalid ones): the submissions get the
# most, each workload type its share; an unknown id is soon known to be 404.
EXAMPLES = {"POST /api/workloads": (400, 300), "GET /api/workloads": (50, 50)}
FEW = (20, 20)


class Recorder:
    """Sends each case and checks the answer against the document; remembers which workloads
    accepted requests made, and that a rejected one changed none."""

    def __init__(self, agent, checks, ports: tuple[int, int]):
        self.agent = agent
        self.checks = checks
        self.ports = ports          # services.port_range: explicit service ports go there too
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.made: set[str] = set()     # what accepted requests made and left, in their order
        self.failures: list[str] = []
        self.seen: dict[str, dict[str, int]] = {}   # operation -> "status code" -> count

    def ids(self) -> set[str]:
        resp = requests.get(self.agent.url + "/api/workloads", headers=self.headers, timeout=30)
        return {wl["id"] for wl in resp.json()["workloads"]}

    def send(self, case) -> requests.Response | None:
        label = case.operation.label
        self._own_port(case.body)
        before = self.ids() if case.method != "GET" else None
        try:
            resp = case.call(base_url=self.agent.url, timeout=60)
        except requests.RequestException as exc:
            self.failures.append(f"{label}: {exc}\n{case.as_curl_command(headers=self.headers)}")
            return None
        code = error_code(resp)
        self._count(label, f"{resp.status_code} {code or ''}".strip())
        try:
            case.validate_response(resp, checks=self.checks,
                                   transport_kwargs={"base_url": self.agent.url})
        except (AssertionError, BaseExceptionGroup) as exc:   # schemathesis' FailureGroup
            self.failures.append(f"{label}: {exc}")
        if resp.status_code >= 500 and code not in EXPECTED_5XX:
            self.failures.append(f"{label}: {resp.status_code} {resp.text[:300]}\n"
                                 f"{case.as_curl_command(headers=self.headers)}")
        if before is not None:
            self._account(case, resp, before)
        return resp

    def _own_port(self, body) -> None:
        """A valid explicit service_port moves into this test's free range, so that no service
        of ours takes a port some other test is about to use."""
        config = body.get("config") if isinstance(body, dict) else None
        port = config.get("service_port") if isinstance(config, dict) else None
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            first, last = self.ports
            config["service_port"] = first + port % (last - first + 1)

    def _count(self, label: str, outcome: str) -> None:
        counts = self.seen.setdefault(label, {})
        counts[outcome] = counts.get(outcome, 0) + 1

    def _account(self, case, resp, before: set[str]) -> None:
        label = case.operation.label
        if 200 <= resp.status_code < 300:
            if label == "POST /api/workloads":
                self.made.add(resp.json()["id"])
            elif label == "DELETE /api/workloads/{id}":
                self.made.discard(resp.json()["id"])
            return
        after = self.ids()
        if after != before:
            self.failures.append(f"{label}: rejected with {resp.status_code}, yet the workloads "
                                 f"changed: {sorted(before ^ after)}\n"
                                 f"{case.as_curl_command(headers=self.headers)}")


def error_code(resp: requests.Response) -> str | None:
    try:
        return resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def fuzz(send, operation, mode, examples: int) -> None:
    """``send`` each of ``examples`` generated cases of one operation (a fixed seed)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        send(case)

    try:
        run()
    except Unsatisfiable:
        pass  # no invalid request to make: an operation without parameters or body


def _known_good(recorder: Recorder, schema) -> None:
    """Requests that succeed, so every 2xx response the document describes is checked too."""

    def send(path: str, method: str, **parts):
        case = schema[path][method].Case(headers=dict(recorder.headers), **parts)
        return recorder.send(case)

    bodies = [
        {"name": "short", "type": "process", "config": {"command": "sh", "args": ["-c", "echo hi"]}},
        {"name": "long", "type": "process", "config": {"command": "sleep", "args": ["30"]},
         "requirements": {"cpu": 0.5, "memory": 1 << 20}, "labels": {"k": "v"},
         "placement": {"strategy": "binpack"}, "id": "openapi-long"},
        {"name": "faces", "type": "opencv", "config": {"cascade_type": "eye", "workers": 1}},
        {"name": "gateway", "type": "datagateway", "config": {"bucket": "openapi"}},
        {"name": "face set", "type": "opencv", "replicas": 2, "id": "openapi-set",
         "config": {"cascade_type": "face", "workers": 1}},
    ]
    made = []
    for body in bodies:
        resp = send("/api/workloads", "POST", body=body, media_type="application/json")
        assert resp is not None and resp.status_code == 201, resp and resp.text
        made.append(resp.json()["id"])
    again = send("/api/workloads", "POST", body=bodies[1], media_type="application/json")
    assert again.status_code == 200  # the same id and spec: the existing workload
    upload = send("/api/workloads", "POST", body={"type": "data", "name": "blob", "file": [b"bytes"]},
                  media_type="multipart/form-data")
    assert upload.status_code == 201, upload.text
    made.append(upload.json()["id"])
    for query in ({}, {"status": "running"}, {"type": "data", "scope": "subtree"}):
        send("/api/workloads", "GET", query=query)
    for wid in made:
        send("/api/workloads/{id}", "GET", path_parameters={"id": wid})
        for query in ({"tail": 5}, {"format": "text"}):
            send("/api/workloads/{id}/logs", "GET", path_parameters={"id": wid}, query=query)
    scaled = send("/api/workloads/{id}/scale", "POST", path_parameters={"id": "openapi-set"},
                  body={"replicas": 1}, media_type="application/json")
    assert scaled.status_code == 200 and len(scaled.json()["members"]) == 1, scaled.text
    send("/api/workloads/{id}/stop", "POST", path_parameters={"id": made[1]})
    send("/api/workloads/{id}", "DELETE", path_parameters={"id": made[0]})


def _settle(recorder: Recorder) -> None:
    """Nothing but what accepted requests made is there; stopping and deleting it all frees
    every reservation and leaves no file."""
    agent = recorder.agent
    listed = agent.api("GET", "/api/workloads").json()["workloads"]
    # A replica set's members are its own (stopped and deleted with it, by it alone).
    members = {wl["id"] for wl in listed if "cnet.set" in wl["labels"]}
    assert members == {m["id"] for wl in listed for m in wl.get("members", [])}
    assert {wl["id"] for wl in listed} - members == recorder.made
    for wl in listed:
        if wl["id"] not in members:
            assert agent.api("POST", f"/api/workloads/{wl['id']}/stop").status_code == 200
    listed = agent.api("GET", "/api/workloads").json()["workloads"]
    assert not [wl["id"] for wl in listed if wl["status"] in LIVE]
    stored = sum(wl["requirements"]["storage"] for wl in listed if wl["type"] == "data")
    assert agent.resources()["allocated"] == {"cpu": 0.0, "memory": 0, "gpu": 0, "storage": stored}
    for wl in listed:
        if wl["id"] not in members:
            assert agent.api("DELETE", f"/api/workloads/{wl['id']}").status_code == 200
    assert agent.api("GET", "/api/workloads").json()["count"] == 0
    assert agent.resources()["allocated"] == {"cpu": 0.0, "memory": 0, "gpu": 0, "storage": 0}
    data = agent.state_dir / "data"
    left = [str(p.relative_to(data)) for p in data.rglob("*")
            if p.is_file() and p.name != ".cnet.lock"] if data.exists() else []
    assert not left


def test_a_live_agent_keeps_to_its_document(make_agent, tmp_path):
    """schemathesis drives a live agent (with a token) from the document it serves: no server
    error but the documented ones, every response as documented, and a rejected request
    changes nothing."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    env, _flags = fake_install(tmp_path)   # service workloads run a light stand-in program
    first, last = free_port_range(20)
    agent = make_agent(config={
        "api": {"token": TOKEN},
        "resources": {"cpu": 4.0, "memory": 8 << 30, "gpu": 0, "storage": 1 << 30},
        "container": {"engine_url": "unix:///nonexistent/docker.sock"},
        "services": {"port_range": [first, last], "start_timeout": 20},
    }, env=env)
    config = schemathesis.Config.from_dict({
        "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
        "output": {"sanitization": {"enabled": False}},   # reproducers as sent (data_key too)
    })
    schema = schemathesis.openapi.from_url(agent.url + "/api/openapi.json", config=config)
    checks = [getattr(schemathesis.checks, name) for name in (
        "status_code_conformance", "content_type_conformance", "response_schema_conformance",
        "response_headers_conformance", "negative_data_rejection", "ignored_auth")]
    recorder = Recorder(agent, checks, (first, last))
    started = time.monotonic()
    _known_good(recorder, schema)
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/events":
            continue   # a WebSocket: see test_the_event_stream_answers_plain_http_with_json_errors
        positive, negative = EXAMPLES.get(operation.label, FEW)
        fuzz(recorder.send, operation, GenerationMode.POSITIVE, positive)
        fuzz(recorder.send, operation, GenerationMode.NEGATIVE, negative)
    print(f"\nschemathesis: {time.monotonic() - started:.1f} s")
    for label, seen in recorder.seen.items():
        print(f"  {label}: {dict(sorted(seen.items()))}")
    assert not recorder.failures, "\n\n".join(recorder.failures[:20])
    _settle(recorder)
