"""The neighbour table alone, on an injected clock: loss, return, stale snapshots, incarnations."""

from __future__ import annotations

from bus.liveness import ALIVE, LOST, Neighbours


def join(table: Neighbours, node_id: str = "nanjing", now: float = 0.0, epoch: int = 1) -> None:
    table.joined(node_id, "child", now, epoch=epoch, http="", router="", pub="", interval=1.0)


def test_lost_after_misses_and_alive_again() -> None:
    table = Neighbours(misses=3)
    join(table)
    assert table.expire(2.9) == []
    table.heard("nanjing", 2.9)
    assert table.expire(5.8) == []
    lost = table.expire(6.0)
    assert [s.node_id for s in lost] == ["nanjing"] and table.get("nanjing").status == LOST
    assert table.expire(10.0) == []                       # reported once
    # A message alone (queued during a cut, say) is no proof of both directions: still lost
    # until a handshake.
    assert table.heard("nanjing", 11.0) is False
    assert table.get("nanjing").status == LOST
    join(table, now=11.0)
    assert table.get("nanjing").status == ALIVE
    assert table.heard("nanjing", 11.5) is True


def test_stale_snapshots_are_ignored() -> None:
    table = Neighbours()
    join(table)
    assert table.snapshot("nanjing", 1, 5, {"cpu": 1}, None, 0.0) is True
    assert table.snapshot("nanjing", 1, 4, {"cpu": 9}, None, 0.0) is False
    assert table.snapshot("nanjing", 1, 5, {"cpu": 9}, None, 0.0) is False
    assert table.snapshot("nanjing", 1, 6, {"cpu": 1}, None, 0.0) is False   # same view
    assert table.get("nanjing").snapshot == {"cpu": 1} and table.get("nanjing").seq == 6


def test_an_equal_report_keeps_the_stored_objects() -> None:
    """What is cached per report (the scheduler's view, keyed by the snapshot's identity)
    holds across heartbeats that repeat it."""
    table = Neighbours()
    join(table)
    table.snapshot("nanjing", 1, 1, {"cpu": 1}, {"node_ids": ["a"]}, 0.0)
    state = table.get("nanjing")
    kept, kept_summary = state.snapshot, state.summary
    assert table.snapshot("nanjing", 1, 2, {"cpu": 1}, {"node_ids": ["a"]}, 5.0) is False
    assert state.snapshot is kept and state.summary is kept_summary
    assert (state.seq, state.sent_at) == (2, 5.0)
    assert table.snapshot("nanjing", 1, 3, {"cpu": 1}, {"node_ids": ["b"]}, 6.0) is True
    assert state.snapshot is kept and state.summary == {"node_ids": ["b"]}


def test_other_incarnation_needs_a_handshake() -> None:
    table = Neighbours()
    join(table, epoch=1)
    table.expire(10.0)
    assert table.heard("nanjing", 11.0, epoch=2) is False          # a restart must hello first
    assert table.snapshot("nanjing", 2, 1, {"cpu": 3}, None, 0.0) is False
    assert table.is_live_elsewhere("nanjing", 2) is False          # lost: the new one may join
    join(table, now=11.0, epoch=2)
    assert table.snapshot("nanjing", 2, 1, {"cpu": 3}, None, 0.0) is True


def test_duplicate_is_a_live_other_incarnation() -> None:
    table = Neighbours()
    join(table, epoch=1)
    assert table.is_live_elsewhere("nanjing", 2) is True
    assert table.is_live_elsewhere("nanjing", 1) is False          # same process reconnecting
    assert table.is_live_elsewhere("suqian", 2) is False


def test_a_link_to_a_lower_peer_whose_beats_come_to_us_stays_quiet() -> None:
    """Of two peers linked both ways only the lower id's link beats; the other's stays quiet
    while those beats come (within 1.5 intervals), at its pace or faster, in this session."""
    table = Neighbours(misses=3)
    table.joined("anhui", "peer", 10.0, epoch=1, http="", router="", pub="", interval=1.0)
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 10.0)        # no beat yet
    table.beat_in("anhui", 2, 10.0)                                      # another incarnation's
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 10.0)
    table.beat_in("anhui", 1, 10.0)
    assert table.beats_to_us("anhui", "zhejiang", 1.0, 11.5)
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 11.6)        # its beats stopped
    assert not table.beats_to_us("anhui", "aaa", 1.0, 10.5)             # we are the lower id
    assert not table.beats_to_us("anhui", "zhejiang", 0.5, 10.5)        # it beats slower than us
    table.joined("anhui", "peer", 10.6, epoch=1, http="", router="", pub="", interval=1.0)
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 10.6)        # a new session: none yet
    table.beat_in("anhui", 1, 10.7)
    table.lose("anhui")
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 10.8)
    table.beat_in("anhui", 1, 10.9)                                      # lost: not taken
    assert not table.beats_to_us("anhui", "zhejiang", 1.0, 10.9)


def test_a_neighbour_beating_to_us_at_our_interval_is_beaten_back_not_answered() -> None:
    table = Neighbours(misses=3)
    table.joined("gulou", "child", 10.0, epoch=1, http="", router="", pub="", interval=1.0,
                 beats_every=1.0)
    table.joined("slow", "child", 10.0, epoch=1, http="", router="", pub="", interval=2.0,
                 beats_every=2.0)
    assert not table.beating_to_us("gulou", 1.0, 10.0)       # its first beat: answered
    table.beat_in("gulou", 1, 10.0)
    table.beat_in("slow", 1, 10.0)
    assert table.beating_to_us("gulou", 1.0, 11.0)
    assert not table.beating_to_us("slow", 1.0, 11.0)       # another interval: answered
    assert not table.beating_to_us("gulou", 1.0, 11.6)      # after a silence: answered
