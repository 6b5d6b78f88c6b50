"""A reply's bulk bytes as a frame of their own (``Reply.blob``, a fetch chunk's ``data``):
encoded after the body, received without a copy, put back into the result by the requester;
a requester that does not take blobs (an earlier CNET1) gets them in the body. Every misuse of
the fourth frame is a clear ProtocolError or error reply, and changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os

import msgpack
import pytest
import zmq

from bus import BusNode, RemoteError, Request, Sender
from bus import protocol as p
from bus.payloads import check_result

from .harness import FAST, endpoints, running, status, until
from .test_malformed import RawNeighbour

DATA = os.urandom((4 << 20) - 4096)
SHA = hashlib.sha256(DATA).hexdigest()


def chunk(data: bytes = DATA) -> dict:
    return {"size": len(data), "sha256": SHA, "offset": 0, "data": data}


def fetch_request(blobs: bool) -> p.Request:
    return p.Request(corr_id=p.new_corr_id(), op="fetch", args={}, blobs=blobs)


def test_a_fetch_reply_carries_its_data_as_a_blob_frame_not_copied() -> None:
    reply = p.Reply.answer(fetch_request(blobs=True), chunk(), "jiangsu")
    frames = p.encode(reply)
    assert len(frames) == 4 and frames[3] is DATA            # no copy on the way out
    assert b"data" not in frames[2] and len(frames[2]) < 200
    decoded = p.decode(frames)
    assert isinstance(decoded, p.Reply) and decoded.result == {"size": len(DATA), "sha256": SHA,
                                                               "offset": 0}
    assert isinstance(decoded.blob, memoryview) and decoded.blob == DATA
    result = check_result("fetch", decoded.result, decoded.blob)
    assert result["data"] == DATA and result["size"] == len(DATA)


def test_a_requester_that_takes_no_blob_gets_the_data_in_the_body() -> None:
    reply = p.Reply.answer(fetch_request(blobs=False), chunk(), "jiangsu")
    frames = p.encode(reply)
    assert len(frames) == 3 and reply.blob is None
    decoded = p.decode(frames)
    assert decoded.result["data"] == DATA and decoded.blob is None
    assert check_result("fetch", decoded.result)["data"] == DATA   # an earlier node's answer


def test_an_old_request_without_the_blobs_field_is_read_as_taking_none() -> None:
    frames = [p.VERSION, b"request", msgpack.packb({"corr_id": "c1", "op": "fetch"})]
    assert p.decode(frames).blobs is False
    other = p.Reply.answer(p.Request(corr_id="c1", op="get", blobs=True), {"data": b"x"}, "n")
    assert other.blob is None and other.result == {"data": b"x"}     # only fetch has a blob


BLOB = b"\x00" * 16
REQUEST = msgpack.packb({"corr_id": "c42", "op": "get"})


@pytest.mark.parametrize("frames, code", [
    ([p.VERSION, b"request", REQUEST, BLOB], "bad_frame"),
    ([p.VERSION, b"hello", msgpack.packb({"node_id": "n", "role": "child"}), BLOB], "bad_frame"),
    ([p.VERSION, b"heartbeat", msgpack.packb({"node_id": "n", "epoch": 1, "seq": 1,
                                              "snapshot": {}, "sent_at": 1.0}), BLOB], "bad_frame"),
    ([p.VERSION, b"reply", msgpack.packb({"corr_id": "c1", "ok": True}), BLOB, BLOB], "bad_frame"),
    ([p.VERSION, b"reply", msgpack.packb({"corr_id": "c1", "ok": True}),
      b"\x00" * (p.MAX_FRAME_SIZE + 1)], "too_large"),
    ([p.VERSION, b"reply", msgpack.packb({"corr_id": "c1", "ok": False,
                                          "error": {"code": "x", "message": "y"}}), BLOB],
     "bad_field"),
    ([b"CNET9", b"reply", msgpack.packb({"corr_id": "c1", "ok": True}), BLOB],
     "version_mismatch"),
])
def test_a_fourth_frame_anywhere_but_on_an_ok_reply_is_refused(frames: list, code: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(frames)
    assert caught.value.code == code, caught.value.message


def test_a_request_with_a_blob_is_refused_with_its_corr_id_for_the_error_reply() -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode([p.VERSION, b"request", REQUEST, BLOB])
    assert caught.value.corr_id == "c42" and "only a reply" in caught.value.message


def test_encode_refuses_a_blob_over_the_frame_limit() -> None:
    with pytest.raises(ValueError, match="blob"):
        p.encode(p.Reply(corr_id="c1", ok=True, result={}, blob=b"\x00" * (p.MAX_FRAME_SIZE + 1)))


@pytest.mark.parametrize("result, blob, why", [
    ({"size": 1, "sha256": SHA, "offset": 0}, None, "lacks data"),
    ({"size": 1, "sha256": SHA, "offset": 0, "data": b"x"}, b"x", "both in its body"),
    ({"size": 1, "sha256": SHA, "offset": 0, "data": "text"}, None, "binary data"),
    ({"size": 1, "sha256": "not a digest", "offset": 0}, b"x", "sha256"),
    ({"size": -1, "sha256": SHA, "offset": 0}, b"x", "size"),
])
def test_a_fetch_result_that_does_not_fit_its_schema_is_refused(result: dict, blob, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_result("fetch", result, blob)


def test_a_blob_on_the_result_of_another_op_is_refused() -> None:
    with pytest.raises(ValueError, match="carries no blob"):
        check_result("get", {"id": "w1"}, b"x")


async def serve(request: Request, sender: Sender) -> dict:
    if request.op == "fetch":
        return chunk()
    return {"op": request.op}


async def test_a_chunk_travels_between_live_nodes_as_a_blob_and_arrives_whole() -> None:
    parent = BusNode("jiangsu", handler=serve, **FAST)
    async with running(parent):
        child = BusNode("nanjing", parent=endpoints(parent), handler=serve, **FAST)
        async with running(child):
            await until(lambda: status(parent, "nanjing") == "alive"
                        and status(child, "jiangsu") == "alive")
            for asker, holder in ((child, "jiangsu"), (parent, "nanjing")):   # DEALER, ROUTER
                result = await asker.call(holder, "fetch", {})
                data = result["data"]       # a view of libzmq's frame, not a copy of it
                assert isinstance(data, memoryview) and isinstance(data.obj, zmq.Frame)
                assert hashlib.sha256(result["data"]).hexdigest() == SHA
                assert result["size"] == len(DATA)
            async with RawNeighbour(parent.router_endpoint) as raw:   # on the wire
                for blobs, parts in ((True, 4), (False, 3)):
                    await raw.dealer.send_multipart(p.encode(fetch_request(blobs)))
                    frames = await raw.dealer.recv_multipart()
                    assert len(frames) == parts
                    assert check_result("fetch", *_result(p.decode(frames)))["data"] == DATA


def _result(reply: p.Message) -> tuple:
    assert isinstance(reply, p.Reply) and reply.ok
    return reply.result, reply.blob


async def test_hostile_blobs_between_live_nodes_are_refused_and_change_nothing() -> None:
    parent = BusNode("jiangsu", handler=serve, **FAST)
    async with running(parent), RawNeighbour(parent.router_endpoint) as fake:
        assert isinstance(await fake.hello("mallory"), p.Welcome)
        await until(lambda: status(parent, "mallory") == "alive")
        # A request with a blob: an error reply naming it, for that very request.
        await fake.dealer.send_multipart([*p.encode(p.Request(corr_id="c7", op="get")), BLOB])
        (answer,) = await fake.answers()
        assert isinstance(answer, p.Reply) and not answer.ok and answer.corr_id == "c7"
        assert answer.error["code"] == "bad_frame" and "only a reply" in answer.error["message"]

        # Replies to the node's own requests: a blob on a get, a fetch without its data.
        async def answer_with(extra: list[bytes], result: dict) -> RemoteError:
            asked = parent.request("mallory", "get" if extra else "fetch", {}, timeout=5.0)
            task = asyncio.ensure_future(asked)
            (request,) = await fake.answers()
            assert isinstance(request, p.Request)
            await fake.dealer.send_multipart([*p.encode(p.Reply(
                corr_id=request.corr_id, ok=True, result=result, node_id="mallory")), *extra])
            reply = await task
            assert not reply.ok
            return reply.error

        error = await answer_with([BLOB], {"id": "w1"})
        assert error["code"] == "bad_reply" and "carries no blob" in error["message"]
        error = await answer_with([], {"size": 1, "sha256": SHA, "offset": 0})
        assert error["code"] == "bad_reply" and "lacks data" in error["message"]
        assert "fetch" in parent.neighbour("mallory").rejected
        async with RawNeighbour(parent.router_endpoint) as other:      # the node goes on
            await other.dealer.send_multipart(p.encode(fetch_request(True)))
            assert check_result("fetch", *_result(
                p.decode(await other.dealer.recv_multipart())))["data"] == DATA
