"""REST and the bus are two doors onto the same operations: the same bad input gets the same
error through either (status, code and message), and changes nothing."""

from __future__ import annotations

import pytest

from cnet.client import ClientError, SyncClient
from cnet.ops import OPS, List, Logs, Scale, Submit

from .harness import process_spec

TOKEN = "doors-token"


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value

def _model(name: str, **config) -> dict:
    return {"name": name, "type": "mlmodel", "config": {"model_type": "yolo", **config}}


_BAD_URL = _model("m", model_url="s3://models/k/../m.onnx")
_NO_BUCKET = _model("m", model_url="s3://nobucket/k/m.onnx")
_NO_MODEL = {"name": "c", "type": "opencv", "config": {"model": {"data_key": "k", "path": "m"}}}

# (what is wrong, bus operation, bus args, REST method, REST path, REST JSON body)
CASES = [
    ("unknown status", "list", {"status": "sleeping"}, "GET", "/api/workloads?status=sleeping", None),
    ("unknown type", "list", {"type": "vm"}, "GET", "/api/workloads?type=vm", None),
    ("unknown scope", "list", {"scope": "world"}, "GET", "/api/workloads?scope=world", None),
    ("tail below 0", "logs", {"id": "abc", "tail": -1}, "GET", "/api/workloads/abc/logs?tail=-1", None),
    ("tail not a number", "logs", {"id": "abc", "tail": "ten"}, "GET",
     "/api/workloads/abc/logs?tail=ten", None),
    ("tail too large", "logs", {"id": "abc", "tail": 10_001}, "GET",
     "/api/workloads/abc/logs?tail=10001", None),
    ("unknown id (get)", "get", {"id": "nope"}, "GET", "/api/workloads/nope", None),
    ("unknown id (stop)", "stop", {"id": "nope"}, "POST", "/api/workloads/nope/stop", None),
    ("unknown id (delete)", "delete", {"id": "nope"}, "DELETE", "/api/workloads/nope", None),
    ("unknown id (logs)", "logs", {"id": "nope"}, "GET", "/api/workloads/nope/logs", None),
    ("malformed id", "get", {"id": "not an id!"}, "GET", "/api/workloads/not%20an%20id!", None),
    ("body not an object", "submit", {"workload": [1, 2]}, "POST", "/api/workloads", [1, 2]),
    ("no name", "submit", {"workload": {"type": "process"}}, "POST", "/api/workloads",
     {"type": "process"}),
    ("unknown workload type", "submit", {"workload": {"name": "x", "type": "vm"}}, "POST",
     "/api/workloads", {"name": "x", "type": "vm"}),
    ("unknown field", "submit", {"workload": {**process_spec(), "colour": "red"}}, "POST",
     "/api/workloads", {**process_spec(), "colour": "red"}),
    ("bad strategy", "submit",
     {"workload": {**process_spec(), "placement": {"strategy": "random"}}}, "POST",
     "/api/workloads", {**process_spec(), "placement": {"strategy": "random"}}),
    ("negative cpu", "submit", {"workload": process_spec(cpu=-1)}, "POST", "/api/workloads",
     process_spec(cpu=-1)),
    ("more than the tree has", "submit", {"workload": process_spec(cpu=1000)}, "POST",
     "/api/workloads", process_spec(cpu=1000)),
    ("no command", "submit", {"workload": {"name": "x", "type": "process", "config": {}}},
     "POST", "/api/workloads", {"name": "x", "type": "process", "config": {}}),
    ("NUL in a name", "submit", {"workload": process_spec("a\x00b")}, "POST", "/api/workloads",
     process_spec("a\x00b")),
    ("NUL in an argument", "submit", {"workload": process_spec(args=["a\x00"])}, "POST",
     "/api/workloads", process_spec(args=["a\x00"])),
    ("nested too deep", "submit", {"workload": {**process_spec(), "labels": _deep(40)}}, "POST",
     "/api/workloads", {**process_spec(), "labels": _deep(40)}),
    ("replicas out of range", "submit",
     {"workload": {"name": "f", "type": "opencv", "replicas": 0}}, "POST", "/api/workloads",
     {"name": "f", "type": "opencv", "replicas": 0}),
    ("replicas on a process", "submit", {"workload": {**process_spec(), "replicas": 2}}, "POST",
     "/api/workloads", {**process_spec(), "replicas": 2}),
    ("the set label by hand", "submit",
     {"workload": {**process_spec(), "labels": {"cnet.set": "s"}}}, "POST", "/api/workloads",
     {**process_spec(), "labels": {"cnet.set": "s"}}),
    ("scale an unknown id", "scale", {"id": "nope", "replicas": 2}, "POST",
     "/api/workloads/nope/scale", {"replicas": 2}),
    ("scale without replicas", "scale", {"id": "nope"}, "POST", "/api/workloads/nope/scale", {}),
    ("scale to 0", "scale", {"id": "nope", "replicas": 0}, "POST", "/api/workloads/nope/scale",
     {"replicas": 0}),
    ("scale to a string", "scale", {"id": "nope", "replicas": "2"}, "POST",
     "/api/workloads/nope/scale", {"replicas": "2"}),
    ("scale with an unknown field", "scale", {"id": "nope", "replicas": 2, "x": 1}, "POST",
     "/api/workloads/nope/scale", {"replicas": 2, "x": 1}),
    ("integer beyond 64 bits in an env", "submit",
     {"workload": {**process_spec(), "config": {"command": "sleep", "env": {"A": 2 ** 63}}}},
     "POST", "/api/workloads",
     {**process_spec(), "config": {"command": "sleep", "env": {"A": 2 ** 63}}}),
    ("model_url with '..'", "submit", {"workload": _BAD_URL}, "POST", "/api/workloads", _BAD_URL),
    ("model_url of an unknown bucket", "submit", {"workload": _NO_BUCKET}, "POST",
     "/api/workloads", _NO_BUCKET),
    ("cascade data stored nowhere", "submit", {"workload": _NO_MODEL}, "POST", "/api/workloads",
     _NO_MODEL),
]


