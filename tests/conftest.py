"""Shared fixtures: real agents on free ports in temp dirs, stopped and cleaned after each test."""

from __future__ import annotations

import pytest

from .harness import AgentProcess


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
def agent(make_agent):
    return make_agent()
