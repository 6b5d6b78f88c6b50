"""Delegation that cannot hang and cannot start behind the user's back (in-process agents on a
hand-moved clock): a slow start is answered pending, a late delegation is refused, and an id
whose earlier try never started can be submitted again."""

from __future__ import annotations

import time

import pytest

from cnet.errors import CnetError
from cnet.ops import Caller, Delegate, Get

from .bus.harness import until
from .harness import process_spec
from .service_helpers import fake_install
from .test_inprocess import PAIR, SMALL_ROOT, allocated, submit

NANJING = Caller(node_id="jiangsu", hops=1, visited=("jiangsu",))


async def test_a_delegated_service_slow_to_start_is_answered_pending(inprocess_cluster, tmp_path,
                                                                     monkeypatch):
    env, flags = fake_install(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (flags / "slow-start").touch()
    config = {"bus": {"request_timeout": 1.0}, "services": {"start_timeout": 30}}
    async with inprocess_cluster(PAIR, config=config, node_config=SMALL_ROOT) as cluster:
        started = time.monotonic()
        wl = await submit(cluster, "jiangsu", {"name": "face", "type": "opencv",
                                               "config": {"cascade_type": "face"},
                                               "requirements": {"cpu": 1.0}})
        assert time.monotonic() - started < 1.0 + 0.5     # within the delegation's deadline
        assert (wl["node_id"], wl["status"]) == ("nanjing", "pending")
        assert allocated(cluster["nanjing"]) == 1.0       # reserved while it starts
        (flags / "go").touch()
        await until(lambda: cluster["jiangsu"].mirrors.get(wl["id"]).status == "running", 20,
                    "the service to run and the origin to hear of it")
        assert (await cluster.run("jiangsu", Get(id=wl["id"])))["endpoint"]


async def test_a_delegation_that_arrives_after_its_deadline_is_refused(inprocess_cluster):
    async with inprocess_cluster(PAIR) as cluster:
        late = Delegate(workload=process_spec("late"), origin="jiangsu", deadline=time.time() - 1)
        with pytest.raises(CnetError) as refused:
            await cluster.run("nanjing", late, NANJING)
        assert (refused.value.status, refused.value.code) == (409, "deadline_passed")
        assert cluster["nanjing"].manager.list() == [] and allocated(cluster["nanjing"]) == 0


async def test_an_id_that_never_started_can_be_submitted_again(inprocess_cluster):
    async with inprocess_cluster(PAIR, node_config=SMALL_ROOT) as cluster:
        root = cluster["jiangsu"]
        spec = {**process_spec("again", cpu=1.0), "id": "never0started0id"}
        never = root.mirrors.add({**spec, "node_id": "nanjing", "status": "pending",
                                  "_unconfirmed": True},
                                 via="nanjing")
        root.mirrors.never_started(never)
        assert root.mirrors.get(spec["id"]).status == "failed"
        wl = await submit(cluster, "jiangsu", spec)
        assert (wl["id"], wl["node_id"], wl["status"]) == (spec["id"], "nanjing", "running")
        with pytest.raises(CnetError) as conflict:   # a different spec under that id is not
            await submit(cluster, "jiangsu", {**spec, "name": "other"})
        assert conflict.value.code == "id_conflict"
