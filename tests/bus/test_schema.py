"""The payload schemas of bus/payloads.py, and the seq and rejection rules of the neighbour
table: pure checks, no sockets."""

from __future__ import annotations

import math

import msgpack
import pytest

from bus import payloads, schema
from bus import protocol as p
from bus.liveness import MAX_SEQ_STEP, Neighbours

SNAPSHOT = {
    "node_id": "nanjing", "address": "http://10.0.0.2:8081", "labels": {"zone": "south"},
    "seq": 12, "capacity": {"cpu": 4.0, "memory": 8 << 30, "gpu": 0, "storage": 100 << 30},
    "allocated": {"cpu": 1.0, "memory": 0, "gpu": 0, "storage": 0},
    "available": {"cpu": 3.0, "memory": 8 << 30, "gpu": 0, "storage": 100 << 30},
    "usage": {"cpu": 0.2, "memory": 1 << 30, "gpu": 0, "storage": 5 << 30, "cpu_percent": 5.0,
              "memory_percent": 12.5, "sampled_at": 1.7e9},
    "workloads": {"count": 1, "names": ["web"], "labels": ["app=web"]}, "uptime": 12.5,
}
SUMMARY = {"nodes": 2, "node_ids": ["nanjing", "gulou"], "labels": ["zone=south"],
           "allocated": {"cpu": 1.5, "memory": 0, "gpu": 0, "storage": 0}, "live_workloads": 2,
           "max_free": {"cpu": 3.0, "memory": 1, "gpu": 0, "storage": 1},
           "reach_free": {"cpu": 3.0, "memory": 1, "gpu": 0, "storage": 1},
           "reach_node_ids": [], "reach_labels": []}
WORKLOAD = {"id": "w1", "name": "web", "type": "process", "status": "running",
            "node_id": "nanjing", "origin": "jiangsu", "process_pid": 42, "endpoint": None,
            "exit_code": None, "message": None, "restart_count": 0, "created_at": 1.7e9,
            "started_at": 1.7e9, "finished_at": None, "config": {"command": "sleep"},
            "requirements": {"cpu": 1.0, "memory": 0, "gpu": 0, "storage": 0},
            "placement": {}, "labels": {"app": "web"}, "version": 3, "via": "nanjing",
            "files": [{"path": "a.txt", "size": 3}]}


def test_a_real_snapshot_summary_and_workload_pass_unchanged() -> None:
    assert payloads.SNAPSHOT.check(SNAPSHOT, "snapshot") == SNAPSHOT
    assert payloads.SUMMARY.check(SUMMARY, "summary") == SUMMARY
    assert payloads.WORKLOAD.check(WORKLOAD, "workload") == WORKLOAD


@pytest.mark.parametrize("schema,value,where", [
    (payloads.SUMMARY, {"nodes": "many"}, "summary.nodes"),
    (payloads.SUMMARY, {"nodes": 0}, "summary.nodes"),
    (payloads.SUMMARY, {"node_ids": ["ok", "not an id"]}, "summary.node_ids[1]"),
    (payloads.SUMMARY, {"max_free": {"cpu": math.inf}}, "summary.max_free.cpu"),
    (payloads.SUMMARY, {"node_ids": ["n"] * (schema.MAX_ITEMS + 1)}, "summary.node_ids"),
    (payloads.SNAPSHOT, {"workloads": [1]}, "snapshot.workloads"),
    (payloads.SNAPSHOT, {"workloads": {"count": -1}}, "snapshot.workloads.count"),
    (payloads.SNAPSHOT, {"available": {"cpu": 1e9}}, "snapshot.available.cpu"),
    (payloads.SNAPSHOT, {"available": {"cpu": math.nan}}, "snapshot.available.cpu"),
    (payloads.SNAPSHOT, {"available": {"cpu": True}}, "snapshot.available.cpu"),
    (payloads.SNAPSHOT, {"capacity": {"memory": 1.5}}, "snapshot.capacity.memory"),
    (payloads.SNAPSHOT, {"labels": {"zone": 5}}, "snapshot.labels.zone"),
    (payloads.SNAPSHOT, {"labels": "zone=south"}, "snapshot.labels"),
    (payloads.SNAPSHOT, {"address": "a\x00b"}, "snapshot.address"),
    (payloads.SNAPSHOT, {"extra": b"bytes"}, "snapshot.extra"),
    (payloads.SNAPSHOT, {"extra": [[[[[[[[[["deep"]]]]]]]]]]}, "nested deeper"),
    (payloads.SNAPSHOT, {"extra": {"a": math.inf}}, "snapshot.extra.a"),
    (payloads.WORKLOAD, {"name": "no id"}, "lacks id"),
    (payloads.WORKLOAD, {"id": "w1", "status": 5}, "workload.status"),
    (payloads.WORKLOAD, {"id": "w1", "requirements": {"cpu": "1"}}, "workload.requirements.cpu"),
    (payloads.WORKLOAD, {"id": "w1", "labels": {"a": ["b"]}}, "workload.labels.a"),
])
def test_junk_is_refused_naming_the_field(schema: schema.Schema, value: dict, where: str) -> None:
    name = ("workload" if schema is payloads.WORKLOAD else "summary" if schema is payloads.SUMMARY
            else "snapshot")
    with pytest.raises(ValueError) as caught:
        schema.check(value, name)
    assert where in str(caught.value)


