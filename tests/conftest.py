"""Shared fixtures: real agents on free ports in temp dirs, stopped and cleaned after each test."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, AsyncContextManager

import pytest

from .bus.conftest import pytest_pyfunc_call  # noqa: F401  (async def tests, here as in tests/bus)
from .harness import AgentProcess, deep_merge, link_cluster, wait_linked

if TYPE_CHECKING:
    from .inprocess import Cluster


@pytest.fixture
def make_agent(tmp_path):
    """Factory: ``make_agent(node_id="x", config={...})`` starts an agent and returns it."""
    agents: list[AgentProcess] = []

    def make(node_id: str = "jiangsu", config: dict | None = None, env: dict | None = None,
             start: bool = True) -> AgentProcess:
        agent = AgentProcess(tmp_path, node_id, config, env)
        agents.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in reversed(agents):
        agent.cleanup()


@pytest.fixture
def make_cluster(make_agent):
    """Factory: ``make_cluster({"a": {}, "b": {"parent": "a", "peers": [...], "labels": {...}}},
    config={...}, node_config={"a": {...}})`` starts one agent per node, links them, waits
    until every link is alive and returns ``{node_id: AgentProcess}``."""

    def make(topology: dict, config: dict | None = None,
             node_config: dict | None = None, timeout: float = 30.0) -> dict[str, AgentProcess]:
        agents = {n: make_agent(n, deep_merge(config or {}, (node_config or {}).get(n, {})),
                                start=False) for n in topology}
        link_cluster(agents, topology)
        for agent in agents.values():
            agent.start()
        wait_linked(agents, topology, timeout)
        return agents

    return make


@pytest.fixture
def agent(make_agent):
    return make_agent()


@pytest.fixture(scope="session")
def astronaut_b64() -> str:
    """skimage's astronaut photo (one face, one person) as a base64 JPEG, for /predict."""
    import base64

    import cv2
    skimage_data = pytest.importorskip("skimage.data")
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(jpeg.tobytes()).decode()


@pytest.fixture
def inprocess_cluster(tmp_path):
    """Factory of in-process clusters (tests/inprocess.py), for ``async def`` tests:
    ``async with inprocess_cluster({"a": {}, "b": {"parent": "a"}}, config={...}) as cluster``
    runs one real Agent per node in the test's event loop, on a clock the test moves."""
    from .inprocess import running  # here: only tests that use it import the agent

    count = itertools.count()

    def make(topology: dict, **kwargs) -> AsyncContextManager[Cluster]:
        return running(tmp_path / f"cluster-{next(count)}", topology, **kwargs)

    return make
