"""The pure scheduler: strategies, hard and soft constraints, reasons. No sockets."""

from __future__ import annotations

import pytest

from cnet.candidates import NodeView, Snapshot
from cnet.errors import BadRequest
from cnet.resources import Resources
from cnet.scheduler import Placement, schedule

GiB = 1 << 30


def node(node_id, role="peer", cpu=8.0, mem=16, status="alive", cap_cpu=8.0, cap_mem=16, **kw):
    return NodeView(node_id=node_id, role=role, status=status,
                    available=Resources(cpu=cpu, memory=mem * GiB),
                    capacity=Resources(cpu=cap_cpu, memory=cap_mem * GiB), **kw)


def decide(nodes, cpu=2.0, mem=2, **placement):
    snap = Snapshot(nodes[0].node_id, nodes)
    return schedule(Resources(cpu=cpu, memory=mem * GiB), Placement.parse(placement), snap)


def ids(decision):
    return [n.node_id for n in decision.candidates]


def test_local_first_prefers_self_when_it_fits():
    d = decide([node("jiangsu", "self", cpu=4), node("nanjing", "child", cpu=8)])
    assert ids(d) == ["jiangsu", "nanjing"]


def test_local_first_falls_back_to_the_least_loaded_neighbour():
    d = decide([node("jiangsu", "self", cpu=1), node("nanjing", "child", cpu=3),
                node("suqian", "peer", cpu=7)])
    assert ids(d) == ["suqian", "nanjing"]
    assert d.reasons() == ["jiangsu: cpu 1 free < 2 requested"]


def test_least_loaded_ignores_locality():
    d = decide([node("a", "self", cpu=3), node("b", "peer", cpu=7), node("c", "peer", cpu=5)],
               strategy="least_loaded")
    assert ids(d) == ["b", "c", "a"]


def test_binpack_fills_the_fullest_node_first():
    d = decide([node("a", "self", cpu=7), node("b", "peer", cpu=2.5), node("c", "peer", cpu=5)],
               strategy="binpack")
    assert ids(d) == ["b", "c", "a"]


def test_spread_prefers_fewest_workloads():
    d = decide([node("a", "self", workload_names=frozenset({"x", "y"})),
                node("b", "peer", workload_names=frozenset()),
                node("c", "peer", workload_names=frozenset({"z"}))], strategy="spread")
    assert ids(d) == ["b", "c", "a"]


def test_spread_counts_replicas_not_names():
    # Five replicas of "web" are more load than two different workloads.
    d = decide([node("a", "self", workload_names=frozenset({"web"}), workload_count=5),
                node("b", "peer", workload_names=frozenset({"x", "y"}), workload_count=2)],
               strategy="spread")
    assert ids(d) == ["b", "a"]


def test_lost_nodes_are_rejected_with_reason():
    d = decide([node("nanjing", "self", cpu=1.5), node("suqian", "peer", status="lost")])
    assert ids(d) == []
    assert d.reasons() == ["nanjing: cpu 1.5 free < 2 requested", "suqian: lost"]


def test_node_selector_is_hard():
    d = decide([node("nanjing", "self", labels={"zone": "south"}),
                node("changzhou", "peer", labels={"zone": "south"}),
                node("suqian", "peer", labels={"zone": "north"})], node_selector={"zone": "north"})
    assert ids(d) == ["suqian"]
    assert "changzhou: label zone=north required" in d.reasons()


def test_pin_to_a_node_or_through_the_child_above_it():
    nodes = [node("jiangsu", "self"), node("nanjing", "child", subtree_nodes=frozenset({"deep"}),
                                           subtree_free=Resources(cpu=8, memory=16 * GiB))]
    assert ids(decide(nodes, node="jiangsu")) == ["jiangsu"]
    assert ids(decide(nodes, node="deep")) == ["nanjing"]
    d = decide(nodes, node="mars")
    assert ids(d) == [] and d.reasons()[0].startswith("mars: not this node")


def test_child_subtree_counts_for_fit():
    nodes = [node("jiangsu", "self", cpu=0.5),
             node("nanjing", "child", cpu=0.5, subtree_free=Resources(cpu=6, memory=8 * GiB))]
    assert ids(decide(nodes, cpu=4)) == ["nanjing"]
    assert ids(decide(nodes, cpu=7)) == []


