"""The router's choice of replica (cnet.svc_router.Chooser), without sockets: least in flight,
near preferred, unusable and recently unreachable replicas skipped, those failing their health
checks only while another is left."""

from __future__ import annotations

from collections import Counter

import pytest

from cnet.svc_router import Chooser, Replica

from .inprocess import ManualClock


def rep(rid: str, near: bool = True, usable: bool = True, healthy: bool = True) -> Replica:
    return Replica(rid, f"node-{rid}", f"http://10.0.0.1:{1000 + len(rid)}", near, usable,
                   healthy)


def test_the_fewest_in_flight_wins():
    chooser = Chooser()
    a, b, c = rep("a"), rep("b"), rep("c")
    for rid, n in (("a", 2), ("b", 1), ("c", 3)):
        for _ in range(n):
            chooser.started(rid)
    assert chooser.pick([a, b, c]) == b
    chooser.started("b")
    chooser.started("b")          # b: 3, a: 2
    assert chooser.pick([a, b, c]) == a


def test_equal_replicas_take_turns():
    chooser = Chooser()
    replicas = [rep("a"), rep("b"), rep("c")]
    picks = Counter(chooser.pick(replicas).id for _ in range(30))
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_spread_when_each_request_stays_in_flight():
    chooser = Chooser()
    replicas = [rep("a"), rep("b"), rep("c")]
    for _ in range(9):
        chooser.started(chooser.pick(replicas).id)
    assert [chooser.in_flight(r.id) for r in replicas] == [3, 3, 3]


def test_near_replicas_are_preferred_until_busier_than_a_far_one():
    chooser = Chooser()
    near, far = rep("near"), rep("far", near=False)
    assert {chooser.pick([far, near]).id for _ in range(10)} == {"near"}   # idle: near only
    chooser.started("near")
    assert chooser.pick([far, near]) == far          # near has 1 in flight, far none
    chooser.started("far")
    assert chooser.pick([far, near]) == near         # equal again: near


def test_a_larger_slack_keeps_more_on_near_replicas():
    chooser = Chooser(near_slack=3)
    near, far = rep("near"), rep("far", near=False)
    for _ in range(2):
        chooser.started("near")
    assert chooser.pick([near, far]) == near         # 2 more than far: still near
    chooser.started("near")
    assert chooser.pick([near, far]) == far          # 3 more: far
    with pytest.raises(ValueError):
        Chooser(near_slack=0)


def test_unusable_and_excluded_replicas_are_never_chosen():
    chooser = Chooser()
    lost, sick, ok = rep("lost", usable=False), rep("sick", usable=False), rep("ok", near=False)
    assert {chooser.pick([lost, sick, ok]).id for _ in range(10)} == {"ok"}
    assert chooser.pick([lost, sick]) is None
    assert chooser.pick([]) is None
    assert chooser.pick([lost, ok], exclude={"ok"}) is None


def test_an_unreachable_replica_is_skipped_for_a_while():
    clock = ManualClock()
    chooser = Chooser(clock=clock, quarantine=3.0)
    a, b = rep("a"), rep("b", near=False)
    chooser.unreachable("a")
    assert {chooser.pick([a, b]).id for _ in range(5)} == {"b"}     # near, but marked
    clock.advance(2.5)
    assert chooser.pick([a, b]) == b
    clock.advance(0.5)
    assert chooser.pick([a, b]) == a                                 # the mark has ended


def test_when_every_usable_replica_is_marked_the_first_to_recover_is_tried():
    clock = ManualClock()
    chooser = Chooser(clock=clock, quarantine=3.0)
    a, b = rep("a"), rep("b")
    chooser.unreachable("a")
    clock.advance(1.0)
    chooser.unreachable("b")
    assert chooser.pick([a, b]) == a
    chooser.reached("b")
    assert chooser.pick([a, b]) == b


def test_a_replica_failing_its_checks_is_taken_only_when_no_other_is_left():
    clock = ManualClock()
    chooser = Chooser(clock=clock, quarantine=3.0)
    sick, ok, far = rep("sick", healthy=False), rep("ok"), rep("far", near=False)
    for _ in range(3):
        chooser.started("ok")                     # busy, and far too: the sick one still waits
    assert {chooser.pick([sick, ok, far]).id for _ in range(5)} == {"far"}
    assert chooser.pick([sick, ok]) == ok
    # The retry of a request that the healthy one failed: the sick one, not a refusal.
    assert chooser.pick([sick, ok, far], exclude={"ok", "far"}) == sick
    chooser.unreachable("ok")                      # this router cannot reach the healthy one
    assert chooser.pick([sick, ok]) == sick
    assert chooser.pick([rep("sick", usable=False, healthy=False), ok]) == ok   # marked, but
    clock.advance(3.0)                                                         # all that is left
    assert chooser.pick([sick, ok]) == ok
    also = rep("also", healthy=False)
    assert {chooser.pick([sick, also]).id for _ in range(4)} == {"sick", "also"}   # none passes


def test_counts_go_back_to_zero_and_are_not_kept_for_idle_replicas():
    chooser = Chooser()
    chooser.started("a")
    chooser.started("a")
    chooser.finished("a")
    assert chooser.in_flight("a") == 1
    chooser.finished("a")
    chooser.finished("a")          # one too many (never below zero)
    assert chooser.in_flight("a") == 0
    assert chooser._in_flight == {}