@pytest.fixture(scope="module")
def doors(tmp_path_factory):
    from .harness import AgentProcess
    agent = AgentProcess(tmp_path_factory.mktemp("doors"), config={"api": {"token": TOKEN}})
    agent.start()
    client = SyncClient(agent.url, token=TOKEN, timeout=10)
    try:
        yield agent, client
    finally:
        client.close()
        agent.cleanup()


def _bus_error(client: SyncClient, op: str, args: dict) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        client._run(client.client.call(op, args))
    return caught.value.status, caught.value.code, caught.value.message


def _rest_error(agent, method: str, path: str, body) -> tuple[int, str, str]:
    resp = agent.api(method, path, json=body) if body is not None else agent.api(method, path)
    error = resp.json()["error"]
    return resp.status_code, error["code"], error["message"]


@pytest.mark.parametrize("what,op,args,method,path,body", CASES, ids=[c[0] for c in CASES])
def test_the_same_bad_input_gets_the_same_error_through_both_doors(doors, what, op, args,
                                                                  method, path, body):
    agent, client = doors
    before = agent.api("GET", "/api/workloads").json()["workloads"], agent.resources()["allocated"]
    bus = _bus_error(client, op, args)
    rest = _rest_error(agent, method, path, body)
    assert 400 <= rest[0] < 600
    assert bus == rest
    after = agent.api("GET", "/api/workloads").json()["workloads"], agent.resources()["allocated"]
    assert after == before          # nothing rejected changes anything


def test_a_missing_token_is_the_same_refusal_through_both_doors(doors):
    agent, _ = doors
    with SyncClient(agent.url, timeout=10) as anonymous:
        bus = _bus_error(anonymous, "list", {})
        assert anonymous.health()["status"] == "healthy"     # health is public on the bus too
    resp = agent.api("GET", "/api/workloads", headers={"Authorization": "Bearer wrong"})
    rest = resp.status_code, resp.json()["error"]["code"], resp.json()["error"]["message"]
    assert bus == rest
    assert rest[:2] == (401, "unauthorized")


