"""The import structure of ``cnet/`` (issue 11): no circle, the agent only wires, the doors
reach the operations and not the agent, ``bus/`` and ``services/`` know nothing of ``cnet/``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules a file imports, type-checking-only imports included (a reader follows them)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph(top: str) -> dict[str, set[str]]:
    files = {_module(p): p for p in (REPO / top).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name}
            for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cnet_has_no_import_circle():
    assert _cycle(_graph("cnet")) is None


def test_only_the_cli_imports_the_agent():
    importers = {name for name, deps in _graph("cnet").items() if "cnet.agent" in deps}
    assert importers == {"cnet.cli"}


def test_the_doors_reach_the_operations_not_the_agent():
    graph = _graph("cnet")
    for door in ("cnet.api", "cnet.rpc"):
        assert "cnet.agent" not in graph[door]
        assert "cnet.ops" in graph[door]


def test_bus_and_services_know_nothing_of_cnet():
    for top in ("bus", "services"):
        for path in (REPO / top).rglob("*.py"):
            assert not any(m == "cnet" or m.startswith("cnet.") for m in _imports(path)), path


# One role per file, about 400 lines (STYLE.md #1): 450 leaves a file room to grow a little
# before it must be split. The protocol alone may be longer: its messages and their codec
# stay in one module (STYLE.md #2), its payload schemas and limits already live beside it
# (the reply's blob frame, with its codec and the rules of who may send one, took it past 500).
MAX_LINES = 450
LONGER = {"bus/protocol.py": 550}


def test_no_file_under_bus_or_cnet_outgrows_one_role():
    too_long = {}
    for top in ("bus", "cnet"):
        for path in sorted((REPO / top).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > LONGER.get(name, MAX_LINES):
                too_long[name] = lines
    assert not too_long, f"split by role: {too_long}"
