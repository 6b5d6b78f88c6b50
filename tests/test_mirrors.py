"""The mirror book's version rule, in-process: a report changes a mirror only if it is newer,
whichever channel brings it, and a report that beats the delegation's reply is kept."""

from __future__ import annotations

import pytest

from cnet.events import EventHub
from cnet.mirrors import MirrorBook
from cnet.store import Store
from cnet.workload import Workload


@pytest.fixture
def book(tmp_path):
    store = Store(tmp_path / "cnet.db")
    yield MirrorBook("jiangsu", store, EventHub())
    store.close()


def report(status: str, version: int | None, **fields) -> dict:
    base = {"id": "w1", "name": "job", "type": "process", "node_id": "nanjing",
            "origin": "jiangsu", "status": status, "config": {}, "requirements": {"cpu": 1}}
    if version is not None:
        base["version"] = version
    return {**base, **fields}


def test_an_older_report_never_undoes_a_newer_one(book):
    book.add(report("running", 1), via="nanjing")
    assert book.update(report("completed", 2, exit_code=0), via="nanjing").status == "completed"
    assert book.update(report("running", 1), via="nanjing") is None      # late event
    assert book.update(report("running", 2), via="nanjing") is None      # same version
    assert book.get("w1").status == "completed" and book.get("w1").version == 2


def test_only_the_neighbour_it_goes_through_reports(book):
    book.add(report("running", 1), via="nanjing")
    assert book.update(report("failed", 5), via="suqian") is None
    assert book.get("w1").status == "running"


def test_a_lost_mirror_takes_the_same_version_back_when_the_node_returns(book):
    book.add(report("running", 3), via="nanjing")
    book.mark_lost("nanjing")
    assert book.get("w1").status == "lost"
    assert book.update(report("running", 3), via="nanjing").status == "running"


def test_a_report_before_the_delegation_reply_is_kept_until_the_mirror_exists(book):
    book.expect("w1")
    assert book.update(report("completed", 2, exit_code=0), via="nanjing") is None
    wl = book.add(report("running", 1), via="nanjing")    # the reply, older than the event
    book.settled("w1")
    assert (wl.status, wl.version, wl.exit_code) == ("completed", 2, 0)


def test_reports_about_ids_not_being_placed_are_not_kept(book):
    book.update(report("completed", 2), via="nanjing")
    assert book.add(report("running", 1), via="nanjing").status == "running"


def test_an_unversioned_report_applies(book):
    book.add(report("running", None), via="nanjing")
    assert book.update(report("stopped", None), via="nanjing").status == "stopped"


def test_versions_survive_a_restart(tmp_path):
    store = Store(tmp_path / "cnet.db")
    book = MirrorBook("jiangsu", store, EventHub())
    book.add(report("running", 4), via="nanjing")
    store.close()
    store = Store(tmp_path / "cnet.db")
    again = MirrorBook("jiangsu", store, EventHub())
    again.load([Workload.from_row(row) for row in store.load_workloads()])
    assert again.get("w1").version == 4
    assert again.update(report("running", 4), via="nanjing") is None
    store.close()
