"""The Register's reservations in process, no sockets: resize grows, refuses or shrinks in one step."""

from __future__ import annotations

import pytest

from cnet.errors import InsufficientResources
from cnet.register import Register
from cnet.resources import Resources


def register(storage: int = 1000, cpu: float = 4.0) -> tuple[Register, list[int]]:
    changes: list[int] = []
    reg = Register("n1", Resources(cpu=cpu, storage=storage))
    reg.on_change = lambda: changes.append(reg.seq)
    return reg, changes


def test_resize_grows_when_it_fits():
    reg, changes = register()
    reg.resize("up", Resources(storage=300))       # no reservation yet: starts from none
    reg.resize("up", Resources(storage=900))
    assert reg.allocated == Resources(storage=900)
    assert reg.available == Resources(cpu=4.0, storage=100)
    assert len(changes) == 2


def test_resize_counts_only_the_growth_against_what_is_free():
    reg, _ = register()
    reg.allocate("other", Resources(storage=400))
    reg.resize("up", Resources(storage=500))
    reg.resize("up", Resources(storage=600))       # 100 more, exactly what is free
    assert reg.available.storage == 0


def test_resize_refused_changes_nothing():
    reg, changes = register()
    reg.allocate("other", Resources(storage=400))
    reg.resize("up", Resources(storage=500))
    before = (reg.allocated, reg.available, reg.seq, len(changes))
    with pytest.raises(InsufficientResources) as refused:
        reg.resize("up", Resources(storage=700))
    assert refused.value.details["node_id"] == "n1"
    assert "storage" in refused.value.message
    assert (reg.allocated, reg.available, reg.seq, len(changes)) == before
    with pytest.raises(InsufficientResources):
        reg.resize("new", Resources(storage=101))
    assert reg.release("new") is None               # a refused first resize holds nothing


def test_resize_shrinks_and_never_fails():
    reg, changes = register(storage=1000, cpu=1.0)
    reg.resize("up", Resources(storage=1000))
    reg.adopt("old", Resources(cpu=2.0))            # over capacity: nothing is free at all
    reg.resize("up", Resources(storage=250))
    assert reg.allocated == Resources(cpu=2.0, storage=250)
    assert len(changes) == 3
    assert reg.release("up") == Resources(storage=250)
    assert reg.allocated == Resources(cpu=2.0)
