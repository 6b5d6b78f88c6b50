"""The pure scheduler: strategies, hard and soft constraints, reasons. No sockets."""

from __future__ import annotations

import pytest

from cnet.errors import BadRequest
from cnet.resources import Resources
from cnet.scheduler import NodeView, Placement, Snapshot, schedule

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
