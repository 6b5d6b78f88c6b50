"""The protocol module: every message type round-trips; every kind of bad frame is a ProtocolError."""

from __future__ import annotations

import random

import msgpack
import pytest

from bus import protocol as p


def body(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


SAMPLES: list[p.Message] = [
    p.Hello(node_id="nanjing", role="child", epoch=7, router="tcp://a:1", pub="tcp://a:2",
            http="http://a:8081", interval=0.5, curve_key="k" * 40),
    p.Welcome(node_id="jiangsu", role="parent", epoch=9, router="tcp://b:1", pub="tcp://b:2"),
    p.Refuse(node_id="jiangsu", code="duplicate_node", reason="already joined"),
    p.Heartbeat(node_id="nanjing", epoch=7, seq=3, snapshot={"cpu": {"free": 1.5}}, sent_at=1.0,
                summary={"nodes": 2}),
    p.Update(node_id="nanjing", epoch=7, seq=4, snapshot={"cpu": 2}, sent_at=2.0),
    p.Event(node_id="nanjing", epoch=7, seq=5, kind="workload", data={"id": "w1"}, sent_at=3.0),
    p.Request(corr_id=p.new_corr_id(), op="submit", args={"name": "x"}, token="t", hops=1,
              visited=["jiangsu"]),
    p.Reply(corr_id="abc", ok=True, result={"id": "w1"}, node_id="nanjing"),
    p.Reply(corr_id="abc", ok=False, error={"code": "not_found", "message": "no such workload"}),
    p.Bye(node_id="nanjing", reason="stopping"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert frames[0] == p.VERSION and frames[1] == msg.TYPE
    assert p.decode(frames) == msg


def test_published_round_trip() -> None:
    msg = SAMPLES[4]
    topic, decoded = p.decode_published(p.encode(msg, topic=p.TOPIC_UPDATE))
    assert topic == p.TOPIC_UPDATE and decoded == msg
    with pytest.raises(p.ProtocolError):
        p.decode_published(p.encode(SAMPLES[0], topic=b"update"))   # a hello is no broadcast


def test_every_type_is_registered() -> None:
    assert {type(m) for m in SAMPLES} == set(p.MESSAGE_TYPES.values())


HELLO = body(node_id="n", role="child")


@pytest.mark.parametrize("frames, code", [
    ([b"garbage"], "bad_frame"),
    ([p.VERSION, b"hello"], "bad_frame"),
    ([b"HTTP/1.1", b"hello", HELLO], "bad_frame"),
    ([b"CNET9", b"hello", HELLO], "version_mismatch"),
    ([p.VERSION, b"frobnicate", body(x=1)], "unknown_type"),
    ([p.VERSION, b"hello", b"\xc1\xc1"], "bad_body"),
    ([p.VERSION, b"hello", HELLO + b"trailing"], "bad_body"),
    ([p.VERSION, b"hello", msgpack.packb([1, 2])], "bad_body"),
    ([p.VERSION, b"hello", msgpack.packb({1: 2})], "bad_body"),
    ([p.VERSION, b"hello", msgpack.packb(msgpack.ExtType(5, b"x"))], "bad_body"),
    ([p.VERSION, b"hello", body(node_id="n")], "bad_field"),
    ([p.VERSION, b"hello", body(node_id="n", role="boss")], "bad_field"),
    ([p.VERSION, b"hello", body(node_id="has space", role="child")], "bad_field"),
    ([p.VERSION, b"hello", body(node_id=5, role="child")], "bad_field"),
    ([p.VERSION, b"heartbeat", body(node_id="n", epoch=1, seq=True, snapshot={}, sent_at=1.0)], "bad_field"),
    ([p.VERSION, b"heartbeat", body(node_id="n", epoch=1, seq=-1, snapshot={}, sent_at=1.0)], "bad_field"),
    ([p.VERSION, b"heartbeat", body(node_id="n", epoch=1, seq=1, snapshot=[], sent_at=1.0)], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="c1", op="Drop Table")], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="c1", op="x" * 65)], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="c1", op="get", args="x")], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="c1", op="get", visited=[1])], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="c1", op="get", hops=p.MAX_HOPS + 1)], "bad_field"),
    ([p.VERSION, b"request", body(corr_id="bad id!", op="get")], "bad_field"),
    ([p.VERSION, b"reply", body(corr_id="c1", ok=False)], "bad_field"),
    ([p.VERSION, b"hello", b"\x00" * (p.MAX_FRAME_SIZE + 1)], "too_large"),
])
def test_bad_frames_are_protocol_errors(frames: list[bytes], code: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(frames)
    assert caught.value.code == code, caught.value.message


def test_error_keeps_corr_id_for_the_reply() -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode([p.VERSION, b"request", body(corr_id="c42", op="NOT OK")])
    assert caught.value.corr_id == "c42"


def test_refuse_is_readable_across_versions() -> None:
    frames = p.encode(p.Refuse(node_id="a", code="version_mismatch", reason="speak CNET1"))
    frames[0] = b"CNET7"
    assert isinstance(p.decode(frames), p.Refuse)


def test_encode_refuses_oversized_and_unencodable() -> None:
    with pytest.raises(ValueError):
        p.encode(p.Update(node_id="n", epoch=1, seq=1, snapshot={"x": b"0" * p.MAX_FRAME_SIZE},
                          sent_at=0.0))
    with pytest.raises(TypeError):
        p.encode(p.Update(node_id="n", epoch=1, seq=1, snapshot={"x": object()}, sent_at=0.0))


def test_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(1234)
    valid = [p.encode(m) for m in SAMPLES]
    for _ in range(5000):
        frames = list(rng.choice(valid))
        i = rng.randrange(3)
        data = bytearray(frames[i])
        for _ in range(rng.randint(1, 4)):
            if data and rng.random() < 0.7:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = data[: rng.randrange(len(data) + 1)]
        frames[i] = bytes(data)
        try:
            p.decode(frames)
        except p.ProtocolError:
            pass