def test_affinity_and_anti_affinity_are_soft():
    nodes = [node("a", "self", cpu=8, workload_names=frozenset({"db"})),
             node("b", "peer", cpu=8, workload_names=frozenset({"cache"}),
                  workload_labels=frozenset({("app", "web")}))]
    assert ids(decide(nodes, affinity=[{"name": "cache"}])) == ["b", "a"]
    assert ids(decide(nodes, anti_affinity=[{"name": "db"}])) == ["b", "a"]
    assert ids(decide(nodes, affinity=[{"labels": {"app": "web"}}])) == ["b", "a"]
    # Soft: a node that does not fit is still rejected, affinity or not.
    assert ids(decide(nodes, cpu=9, affinity=[{"name": "cache"}])) == []


def test_fractional_cpu_sums_fit():
    d = decide([node("a", "self", cpu=0.30000000000000004 - 1e-12)], cpu=0.3, mem=0)
    assert ids(d) == ["a"]


@pytest.mark.parametrize("placement,message", [
    ({"strategy": "random"}, "unknown strategy"),
    ({"node": 5}, "placement.node"),
    ({"node_selector": ["zone"]}, "node_selector"),
    ({"affinity": "db"}, "placement.affinity"),
    ({"affinity": [{"colour": "red"}]}, "placement.affinity[0]"),
    ({"gravity": 1}, "unknown field"),
])
def test_bad_placement_is_a_clear_400(placement, message):
    with pytest.raises(BadRequest) as err:
        Placement.parse(placement)
    assert message in err.value.message


def test_placement_round_trip():
    raw = {"strategy": "spread", "node": "x", "node_selector": {"zone": "n"},
           "affinity": [{"name": "db"}], "anti_affinity": [{"labels": {"a": "b"}}]}
    assert Placement.parse(raw).to_dict() == raw


def test_impossible_constraints_are_flagged():
    nodes = [node("jiangsu", "self", labels={"zone": "south"}), node("nanjing", "child")]
    assert decide(nodes, node="mars").impossible.startswith("placement.node: no node 'mars'")
    assert "zone=west" in decide(nodes, node_selector={"zone": "west"}).impossible
    # Known but full is not impossible: it may fit later.
    assert decide(nodes, cpu=99, node_selector={"zone": "south"}).impossible is None


def test_stays_here_agrees_with_schedule():
    """The shortcut taken without a snapshot must be the scheduler's own first choice."""
    from cnet.scheduler import stays_here
    here = node("jiangsu", "self", cpu=4, labels={"zone": "south"})
    nodes = [here, node("nanjing", "child", cpu=8)]
    cases = [dict(), dict(strategy="least_loaded"), dict(node="jiangsu"), dict(node="nanjing"),
             dict(node_selector={"zone": "south"}), dict(node_selector={"zone": "north"}),
             dict(affinity=[{"name": "x"}]), dict(cpu=5)]
    for case in cases:
        cpu = case.pop("cpu", 2)
        placement = Placement.parse(case)
        d = decide(nodes, cpu=cpu, **case)
        short = stays_here(Resources(cpu=cpu, memory=2 * GiB), placement, "jiangsu",
                           here.labels, here.available)
        if short:
            assert ids(d)[:1] == ["jiangsu"], case


# -- each rule through all three paths: the candidate filter, the reasons, the local shortcut --

def _paths(here, other, request, raw):
    """(is ``here`` a candidate, its reason or None, stays_here) for one request."""
    from cnet.scheduler import stays_here
    placement = Placement.parse(raw)
    d = schedule(request, placement, Snapshot(here.node_id, [here, other]))
    mine = [r for r in d.reasons() if r.startswith(f"{here.node_id}:")]
    short = stays_here(request, placement, here.node_id, here.labels, here.available)
    return here in d.candidates, (mine[0] if mine else None), short


@pytest.mark.parametrize("self_kw,raw,cpu,reason", [
    ({}, {}, 2, None),
    ({}, {"node": "jiangsu"}, 2, None),
    ({}, {"node": "nanjing"}, 2, "jiangsu: not node nanjing"),
    ({"labels": {"zone": "south"}}, {"node_selector": {"zone": "south"}}, 2, None),
    ({"labels": {"zone": "south"}}, {"node_selector": {"zone": "north"}}, 2,
     "jiangsu: label zone=north required"),
    ({}, {"node_selector": {"zone": "north"}}, 2, "jiangsu: label zone=north required"),
    ({"cpu": 4}, {}, 5, "jiangsu: cpu 4 free < 5 requested"),
    ({"cpu": 4, "mem": 1}, {}, 5,
     "jiangsu: cpu 4 free < 5 requested; memory 1.0 GiB free < 2.0 GiB requested"),
    ({"cpu": 0.30000000000000004 - 1e-12}, {}, 0.3, None),
    # Over-committed (free below zero): no request fits, not even one for no cpu.
    ({"cpu": -1}, {}, 0, "jiangsu: cpu -1 free < 0 requested"),
])
def test_each_rule_agrees_across_filter_reason_and_shortcut(self_kw, raw, cpu, reason):
    here = node("jiangsu", "self", **self_kw)
    other = node("nanjing", "child", labels={"zone": "north"})
    candidate, why, short = _paths(here, other, Resources(cpu=cpu, memory=2 * GiB), raw)
    assert why == reason
    assert candidate == (reason is None) == short