def test_unknown_keys_are_dropped_inside_records_and_kept_bounded_on_top() -> None:
    snap = payloads.SNAPSHOT.check({"capacity": {"cpu": 1, "colour": "red"}, "future": {"x": [1]}},
                            "snapshot")
    assert snap == {"capacity": {"cpu": 1}, "future": {"x": [1]}}


def test_event_data_by_kind_and_free_form_for_others() -> None:
    assert payloads.EVENT_DATA["workload"].check({"id": "w1", "status": "running"}, "d")
    with pytest.raises(ValueError, match="lacks id"):
        payloads.EVENT_DATA["workload_deleted"].check({"node_id": "n"}, "d")
    ok = p.Event(node_id="n", epoch=1, seq=1, kind="tick", data={"n": 1}, sent_at=0.0)
    assert p.decode(p.encode(ok)) == ok
    for data in ({"n": math.nan}, {"n": "a\x00"}):
        bad = p.encode(p.Event(node_id="n", epoch=1, seq=1, kind="tick", data=data, sent_at=0.0))
        with pytest.raises(p.ProtocolError):
            p.decode(bad)


def test_decode_refuses_a_heartbeat_with_a_junk_payload() -> None:
    def beat(**fields: object) -> list[bytes]:
        body = {"node_id": "n", "epoch": 1, "seq": 1, "snapshot": {}, "sent_at": 1.0, **fields}
        return [p.VERSION, b"heartbeat", msgpack.packb(body)]

    assert isinstance(p.decode(beat(summary=SUMMARY, snapshot=SNAPSHOT)), p.Heartbeat)
    for fields, where in [({"summary": {"nodes": "many"}}, "summary.nodes"),
                          ({"snapshot": {"workloads": [1]}}, "snapshot.workloads"),
                          ({"sent_at": math.nan}, "sent_at"),
                          ({"seq": 2**63}, "seq")]:
        with pytest.raises(p.ProtocolError) as caught:
            p.decode(beat(**fields))
        assert caught.value.code == "bad_field" and where in caught.value.message
        assert caught.value.node_id == "n"        # the transport knows whom to blame


def test_a_snapshot_equal_to_the_last_one_checked_is_given_what_was_kept_then() -> None:
    """An idle node's beats repeat its snapshot: the check is not walked again, and what is
    kept is the value that passed (a bool where a number was, loosely equal, is not let in)."""
    def beat(node_id: str, snapshot: dict) -> list[bytes]:
        body = {"node_id": node_id, "epoch": 1, "seq": 1, "snapshot": snapshot, "sent_at": 1.0}
        return [p.VERSION, b"heartbeat", msgpack.packb(body)]

    first = p.decode(beat("repeats", {**SNAPSHOT, "labels": {"zone": "south"}}))
    again = p.decode(beat("repeats", {**SNAPSHOT, "labels": {"zone": "south"}}))
    assert again.snapshot is first.snapshot
    sly = {**SNAPSHOT, "workloads": {**SNAPSHOT["workloads"], "count": True}}   # True == 1
    kept = p.decode(beat("repeats", sly)).snapshot
    assert kept is first.snapshot and kept["workloads"]["count"].__class__ is int
    assert p.decode(beat("other", {**SNAPSHOT})).snapshot is not first.snapshot
    with pytest.raises(p.ProtocolError, match="snapshot.workloads.count"):
        p.decode(beat("fresh", sly))                 # checked afresh: refused
    changed = {**SNAPSHOT, "seq": 13}
    assert p.decode(beat("repeats", changed)).snapshot == changed
    with pytest.raises(p.ProtocolError, match="snapshot.available.cpu"):
        p.decode(beat("repeats", {**changed, "available": {"cpu": math.inf}}))


