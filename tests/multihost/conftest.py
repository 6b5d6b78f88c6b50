"""The multi-host test bed: the Jiangsu cluster, one network namespace per machine, started once
for the session and reset after each test; skipped (with the reason) where it cannot run."""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path

import pytest

from ..service_helpers import FAST_SERVICES
from . import netns
from .machines import Cluster

# The seed's provinces and cities: jiangsu the root, three cities below it, peers of each other.
TOPOLOGY = {
    "jiangsu": {"labels": {"level": "province"}},
    "nanjing": {"parent": "jiangsu", "peers": ["suqian", "changzhou"],
                "labels": {"level": "city", "zone": "south"}},
    "suqian": {"parent": "jiangsu", "peers": ["nanjing", "changzhou"],
               "labels": {"level": "city", "zone": "north"}},
    "changzhou": {"parent": "jiangsu", "peers": ["nanjing", "suqian"],
                  "labels": {"level": "city", "zone": "south"}},
}
ROOT_CPU = 1.0                  # jiangsu is short of capacity; the cities have 4 cores each
CUT = "nanjing"                 # the machine whose cable the fault tests pull
DELAYED = "changzhou"           # the machine whose link the delay test slows down


@pytest.fixture(scope="session")
def _bed():
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"the multi-host bed cannot run here: {reason}")
    parent = Path(os.environ.get("CNET_MULTIHOST_DIR", "/var/tmp"))
    netns.sweep_stale(parent)
    cluster = Cluster(parent / f"{netns.PREFIX}{os.getpid()}", TOPOLOGY, config=FAST_SERVICES,
                      node_config={"jiangsu": {"resources": {"cpu": ROOT_CPU}}},
                      delayable=(DELAYED,))
    keep = bool(os.environ.get("CNET_MULTIHOST_KEEP"))
    atexit.register(cluster.teardown, keep)          # in case the session ends some other way
    previous = signal.signal(signal.SIGTERM, _interrupt)   # a CI timeout still tears down
    try:
        yield cluster.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
        cluster.teardown(keep)
        atexit.unregister(cluster.teardown)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def cluster(_bed: Cluster):
    """The running cluster; after the test every link is healed and every workload deleted."""
    yield _bed
    _bed.reset()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    bed = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(bed, Cluster):
        report.sections.append(("agent output", bed.logs()))


def side_root(tag: str) -> Path:
    """Where a side cluster of this run (``machines.SideCluster``) keeps its files; skips
    where the bed cannot run."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"the multi-host bed cannot run here: {reason}")
    return Path(os.environ.get("CNET_MULTIHOST_DIR", "/var/tmp")) / f"{netns.PREFIX}{os.getpid()}-{tag}"