@pytest.mark.parametrize("other_kw,raw,cpu,reason", [
    ({"status": "lost"}, {}, 2, "suqian: lost"),
    ({"status": "lost", "cpu": 0}, {}, 2, "suqian: lost"),      # the first rule it fails
    ({}, {"node": "deep"}, 2, "suqian: not node deep"),
    ({"subtree_nodes": frozenset({"deep"})}, {"node": "deep"}, 2, None),
    ({}, {"node_selector": {"gpu": "yes"}}, 2, "suqian: label gpu=yes required"),
    ({"subtree_labels": frozenset({("gpu", "yes")})}, {"node_selector": {"gpu": "yes"}}, 2, None),
    ({"cpu": 1}, {}, 4, "suqian: cpu 1 free < 4 requested"),
    ({"cpu": 1, "subtree_free": Resources(cpu=6, memory=8 * GiB)}, {}, 4, None),
    ({"cpu": 1, "subtree_free": Resources(cpu=3, memory=8 * GiB)}, {}, 4,
     "suqian: cpu 3 free < 4 requested"),
])
def test_each_rule_agrees_for_a_neighbour(other_kw, raw, cpu, reason):
    """A neighbour (with what lies below it) passes a rule exactly when it has no reason."""
    here = node("jiangsu", "self", cpu=0)
    other = node("suqian", "child", **other_kw)
    d = schedule(Resources(cpu=cpu, memory=2 * GiB), Placement.parse(raw),
                 Snapshot("jiangsu", [here, other]))
    mine = [r for r in d.reasons() if r.startswith("suqian:")]
    assert mine == ([reason] if reason else [])
    assert (other in d.candidates) == (reason is None)


def test_random_snapshots_keep_the_three_paths_in_agreement():
    """Every node is a candidate or has exactly one reason; the shortcut matches the filter."""
    import random

    from cnet.scheduler import hard_rules, stays_here, why_rejected
    rng = random.Random(11)
    labels = [{}, {"zone": "north"}, {"zone": "south"}]

    def below():   # what a child reports of its subtree
        return dict(subtree_nodes=frozenset(rng.sample(["deep", "n2"], rng.randint(0, 1))),
                    subtree_labels=frozenset(rng.sample([("zone", "west")], rng.randint(0, 1))),
                    subtree_free=rng.choice([None, Resources(cpu=6, memory=8 * GiB)]))

    for _ in range(300):
        nodes = [node("n0", "self", cpu=rng.choice([-1, 0, 2, 4]), labels=rng.choice(labels))]
        for i in range(1, rng.randint(1, 6)):
            role = rng.choice(["child", "peer"])
            nodes.append(node(f"n{i}", role, cpu=rng.choice([-1, 0, 0.5, 2, 4, 8]),
                              mem=rng.choice([0, 1, 4, 16]),
                              status=rng.choice(["alive", "alive", "lost"]),
                              labels=rng.choice(labels), **(below() if role == "child" else {})))
        raw = {"strategy": rng.choice(["local_first", "local_first", "binpack", "spread"])}
        if rng.random() < 0.4:
            raw["node"] = rng.choice(["n0", "n1", "deep", "mars"])
        if rng.random() < 0.4:
            raw["node_selector"] = {"zone": rng.choice(["north", "south", "west"])}
        if rng.random() < 0.2:
            raw["anti_affinity"] = [{"name": "x"}]
        request = Resources(cpu=rng.choice([0, 1, 3, 7]), memory=rng.choice([0, 2, 12]) * GiB)
        placement = Placement.parse(raw)
        snap = Snapshot("n0", nodes)
        d = schedule(request, placement, snap)
        rules = hard_rules(request, placement)
        picked = set(d.order)
        for i in range(len(snap)):
            assert (i in picked) == (why_rejected(rules, snap, i) is None), (raw, i)
        assert len(d.reasons()) == len(snap) - len(picked) + bool(d.pinned_elsewhere)
        here = nodes[0]
        short = stays_here(request, placement, "n0", here.labels, here.available)
        if not placement.anti_affinity and (raw["strategy"] == "local_first"
                                            or raw.get("node") == "n0"):
            assert short == (0 in picked), raw
        if short:
            assert d.order[0] == 0, raw