def test_error_replies_and_kept_results_are_checked() -> None:
    good = p.Reply(corr_id="c1", ok=False, error={"code": "x", "message": "m",
                                                    "details": {"status": 409, "reasons": ["r"]}})
    assert p.decode(p.encode(good)) == good
    for error in ({"code": "x", "message": "m", "details": {"status": "many"}},
                  {"code": "x", "message": "m", "details": {"reasons": "r"}}):
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(p.Reply(corr_id="c1", ok=False, error=error)))
    assert payloads.check_result("delegate", WORKLOAD) == WORKLOAD
    with pytest.raises(ValueError, match="lacks"):
        payloads.check_result("delegate", {"id": "w1"})
    with pytest.raises(ValueError, match="logs"):
        payloads.check_result("logs", {"logs": 5})
    assert payloads.check_result("anything_else", {"any": object}) == {"any": object}


def test_hello_endpoints_and_session_are_checked() -> None:
    ok = p.Hello(node_id="n", role="child", router="tcp://a:1", pub="tcp://a:2", session="abc")
    assert p.decode(p.encode(ok)) == ok
    for fields in ({"pub": "garbage"}, {"router": "tcp://a:1 b"}, {"session": "not a nonce!"},
                   {"http": "x" * 2000}, {"epoch": -1}):
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(p.Hello(node_id="n", role="child", **fields)))


def _table(seq: int = 5) -> Neighbours:
    table = Neighbours(3)
    table.joined("n", "child", 10.0, epoch=1, http="", router="", pub="", interval=1.0)
    table.snapshot("n", 1, seq, {"cpu": 1}, None, 0.0)
    return table


def test_a_seq_that_leaps_is_refused_and_a_new_session_starts_afresh() -> None:
    table = _table()
    assert table.seq_refusal("n", 1, 5 + MAX_SEQ_STEP) is None
    assert "leaps" in table.seq_refusal("n", 1, 6 + MAX_SEQ_STEP)
    assert table.seq_refusal("n", 2, 2**62) is None          # another incarnation: not this rule
    table.snapshot("n", 1, 2**62, {"cpu": 9}, None, 0.0)     # taken anyway, say
    table.joined("n", "child", 11.0, epoch=1, http="", router="", pub="", interval=1.0)
    assert table.snapshot("n", 1, 7, {"cpu": 2}, None, 0.0)  # the next session's seq counts


def test_rejections_are_noted_on_the_entry_only_when_new() -> None:
    table = _table()
    assert table.reject("n", "heartbeat: bad") is True
    assert table.reject("n", "heartbeat: bad") is False
    assert table.reject("unknown", "x") is False
    state = table.get("n")
    assert (state.rejected, state.rejections) == ("heartbeat: bad", 2)
    table.joined("n", "child", 11.0, epoch=2, http="", router="", pub="", interval=1.0)
    assert table.get("n").rejected == ""                    # a new incarnation starts clean


def test_alive_means_heard_within_the_window() -> None:
    table = _table()
    assert table.is_alive("n", 13.0) and not table.is_alive("n", 13.5)
    assert not table.is_alive("unknown", 10.0)


def _agrees(checker: schema.Schema, value: object) -> None:
    """The compiled check keeps what the declarative walk keeps, and refuses what it refuses."""
    try:
        expected = checker.explain(value, "v")
    except ValueError:
        with pytest.raises(schema._Refused):
            checker.compiled(value)
        with pytest.raises(ValueError):
            checker.check(value, "v")
        return
    assert checker.compiled(value) == expected
    assert checker.check(value, "v") == expected


