"""Hello admission as a pure decision: every refusal, without sockets, on an injected time."""

from __future__ import annotations

import pytest

from bus.admission import refusal
from bus.liveness import Neighbours
from bus.protocol import PROTOCOL, Hello


def _view(*joined: tuple[str, str, int]) -> Neighbours:
    view = Neighbours(3)
    for node_id, role, epoch in joined:
        view.joined(node_id, role, 100.0, epoch=epoch, http="", router="", pub="", interval=1.0)
    return view


def _hello(node_id: str = "nanjing", role: str = "child", **fields) -> Hello:
    return Hello(node_id=node_id, role=role, epoch=fields.pop("epoch", 7), **fields)


def test_a_new_child_or_peer_is_admitted():
    assert refusal(_hello(), own_id="jiangsu", neighbours=_view(), now=100.0) is None
    assert refusal(_hello(role="peer"), own_id="jiangsu", neighbours=_view(), now=100.0) is None


@pytest.mark.parametrize("hello,view,options,code", [
    (_hello(protocol=PROTOCOL + 1), _view(), {}, "version_mismatch"),
    (_hello("jiangsu"), _view(), {}, "duplicate_node"),
    (_hello(epoch=8), _view(("nanjing", "child", 7)), {}, "duplicate_node"),
    (_hello(role="peer"), _view(("nanjing", "child", 7)), {}, "role_conflict"),
    (_hello(), _view(("a", "child", 1), ("b", "child", 2)), {"limit": 2}, "too_many_neighbours"),
    (_hello(), _view(), {"token": "t"}, "unauthorized"),
    (_hello(token="wrong"), _view(), {"token": "t"}, "unauthorized"),
], ids=["protocol", "own id", "another incarnation", "role", "too many", "no token", "wrong token"])
def test_refusals(hello, view, options, code):
    refused = refusal(hello, own_id="jiangsu", neighbours=view, now=101.0, **options)
    assert refused is not None and refused[0] == code and refused[1]


def test_the_same_incarnation_rejoins_and_a_lost_one_may_change_role():
    view = _view(("nanjing", "child", 7))
    assert refusal(_hello(epoch=7), own_id="jiangsu", neighbours=view, now=101.0) is None
    assert refusal(_hello(token="t"), own_id="jiangsu", neighbours=_view(), now=101.0,
                   token="t") is None
    view.expire(200.0)     # silent for 100 s: lost
    assert refusal(_hello(role="peer", epoch=9), own_id="jiangsu", neighbours=view,
                   now=200.0) is None