def test_the_scheduler_does_not_import_numpy():
    import subprocess
    import sys
    code = "import sys, cnet.scheduler; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- the soft preference for nodes that already hold a workload's model ------------------------

def decide_preferring(nodes, prefer, cpu=2.0, **placement):
    snap = Snapshot(nodes[0].node_id, nodes)
    return schedule(Resources(cpu=cpu, memory=2 * GiB), Placement.parse(placement), snap,
                    prefer=frozenset(prefer))


@pytest.mark.parametrize("strategy", ["least_loaded", "binpack", "spread"])
def test_nodes_holding_the_model_come_first_whatever_the_strategy(strategy):
    nodes = [node("a", "self", cpu=3), node("b", "peer", cpu=7), node("c", "peer", cpu=5),
             node("d", "peer", cpu=2.5)]
    plain = ids(decide(nodes, strategy=strategy))
    preferred = ids(decide_preferring(nodes, {"c", "a"}, strategy=strategy))
    # The holders first, each group in the strategy's own order.
    assert preferred == [n for n in plain if n in "ca"] + [n for n in plain if n not in "ca"]
    assert preferred[:2] != plain[:2]


def test_a_child_with_the_holder_below_it_counts_as_holding_it():
    nodes = [node("jiangsu", "self", cpu=1), node("nanjing", "child", cpu=7),
             node("suzhou", "child", cpu=3, subtree_nodes=frozenset({"kunshan"}))]
    assert ids(decide_preferring(nodes, {"kunshan"})) == ["suzhou", "nanjing"]


def test_local_first_keeps_this_node_first_and_prefers_holders_among_the_rest():
    nodes = [node("jiangsu", "self", cpu=4), node("nanjing", "child", cpu=8),
             node("suzhou", "child", cpu=3)]
    assert ids(decide_preferring(nodes, {"suzhou"})) == ["jiangsu", "suzhou", "nanjing"]
    nodes[0] = node("jiangsu", "self", cpu=1)     # this node does not fit: the holder first
    assert ids(decide_preferring(nodes, {"suzhou"})) == ["suzhou", "nanjing"]


def test_the_preference_never_picks_a_node_that_fails_a_rule():
    nodes = [node("a", "self", cpu=3), node("b", "peer", cpu=7),
             node("c", "peer", cpu=1), node("d", "peer", cpu=8, labels={"zone": "x"}),
             node("e", "peer", status="lost")]
    d = decide_preferring(nodes, {"c", "e", "d"}, strategy="least_loaded",
                          node_selector={"zone": "y"})
    assert ids(d) == []
    d = decide_preferring(nodes, {"c", "e"}, strategy="least_loaded")
    assert ids(d) == ["d", "b", "a"]               # c is too small, e lost: no effect


def test_pinning_and_affinity_outweigh_the_preference():
    nodes = [node("a", "self", cpu=3), node("b", "peer", cpu=7),
             node("c", "peer", cpu=5, workload_names=frozenset({"db"}))]
    assert ids(decide_preferring(nodes, {"a"}, strategy="least_loaded", node="b")) == ["b"]
    d = decide_preferring(nodes, {"a"}, strategy="least_loaded", affinity=["db"])
    assert ids(d) == ["c", "a", "b"]


def test_away_from_puts_the_nodes_holding_fewer_of_a_set_first():
    from cnet.scheduler import away_from
    here = NodeView("a", "self")
    child = NodeView("b", "child", subtree_nodes=frozenset({"b1", "b2"}))
    peer = NodeView("c", "peer")
    order = [here, child, peer]
    assert away_from(order, {}) == order
    # A child counts what its subtree holds; equal counts keep the given order.
    assert [n.node_id for n in away_from(order, {"a": 1, "b2": 1})] == ["c", "a", "b"]
    assert [n.node_id for n in away_from(order, {"a": 2, "b1": 1, "b2": 1, "c": 1})] == \
        ["c", "a", "b"]
    assert [n.node_id for n in away_from(order, {"c": 1})] == ["a", "b", "c"]
