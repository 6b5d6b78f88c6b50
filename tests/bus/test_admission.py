"""Hello admission as a pure decision: every refusal, without sockets, on an injected time."""

from __future__ import annotations

import pytest

from bus.admission import Admission, refusal
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


def _check(hello: Hello, view: Neighbours, now: float = 101.0, **where) -> str | None:
    refused = refusal(hello, own_id="jiangsu", neighbours=view, now=now, **where)
    return refused and refused[0]


def test_an_alive_node_is_not_taken_over_from_another_connection():
    view = _view(("nanjing", "child", 7))
    # The impostor read the epoch off nanjing's PUB; it has no session of this connection.
    assert _check(_hello(epoch=7), view, connection="other", session="s1") == "duplicate_node"
    assert _check(_hello(epoch=7, session="guess"), view, connection="other",
                  session="s1") == "duplicate_node"
    reason = refusal(_hello(epoch=7), own_id="jiangsu", neighbours=view, now=101.0,
                     connection="other", session="s1")[1]
    assert "already joined and alive on another connection" in reason
    # The same party reconnecting shows the session and the epoch it joined with.
    assert _check(_hello(epoch=7, session="s1"), view, connection="other", session="s1") is None
    assert _check(_hello(epoch=8, session="s1"), view, connection="other",
                  session="s1") == "duplicate_node"
    # On the connection it joined on, a hello again is the same party.
    assert _check(_hello(epoch=7), view, connection="same", session="s1") is None


def test_once_the_known_connection_is_lost_a_rejoin_is_admitted():
    view = _view(("nanjing", "child", 7))          # last heard at 100.0, window 3 s
    assert _check(_hello(epoch=7), view, now=103.0, connection="other") == "duplicate_node"
    assert _check(_hello(epoch=7), view, now=103.5, connection="other") is None   # silent: lost
    view.lose("nanjing")                           # it said bye
    assert _check(_hello(epoch=9), view, connection="other") is None


def test_one_connection_speaks_for_one_node():
    assert _check(_hello("gulou"), _view(("nanjing", "child", 7)),
                  joined_as="nanjing") == "bad_hello"
    assert _check(_hello(), _view(), joined_as="nanjing") is None


def test_admission_keeps_who_speaks_on_which_connection():
    view = Neighbours(3)
    door = Admission("jiangsu", view, interval=1.0)
    assert door.admit(b"c1", _hello(interval=2.0), 100.0) is None
    first = door.session_of["nanjing"]
    assert door.routes == {b"c1": "nanjing"} and door.identity_of == {"nanjing": b"c1"}
    state = view.get("nanjing")
    assert (state.role, state.epoch, state.interval) == ("child", 7, 2.0)   # a child's own pace
    # Another connection under that id, alive and without the session: refused, nothing moves.
    assert door.admit(b"c2", _hello(), 100.5)[0] == "duplicate_node"
    assert door.routes == {b"c1": "nanjing"} and door.session_of["nanjing"] == first
    # The same party, reconnected (the session of its last welcome): it moves to the new one.
    assert door.admit(b"c2", _hello(session=first), 101.0) is None
    assert door.routes == {b"c2": "nanjing"} and door.identity_of == {"nanjing": b"c2"}
    assert door.session_of["nanjing"] != first
    # A bye on the old connection speaks for nobody; on the current one it ends the join.
    assert door.leave(b"c1") is None and door.identity_of == {"nanjing": b"c2"}
    assert door.leave(b"c2") == "nanjing"
    assert door.routes == door.identity_of == door.session_of == {}


def test_admission_takes_a_peer_at_the_slower_of_the_two_paces_and_checks_the_token():
    view = Neighbours(3)
    door = Admission("jiangsu", view, interval=1.5, token="t")
    assert door.admit(b"p", _hello("anhui", "peer"), 100.0)[0] == "unauthorized"
    assert door.routes == {} and view.get("anhui") is None
    assert door.admit(b"p", _hello("anhui", "peer", token="t", interval=1.0), 100.0) is None
    assert (view.get("anhui").role, view.get("anhui").interval) == ("peer", 1.5)