def _values(checker: schema.Schema, junk):
    """Values shaped like ``checker``'s, each part sometimes junk or just out of bounds."""
    from hypothesis import strategies as st

    if isinstance(checker, schema.Number):
        lo, hi = int(max(checker.lo, -2**64)), int(min(checker.hi, 2**64))
        good = st.one_of(st.integers(lo, hi), st.sampled_from([lo - 1, hi + 1, lo, hi])) \
            if checker.whole else st.floats(checker.lo, checker.hi)
        return st.one_of(good, st.sampled_from([True, math.nan, math.inf, -math.inf, 1.5,
                                                 float(hi) * 2, -0.0]), junk)
    if isinstance(checker, schema.Text):
        return st.one_of(st.sampled_from(["nanjing", "w1", "zone=south", "a\x00b", "not an id",
                                          "x" * (checker.max_len + 1), "-x", ""]),
                         st.text(max_size=6), junk)
    if isinstance(checker, schema.Maybe):
        return st.one_of(st.none(), _values(checker.inner, junk))
    if isinstance(checker, schema.ListOf):
        return st.one_of(st.lists(_values(checker.item, junk), max_size=3),
                         st.just(["n"] * (checker.max_len + 1)), junk)
    if isinstance(checker, schema.MapOf):
        keys = st.one_of(st.text(max_size=4), st.binary(max_size=2),
                         st.sampled_from(["k\x00", "x" * (checker.key.max_len + 1)]))
        return st.one_of(st.dictionaries(keys, _values(checker.value, junk), max_size=3), junk)
    if isinstance(checker, schema.Record):
        fields = st.fixed_dictionaries({}, optional={
            name: _values(spec, junk) for name, spec in checker.fields.items()})
        extra = st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=2),
                                          st.just("k\x00")), junk, max_size=2)
        return st.one_of(st.builds(lambda a, b: {**b, **a}, fields, extra), junk)
    return junk                                       # Plain: anything


def test_the_compiled_checks_agree_with_the_declarative_walk() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                        st.floats(allow_nan=True, allow_infinity=True), st.binary(max_size=4),
                        st.sampled_from(["ok", "a\x00b", "x" * 1100]), st.text(max_size=4))
    junk = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=3), st.binary(
            max_size=2)), inner, max_size=3)), max_leaves=12)
    deep = [[[[[[[[1]]]]]]]]
    checkers = [payloads.SNAPSHOT, payloads.SUMMARY, payloads.WORKLOAD, payloads.ERROR,
                payloads.EVENT_DATA["node"], payloads.RESULTS["delegate"],
                payloads.RESULTS["reconcile"], payloads.RESULTS["logs"], schema.Plain(3),
                schema.MapOf(schema.Text(4), payloads._COUNT)]

    @settings(max_examples=100, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data) -> None:
        for checker in checkers:
            _agrees(checker, data.draw(_values(checker, junk)))

    run()
    for value in (SNAPSHOT, SUMMARY, WORKLOAD, {"extra": deep}, {"extra": [deep]}):
        for checker in checkers:
            _agrees(checker, value)
    leaves = [leaf for checker in checkers for leaf in _leaves(checker)]
    edges = [True, False, None, math.nan, math.inf, -math.inf, 1.5, -0.0, 0, 2**63, -2**63 - 1,
             "", "a\x00", "nanjing", "not an id", b"x", [1], {}]
    for leaf in leaves:
        bounds = [leaf.lo, leaf.hi, leaf.lo - 1, leaf.hi + 1] if isinstance(leaf, schema.Number) \
            else ["x" * leaf.max_len, "x" * (leaf.max_len + 1)]
        for value in [*edges, *bounds]:
            _agrees(leaf, value)


def _leaves(checker: schema.Schema) -> list[schema.Schema]:
    if isinstance(checker, (schema.Number, schema.Text)):
        return [checker]
    inner = {schema.Maybe: lambda c: [c.inner], schema.ListOf: lambda c: [c.item],
             schema.MapOf: lambda c: [c.key, c.value],
             schema.Record: lambda c: [*c.fields.values(), *([c.extra] if c.extra else [])]}
    return [leaf for part in inner.get(type(checker), lambda c: [])(checker)
            for leaf in _leaves(part)]
