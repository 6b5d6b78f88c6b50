"""The set book as the router's ReplicaSource (in-process agents on a hand-moved clock, fake
service programs): members near (this node and below) or far (a peer), usable while running
and reached, a lost peer's member unusable at once and then replaced."""

from __future__ import annotations

from cnet.ops import Submit
from cnet.svc_router import Chooser

from .bus.harness import until
from .ports import free_port_range
from .service_helpers import fake_install

# jiangsu names zhejiang as its peer (one way: see test_replica_sets' far-members test).
TREE = {"jiangsu": {"peers": ["zhejiang"]}, "nanjing": {"parent": "jiangsu"}, "zhejiang": {}}
SET = {"id": "faces", "name": "faces", "type": "opencv", "replicas": 3,
       "config": {"cascade_type": "face"}, "requirements": {"cpu": 1.0}}


def _tree(inprocess_cluster, tmp_path, monkeypatch):
    """The in-process TREE, its services the fake service program on ports of their own."""
    env, _ = fake_install(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    node_config = {n: {"services": {"port_range": list(free_port_range(10))}} for n in TREE}
    return inprocess_cluster(TREE, node_config=node_config)


async def test_the_router_sees_near_far_and_lost_members(inprocess_cluster, tmp_path,
                                                         monkeypatch):
    async with _tree(inprocess_cluster, tmp_path, monkeypatch) as cluster:
        root = cluster["jiangsu"]
        record = (await cluster.run("jiangsu", Submit(workload=SET)))["workload"]
        where = {m["id"]: m["node_id"] for m in record["members"]}
        assert sorted(where.values()) == sorted(TREE)
        assert root.sets.service_set("nope") is None

        served = root.sets.service_set("faces")
        assert served.id == "faces" and served.retry_post is True
        by_node = {r.node_id: r for r in served.replicas}
        assert {n: r.near for n, r in by_node.items()} == {"jiangsu": True, "nanjing": True,
                                                          "zhejiang": False}
        assert all(r.usable for r in served.replicas)
        assert {r.id: r.endpoint for r in served.replicas} == {
            m["id"]: m["endpoint"] for m in record["members"]}

        far = by_node["zhejiang"].id

        def far_usable() -> bool | None:
            replica = {r.id: r for r in root.sets.service_set("faces").replicas}.get(far)
            return None if replica is None else replica.usable
        told = []            # what a watcher (the router) saw each time the book told it
        unwatch = root.sets.watch(lambda set_id: told.append((set_id, far_usable())))
        await cluster.stop("zhejiang")               # its agent goes (its service runs on)
        await cluster.advance(cluster.loss_window + cluster.interval)
        await until(lambda: root.mirrors.get(far).status == "lost", 5, "the member lost")
        # Lost: unusable at once (or already replaced by a member on a near node).
        now = {r.id: r for r in root.sets.service_set("faces").replicas}
        assert far not in now or not now[far].usable
        assert told and {set_id for set_id, _ in told} == {"faces"}
        assert told[-1][1] in (False, None)        # told once it was no longer usable
        unwatch()
        count = len(told)
        await until(lambda: root.sets.get("faces").restart_count == 1, 20,
                    "the lost peer's member replaced")

        def replaced() -> bool:
            replicas = root.sets.service_set("faces").replicas
            return len(replicas) == 3 and all(r.usable and r.near for r in replicas)

        await until(replaced, 20, "three usable members again, all near")
        assert len(told) == count                    # unwatched: told no more


async def test_a_member_failing_its_health_checks_is_skipped_while_another_passes(
        inprocess_cluster, tmp_path, monkeypatch):
    async with _tree(inprocess_cluster, tmp_path, monkeypatch) as cluster:
        root = cluster["jiangsu"]
        record = (await cluster.run("jiangsu", Submit(workload=SET)))["workload"]
        host_of = {m["id"]: m["node_id"] for m in record["members"]}

        def seen() -> dict[str, tuple[bool, bool]]:      # (usable, healthy) of each member
            return {r.id: (r.usable, r.healthy) for r in root.sets.service_set("faces").replicas}

        def health(member: str, ok: bool) -> None:   # what its node's supervisor records
            cluster[host_of[member]].manager.updated(member, runtime={"healthy": ok})

        def order() -> list[str]:       # the router's tries, each one excluding those before
            replicas, chooser, tried = root.sets.service_set("faces").replicas, Chooser(), []
            while (replica := chooser.pick(replicas, exclude=tried)) is not None:
                tried.append(replica.id)
            return tried

        sick, *others = sorted(host_of)
        health(sick, False)
        await until(lambda: seen() == {sick: (True, False), **{m: (True, True) for m in others}},
                    5, "the member failing its checks still usable, and known to fail them")
        tries = order()                              # skipped while another passes; then
        assert set(tries[:-1]) == set(others) and tries[-1] == sick   # tried, not refused
        for member in others:
            health(member, False)
        await until(lambda: all(not healthy for _, healthy in seen().values()), 5,
                    "every member failing its checks")
        assert sorted(order()) == sorted(host_of)    # none passes: every running one is tried
        health(sick, True)
        await until(lambda: seen()[sick] == (True, True), 5, "the member passing again")
        assert order()[0] == sick