def test_a_node_only_operation_is_unknown_to_a_client(doors):
    _, client = doors
    assert _bus_error(client, "delegate", {"workload": process_spec()})[:2] == (400, "unknown_op")
    assert _bus_error(client, "reconcile", {"ids": []})[:2] == (400, "unknown_op")
    assert _bus_error(client, "locate", {"data_key": "k", "path": "m"})[:2] == (400, "unknown_op")
    assert _bus_error(client, "fetch", {"data_key": "k", "path": "m"})[:2] == (400, "unknown_op")
    assert _bus_error(client, "shutdown", {})[:2] == (400, "unknown_op")


def test_the_client_builds_what_the_operation_parses():
    """One definition of each operation's name and fields: what the client sends parses back
    into the same request."""
    for op in (List(status="running", type="process", scope="subtree"), Logs(id="abc", tail=5),
               Submit(workload=process_spec()), Scale(id="faces", replicas=3)):
        assert OPS[op.name].parse(op.args()) == op
    assert set(OPS) == {"submit", "delegate", "reconcile", "list", "get", "stop", "delete", "logs", "nodes",
                        "resources", "health", "locate", "fetch", "scale"}


# Bodies only JSON can carry (the bus's msgpack cannot even encode them): each is a 400 with
# our error shape, and nothing changes (no reservation left behind, nothing listed).
HOSTILE_JSON = [
    ("lone surrogate in name", '{"name": "a\\ud800", "type": "process", "config": {"command": "sleep"}, "requirements": {"cpu": 1}}'),
    ("lone surrogate in labels", '{"name": "a", "type": "process", "config": {"command": "sleep"}, "labels": {"k": "\\udfff"}, "requirements": {"cpu": 1}}'),
    ("lone surrogate in args", '{"name": "a", "type": "process", "config": {"command": "sleep", "args": ["\\ud800"]}, "requirements": {"cpu": 1}}'),
    ("integer of 400 digits", '{"name": "a", "type": "process", "config": {"command": "sleep"}, "requirements": {"cpu": 1' + "0" * 400 + '}}'),
    ("NaN", '{"name": "a", "type": "process", "config": {"command": "sleep"}, "requirements": {"cpu": NaN}}'),
    ("Infinity", '{"name": "a", "type": "process", "config": {"command": "sleep"}, "requirements": {"memory": Infinity}}'),
    ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000),
    ("nested 1,000 deep in labels", '{"name": "a", "type": "process", "labels": ' + '{"a": ' * 1000 + "{}" + "}" * 1000 + "}"),
]


@pytest.mark.parametrize("what,body", HOSTILE_JSON, ids=[c[0] for c in HOSTILE_JSON])
def test_hostile_json_is_a_clean_400_that_changes_nothing(doors, what, body):
    agent, _ = doors
    before = agent.api("GET", "/api/workloads").json()["workloads"], agent.resources()["allocated"]
    resp = agent.api("POST", "/api/workloads", data=body.encode("utf-8"),
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 400, resp.text
    assert set(resp.json()["error"]) >= {"code", "message"}
    after = agent.api("GET", "/api/workloads").json()["workloads"], agent.resources()["allocated"]
    assert after == before



def test_a_chunked_json_body_over_the_limit_is_our_413(doors):
    agent, _ = doors
    limit = agent.config.get("api", {}).get("max_json_body", 1 << 20)

    def chunks():
        yield b'{"name": "big", "type": "process", "labels": {"x": "'
        for _ in range(limit // 65536 + 40):       # well past the limit and its margin
            yield b"y" * 65536
        yield b'"}}'

    resp = agent.api("POST", "/api/workloads", data=chunks(),
                     headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_an_unknown_api_path_asks_for_the_token_first(doors):
    agent, _ = doors
    anonymous = agent.api("GET", "/api/nothing-here", headers={"Authorization": "Bearer no"})
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "unauthorized")
    known = agent.api("GET", "/api/nothing-here")
    assert known.status_code == 404
    assert known.json()["error"] == {"code": "not_found",
                                     "message": "no such endpoint: /api/nothing-here"}
